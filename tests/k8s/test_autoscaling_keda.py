"""KEDA mode (`autoscaling.provider: keda`) against KEDA's real CRDs on the local control plane.

KEDA's CustomResourceDefinitions at KEDA_VERSION (hack/k8s/versions.env) come from its Go module
(hack/k8s/keda-crds.sh) and stay installed; the apiserver validates every ScaledObject and
TriggerAuthentication the operator writes against their schemas (CEL rules included). KEDA's own
controller does not run here (no container registry to pull it from), so nothing scales on these
objects: the test checks what the operator writes, that it follows live spec changes, and that a
pool switches between hpa and keda without leftovers.
"""

from __future__ import annotations

import json
import subprocess

import pytest
from operator_support import REPO, OperatorProcess, drop_finalizers, install_chart, unique

from rankq.operator import worker_specs as ws
from rankq.operator.models import QueueResource

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(300)]

POOL = {
    "name": "pool",
    "handler": "autoscale_jobs:handle",
    "concurrency": 2,
    "autoscaling": {
        "provider": "keda",
        "minReplicas": 0,
        "maxReplicas": 10,
        "targetBacklogPerReplica": 100,
        "activationBacklog": 3,
        "cooldownSeconds": 60,
    },
}


def install_keda_crds(k8s) -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "hack" / "k8s" / "keda-crds.sh")], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stderr
    k8s.kubectl("apply", "--server-side", "--force-conflicts", "-f", proc.stdout.strip())
    for crd in ("scaledobjects.keda.sh", "triggerauthentications.keda.sh"):
        k8s.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=60s", timeout=70)


def get_optional(k8s, kind: str, name: str, ns: str) -> dict | None:
    proc = k8s.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def queue_body(ns: str, autoscaling: dict) -> dict:
    return {
        "apiVersion": "rankq.io/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": "q", "namespace": ns},
        "spec": {
            "replicas": 1,
            "storage": {"ephemeral": True},
            "queue": {"name": "jobs"},
            "auth": {"consume": {"name": "workers", "key": "consume"}},
            "workers": [{**POOL, "autoscaling": autoscaling}],
        },
    }


def test_builders_pass_kedas_schemas(k8s, namespace):
    """Every shape the builders make is accepted by the real CRDs (server-side dry run), and the
    schema is really enforced: a trigger with a non-string metadata value is refused."""
    install_keda_crds(k8s)
    for autoscaling in (
        POOL["autoscaling"],
        {
            "provider": "keda",
            "minReplicas": 2,
            "maxReplicas": 1000,
            "cooldownSeconds": 0,
            "behavior": {
                "scaleUp": {
                    "stabilizationWindowSeconds": 0,
                    "policies": [{"type": "Pods", "value": 4, "periodSeconds": 15}],
                }
            },
        },
    ):
        q = QueueResource.from_body(
            {
                **queue_body(namespace, autoscaling),
                "metadata": {"name": "q", "namespace": namespace, "uid": "00000000-0000-0000-0000-000000000001"},
            }
        )
        for obj in ws.build_pool_children(q, q.spec.workers[0]):
            obj["metadata"].pop("ownerReferences")
            k8s.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(obj))
    bad = ws.build_scaled_object(q, q.spec.workers[0])
    bad["metadata"].pop("ownerReferences")
    bad["spec"]["triggers"][0]["metadata"]["targetValue"] = 100
    proc = k8s.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert proc.returncode != 0 and "targetValue" in proc.stderr, proc.stderr
    bad = ws.build_scaled_object(q, q.spec.workers[0])
    bad["metadata"].pop("ownerReferences")
    bad["spec"]["minReplicaCount"] = 5000  # KEDA's CEL rule: min <= max
    proc = k8s.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(bad), check=False)
    assert proc.returncode != 0 and "minReplicaCount" in proc.stderr, proc.stderr


def test_operator_writes_scaled_object_follows_changes_and_switches_providers(k8s, tmp_path):
    k8s.require("helm")
    install_keda_crds(k8s)
    sys_ns, ns, release = unique("rankq-keda"), unique("t-keda"), unique("rq")
    k8s.kubectl("create", "namespace", sys_ns)
    k8s.kubectl("create", "namespace", ns)
    kubeconfig = install_chart(k8s, sys_ns, release, tmp_path)
    op = OperatorProcess(kubeconfig, sys_ns, tmp_path / "endpoints.json", tmp_path / "operator.log").start()
    try:
        k8s.kubectl("create", "secret", "generic", "workers", "-n", ns, "--from-literal=consume=c-token")
        k8s.apply(queue_body(ns, POOL["autoscaling"]))

        so = k8s.wait_for(lambda: get_optional(k8s, "scaledobject", "q-pool", ns), 60, "the ScaledObject")
        ta = k8s.wait_for(
            lambda: get_optional(k8s, "triggerauthentication", "q-pool-token", ns), 30, "the TriggerAuthentication"
        )
        queue_uid = k8s.get_json("queue", "q", namespace=ns)["metadata"]["uid"]
        for obj in (so, ta):
            assert [o["uid"] for o in obj["metadata"]["ownerReferences"]] == [queue_uid]  # gone with the Queue
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] == "q-pool" and spec["scaleTargetRef"]["kind"] == "Deployment"
        assert (spec["minReplicaCount"], spec["maxReplicaCount"], spec["cooldownPeriod"]) == (0, 10, 60)
        trigger = spec["triggers"][0]
        assert trigger["type"] == "metrics-api" and trigger["authenticationRef"] == {"name": "q-pool-token"}
        assert trigger["metadata"] == {
            "url": f"http://q.{ns}.svc:8080/api/v1/queues/jobs",
            "format": "json",
            "valueLocation": "counts.backlog",
            "targetValue": "100",
            "activationTargetValue": "2",
            "authMode": "bearer",
        }
        # KEDA reads the bearer token from the Secret the workers use (the consume token).
        assert ta["spec"]["secretTargetRef"] == [{"parameter": "token", "name": "workers", "key": "consume"}]
        dep = k8s.get_json("deployment", "q-pool", namespace=ns)
        env = dep["spec"]["template"]["spec"]["containers"][0]["env"][0]
        assert env["valueFrom"]["secretKeyRef"] == {"name": "workers", "key": "consume"}
        assert get_optional(k8s, "hpa", "q-pool", ns) is None  # KEDA makes its own HPA; none of ours

        # A live change of the pool reaches the ScaledObject.
        k8s.kubectl(
            "patch",
            "queue",
            "q",
            "-n",
            ns,
            "--type=json",
            "-p",
            json.dumps(
                [
                    {"op": "replace", "path": "/spec/workers/0/autoscaling/targetBacklogPerReplica", "value": 25},
                    {"op": "replace", "path": "/spec/workers/0/autoscaling/maxReplicas", "value": 4},
                    {"op": "replace", "path": "/spec/workers/0/autoscaling/cooldownSeconds", "value": 5},
                ]
            ),
        )

        def updated() -> dict | None:
            s = k8s.get_json("scaledobject", "q-pool", namespace=ns)["spec"]
            return s if s["triggers"][0]["metadata"]["targetValue"] == "25" else None

        spec = k8s.wait_for(updated, 60, "the ScaledObject to follow the new target")
        assert (spec["maxReplicaCount"], spec["cooldownPeriod"]) == (4, 5)

        # keda -> hpa: our HPA appears, KEDA's objects go.
        switch = [{"op": "replace", "path": "/spec/workers/0/autoscaling/provider", "value": "hpa"}]
        k8s.kubectl("patch", "queue", "q", "-n", ns, "--type=json", "-p", json.dumps(switch))
        hpa = k8s.wait_for(lambda: get_optional(k8s, "hpa", "q-pool", ns), 60, "the HPA after the switch to hpa")
        assert hpa["spec"]["maxReplicas"] == 4 and hpa["spec"]["scaleTargetRef"]["name"] == "q-pool"
        k8s.wait_for(
            lambda: (
                get_optional(k8s, "scaledobject", "q-pool", ns) is None
                and get_optional(k8s, "triggerauthentication", "q-pool-token", ns) is None
            ),
            60,
            "KEDA's objects to go",
        )

        # hpa -> keda: the other way round.
        switch[0]["value"] = "keda"
        k8s.kubectl("patch", "queue", "q", "-n", ns, "--type=json", "-p", json.dumps(switch))
        k8s.wait_for(lambda: get_optional(k8s, "scaledobject", "q-pool", ns), 60, "the ScaledObject again")
        k8s.wait_for(
            lambda: get_optional(k8s, "triggerauthentication", "q-pool-token", ns),
            30,
            "the TriggerAuthentication again",
        )
        k8s.wait_for(lambda: get_optional(k8s, "hpa", "q-pool", ns) is None, 60, "the HPA to go")
        assert get_optional(k8s, "deployment", "q-pool", ns) is not None  # the pool itself stayed
    except BaseException:
        print(op.tail())
        raise
    finally:
        op.stop()
        drop_finalizers(k8s, ns)
        for namespace in (ns, sys_ns):
            k8s.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        k8s.kubectl(
            "delete", "clusterrole,clusterrolebinding", "-l", f"app.kubernetes.io/instance={release}", check=False
        )
