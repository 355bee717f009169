"""The chart ships the repository's Grafana dashboard and scopes the ServiceMonitor to watched namespaces."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

CHART = Path(__file__).resolve().parents[2] / "helm" / "rankq"


def _helm() -> str:
    found = shutil.which("helm") or next(
        iter(sorted(glob.glob(os.path.expanduser("~/.cache/rankq/k8s-*/bin/helm")))), None
    )
    if not found:
        pytest.skip("helm is not installed (make k8s-prepare builds it)")
    return found


def render(*sets: str) -> list[dict]:
    args = [_helm(), "template", "r", str(CHART)]
    for s in sets:
        args += ["--set", s]
    out = subprocess.run(args, capture_output=True, text=True, timeout=60, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_dashboard_configmap_holds_the_repository_json():
    assert not [d for d in render() if d["kind"] == "ConfigMap"], "off by default"
    docs = render("grafanaDashboard.enabled=true")
    [cm] = [d for d in docs if d["kind"] == "ConfigMap"]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["rankq.json"]) == json.loads((CHART / "dashboards" / "rankq.json").read_text())


def test_service_monitor_follows_watch_namespaces():
    [sm] = [
        d
        for d in render("serviceMonitor.enabled=true", "watchNamespaces={team-a,team-b}")
        if d["kind"] == "ServiceMonitor"
    ]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    [sm] = [d for d in render("serviceMonitor.enabled=true") if d["kind"] == "ServiceMonitor"]
    assert sm["spec"]["namespaceSelector"] == {"any": True}
