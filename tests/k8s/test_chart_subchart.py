"""The chart works as a dependency of a parent chart: Helm passes `global`, overrides apply."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from k8s_support import state_dir
from operator_support import REPO

CHART = REPO / "helm" / "rankq"


def helm() -> Path:
    path = state_dir() / "bin" / "helm"
    if not path.exists():
        pytest.skip("helm not built (make k8s-up)")
    return path


def parent_chart(tmp: Path, values: dict) -> Path:
    parent = tmp / "platform"
    (parent / "charts").mkdir(parents=True)
    shutil.copytree(CHART, parent / "charts" / "rankq")
    (parent / "Chart.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v2",
                "name": "platform",
                "version": "1.0.0",
                "description": "a parent chart",
                "icon": "https://example.com/icon.png",
                "dependencies": [{"name": "rankq", "version": "0.1.0", "repository": f"file://{CHART}"}],
            }
        )
    )
    (parent / "values.yaml").write_text(yaml.safe_dump(values))
    (parent / "templates").mkdir()
    return parent


def test_chart_lints_alone_and_as_a_subchart(tmp_path: Path) -> None:
    alone = subprocess.run([str(helm()), "lint", "--strict", str(CHART)], capture_output=True, text=True, timeout=60)
    assert alone.returncode == 0, alone.stdout + alone.stderr

    parent = parent_chart(
        tmp_path,
        {
            "global": {"imageRegistry": "registry.example.com"},
            "rankq": {"fullnameOverride": "queues-operator", "imagePullSecrets": [{"name": "regcred"}]},
        },
    )
    lint = subprocess.run([str(helm()), "lint", "--strict", str(parent)], capture_output=True, text=True, timeout=60)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    out = subprocess.run([str(helm()), "template", "p", str(parent)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    [deploy] = [d for d in docs if d["kind"] == "Deployment"]
    assert deploy["metadata"]["name"] == "queues-operator"
    assert deploy["metadata"]["labels"]["app.kubernetes.io/part-of"] == "rankq"
    assert deploy["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    # A value the chart does not know is still refused, also through the parent.
    bad = subprocess.run(
        [str(helm()), "template", "p", str(parent), "--set", "rankq.replica=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "replica" in bad.stderr


def test_name_override_renames_resources_not_the_release() -> None:
    out = subprocess.run(
        [str(helm()), "template", "r", str(CHART), "--set", "nameOverride=jobs"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    names = {d["metadata"]["name"] for d in yaml.safe_load_all(out.stdout) if d}
    assert "r-jobs" in names and not any(n.startswith("r-rankq") for n in names)
