"""The autoscaling scenario on a control plane with the HPAScaleToZero feature gate on.

A second control plane of its own (state in a temporary directory, free loopback ports, one kwok
node) starts with `RANKQ_K8S_FEATURE_GATES=HPAScaleToZero=true` for kube-apiserver and
kube-controller-manager. The operator finds that the API server accepts `minReplicas: 0`, gives the
HPA that floor and leaves 0 <-> 1 to the HPA: the HPA itself scales the idle pool from 0 to 4 and
back to 0, and the operator posts no activation Events. (400 messages and 4 replicas keep the
second control plane's share of `make test` small; bench/autoscaling.py runs the full 1,000 / 10.)
"""

from __future__ import annotations

from collections.abc import Iterator

import autoscale_scenario as scenario
import pytest
from k8s_support import Cluster
from operator_support import OperatorProcess, drop_finalizers, install_chart, unique

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def gated(k8s, tmp_path_factory) -> Iterator[Cluster]:
    """A control plane with HPAScaleToZero on, beside the shared one; stopped after the module."""
    k8s.require("kube-controller-manager", "kwok", "helm")
    with scenario.gated_control_plane(tmp_path_factory.mktemp("k8s-gated")) as cluster:
        yield cluster


def test_the_hpa_itself_scales_from_zero_and_back_with_the_gate_on(gated, tmp_path):
    out = scenario.run(gated, tmp_path, total=400, max_replicas=4)
    assert out.hpa_min_replicas == 0  # the operator found the gate and gave the HPA the floor 0
    assert out.replicas_seen[0] == 0 and out.replicas_seen[1] > 1  # 0 -> N by the HPA, not 0 -> 1 by us
    assert out.activation_events == 0 and out.status["workers"][0].get("lastScaleReason") is None
    print(f"\nautoscaling (HPAScaleToZero): {out.summary()}")


def test_keda_pool_on_a_cluster_without_keda_gets_a_warning_and_still_runs(gated, tmp_path):
    """This control plane has no KEDA CRDs (test_autoscaling_keda installs them on the shared one):
    the operator says so once, in an Event, and runs the pool's Deployment anyway."""
    sys_ns, ns, release = unique("rankq-nokeda"), unique("t-nokeda"), unique("rq")
    gated.kubectl("create", "namespace", sys_ns)
    gated.kubectl("create", "namespace", ns)
    kubeconfig = install_chart(gated, sys_ns, release, tmp_path)
    op = OperatorProcess(kubeconfig, sys_ns, tmp_path / "endpoints.json", tmp_path / "operator.log").start()
    try:
        gated.apply(
            {
                "apiVersion": "rankq.io/v1alpha1",
                "kind": "Queue",
                "metadata": {"name": "q"},
                "spec": {
                    "replicas": 1,
                    "storage": {"ephemeral": True},
                    "workers": [
                        {
                            "name": "pool",
                            "handler": "autoscale_jobs:handle",
                            "autoscaling": {"provider": "keda", "minReplicas": 1},
                        }
                    ],
                },
            },
            namespace=ns,
        )

        def warned() -> list[dict]:
            return [
                e
                for e in gated.get_json("events", namespace=ns)["items"]
                if e.get("reason") == "KedaNotInstalled" and e.get("type") == "Warning"
            ]

        events = gated.wait_for(warned, 60, "the KedaNotInstalled Event")
        assert "ScaledObject" in events[0]["message"] or "TriggerAuthentication" in events[0]["message"]
        dep = gated.wait_for(lambda: gated.get_json("deployment", "q-pool", namespace=ns), 30, "the pool's Deployment")
        assert dep["spec"]["replicas"] == 1
        gated.wait_for(lambda: gated.get_json("statefulset", "q", namespace=ns), 30, "the Queue's StatefulSet")
    except BaseException:
        print(op.tail())
        raise
    finally:
        op.stop()
        drop_finalizers(gated, ns)
        for namespace in (ns, sys_ns):
            gated.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
