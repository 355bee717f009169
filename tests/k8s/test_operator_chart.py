"""The operator from the Helm chart against the real control plane: children, status, validation.

The operator runs as a local process with a token of the chart's ServiceAccount, so any RBAC rule
the chart lacks fails these tests. No servers run here (kwok pods only); see test_operator_e2e.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from operator_support import REPO, OperatorProcess, install_chart, unique

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(240)]


@pytest.fixture(scope="module")
def op(k8s, tmp_path_factory):
    k8s.require("kube-controller-manager", "kwok", "helm")
    tmp = tmp_path_factory.mktemp("operator")
    ns = unique("rankq-sys")
    k8s.kubectl("create", "namespace", ns)
    release = unique("rq")
    kubeconfig = install_chart(k8s, ns, release, tmp)
    proc = OperatorProcess(kubeconfig, ns, tmp / "endpoints.json", tmp / "operator.log").start()
    proc.k8s, proc.namespace, proc.release, proc.tmp = k8s, ns, release, tmp
    try:
        yield proc
    finally:
        proc.stop()
        k8s.kubectl(
            "delete", "clusterrole,clusterrolebinding", "-l", f"app.kubernetes.io/instance={release}", check=False
        )
        k8s.kubectl("delete", "namespace", ns, "--wait=false", check=False)


def get(k8s, kind, name, ns):
    proc = k8s.kubectl("get", kind, name, "-n", ns, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else None


def queue_manifest(name: str, **spec) -> dict:
    return {"apiVersion": "rankq.io/v1alpha1", "kind": "Queue", "metadata": {"name": name}, "spec": spec}


def wait_children(k8s, ns, name, op):
    kinds = [
        ("statefulset", name),
        ("service", name),
        ("service", f"{name}-peers"),
        ("configmap", f"{name}-config"),
        ("secret", f"{name}-raft"),
        ("poddisruptionbudget", name),
        ("serviceaccount", name),
        ("role", name),
        ("rolebinding", name),
    ]

    def all_there():
        got = {(k, n): get(k8s, k, n, ns) for k, n in kinds}
        return got if all(got.values()) else None

    try:
        return k8s.wait_for(all_there, 60, f"children of Queue {name}")
    except BaseException:
        print(op.tail())
        raise


def test_example_queue_produces_every_child_with_the_right_shape(k8s, op, namespace):
    k8s.kubectl("apply", "-n", namespace, "-f", str(REPO / "examples" / "queue.yaml"))
    q = get(k8s, "queue", "orders", namespace)
    children = wait_children(k8s, namespace, "orders", op)
    for obj in children.values():
        [ref] = obj["metadata"]["ownerReferences"]
        assert ref["uid"] == q["metadata"]["uid"] and ref["controller"] is True

    sts = children[("statefulset", "orders")]["spec"]
    assert sts["replicas"] == 3 and sts["serviceName"] == "orders-peers"
    assert sts["updateStrategy"]["type"] == "OnDelete"
    assert sts["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Delete"}
    assert sts["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    container = sts["template"]["spec"]["containers"][0]
    assert container["image"] == "rankq:0.1.0"
    assert container["resources"]["requests"] == {"cpu": "250m", "memory": "256Mi"}
    assert container["lifecycle"]["preStop"]["exec"]["command"][:3] == ["rankq", "node", "drain"]

    leader_svc = children[("service", "orders")]["spec"]
    assert leader_svc["selector"]["rankq.io/role"] == "leader"
    peers = children[("service", "orders-peers")]["spec"]
    assert peers["clusterIP"] == "None" and peers["publishNotReadyAddresses"] is True
    assert children[("poddisruptionbudget", "orders")]["spec"]["minAvailable"] == 2
    cm = children[("configmap", "orders-config")]["data"]
    settings = json.loads(cm["settings.json"])
    assert settings["visibility_timeout"] == 60.0 and settings["max_deliveries"] == 5
    assert settings["weights"] == {"1": 50, "2": 30, "3": 20}
    assert cm["peers"].count("orders-peers") == 3
    assert len(children[("secret", "orders-raft")]["data"]["password"]) > 20
    assert children[("role", "orders")]["rules"][0]["verbs"] == ["get", "patch"]

    # The StatefulSet controller makes pods; the operator labels them (no server answers: followers).
    def pods_labelled():
        pods = k8s.get_json("pods", "-l", "rankq.io/queue=orders", namespace=namespace)["items"]
        roles = sorted(p["metadata"]["labels"].get("rankq.io/role", "") for p in pods)
        return roles == ["follower"] * 3

    k8s.wait_for(pods_labelled, 60, "three pods labelled follower")

    # Status fills in, and the printer columns show it.
    def status_ok():
        st = (get(k8s, "queue", "orders", namespace) or {}).get("status") or {}
        types = {c["type"]: c for c in st.get("conditions", [])}
        return (
            st
            if st.get("replicas") == 3
            and st.get("observedGeneration") == 1
            and {"Ready", "LeaderElected", "Progressing", "Degraded"} <= set(types)
            else None
        )

    st = k8s.wait_for(status_ok, 30, "status of Queue orders")
    assert st["selector"] == "app.kubernetes.io/name=rankq,rankq.io/queue=orders"
    conds = {c["type"]: c for c in st["conditions"]}
    assert conds["LeaderElected"]["status"] == "False" and conds["LeaderElected"]["reason"] == "NoLeader"
    assert conds["Ready"]["status"] == "False"
    assert st["phase"] == "Creating"
    table = k8s.kubectl("get", "rq", "orders", "-n", namespace).stdout
    header = table.splitlines()[0].split()
    assert header == ["NAME", "REPLICAS", "READY", "LEADER", "DEPTH", "DLQ", "WORKERS", "PHASE", "AGE"]
    # The example's claims have no provisioner here, so its pods stay Pending: 0 ready.
    assert table.splitlines()[1].split()[1:3] == ["3", "0"]

    events = k8s.get_json(
        "events", "--field-selector", "involvedObject.name=orders,involvedObject.kind=Queue", namespace=namespace
    )["items"]
    assert any(e["reason"] == "Created" and "StatefulSet orders" in e["message"] for e in events)


INVALID = [
    ({"replicas": 4}, "replicas must be 1, 3, 5 or 7"),
    ({"replicas": 2}, "a Raft group needs an odd size"),
    ({"queue": {"policy": "fifo"}}, 'Unsupported value: "fifo"'),
    ({"queue": {"visibilityTimeoutSeconds": 0}}, "spec.queue.visibilityTimeoutSeconds"),
    ({"queue": {"weights": {"high": 3}}}, "weights maps a priority class"),
    ({"deadLetter": {"maxDeliveries": -1}}, "spec.deadLetter.maxDeliveries"),
    ({"storage": {"size": "lots"}}, "spec.storage.size"),
    ({"auth": {"secretRef": {"key": "k"}}}, "spec.auth.secretRef.name: Required value"),
]


@pytest.mark.parametrize("spec,message", INVALID, ids=[m for _, m in INVALID])
def test_invalid_manifests_are_rejected_with_clear_messages(k8s, namespace, spec, message):
    proc = k8s.kubectl(
        "apply", "-n", namespace, "-f", "-", input=json.dumps(queue_manifest("bad", **spec)), check=False
    )
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr


def test_scale_subresource_rejects_even_sizes(k8s, op, namespace):
    k8s.apply(queue_manifest("sc", replicas=1, storage={"ephemeral": True}), namespace=namespace)
    proc = k8s.kubectl("scale", "queue/sc", "--replicas=2", "-n", namespace, check=False)
    assert proc.returncode != 0 and "replicas must be 1, 3, 5 or 7" in proc.stderr


def test_deleted_child_is_recreated_and_status_writes_cause_no_work(k8s, op, namespace):
    k8s.apply(queue_manifest("rc", replicas=3, storage={"ephemeral": True}), namespace=namespace)
    children = wait_children(k8s, namespace, "rc", op)
    old_uid = children[("service", "rc")]["metadata"]["uid"]
    k8s.kubectl("delete", "service", "rc", "-n", namespace)
    k8s.kubectl("delete", "configmap", "rc-config", "-n", namespace)
    k8s.wait_for(
        lambda: (
            (s := get(k8s, "service", "rc", namespace))
            and s["metadata"]["uid"] != old_uid
            and get(k8s, "configmap", "rc-config", namespace)
        ),
        30,
        "Service rc and ConfigMap rc-config recreated",
    )

    # Settled: over two refresh periods neither the children nor the Queue change.
    def versions():
        sts = get(k8s, "statefulset", "rc", namespace)
        q = get(k8s, "queue", "rc", namespace)
        return sts["metadata"]["resourceVersion"], q["metadata"]["resourceVersion"]

    k8s.wait_for(lambda: get(k8s, "queue", "rc", namespace).get("status", {}).get("replicas") == 3, 30, "status")
    first = versions()
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline:  # observing the absence of writes for a bounded time
        assert versions() == first, "a settled Queue or its StatefulSet was written again"
        time.sleep(1)


def test_unrealisable_spec_is_degraded_with_reason_and_event(k8s, op, namespace):
    k8s.apply(
        queue_manifest("dg", replicas=1, storage={"ephemeral": True}, auth={"secretRef": {"name": "missing-token"}}),
        namespace=namespace,
    )

    def degraded():
        st = (get(k8s, "queue", "dg", namespace) or {}).get("status") or {}
        conds = {c["type"]: c for c in st.get("conditions", [])}
        d = conds.get("Degraded")
        return st if d and d["status"] == "True" and d["reason"] == "AuthSecretMissing" else None

    st = k8s.wait_for(degraded, 30, "Degraded=True reason AuthSecretMissing")
    assert st["phase"] == "Degraded"
    events = k8s.get_json("events", "--field-selector", "involvedObject.name=dg", namespace=namespace)["items"]
    assert any(e["type"] == "Warning" and e["reason"] == "AuthSecretMissing" for e in events)
    # Fixing the cause heals it.
    k8s.kubectl("create", "secret", "generic", "missing-token", "--from-literal=token=t", "-n", namespace)
    k8s.wait_for(
        lambda: (
            {c["type"]: c for c in get(k8s, "queue", "dg", namespace)["status"]["conditions"]}["Degraded"]["status"]
            == "False"
        ),
        30,
        "Degraded cleared once the Secret exists",
    )
    assert get(k8s, "statefulset", "dg", namespace)


def test_operator_restart_resumes_without_rewriting_children(k8s, op, namespace):
    k8s.apply(queue_manifest("rs", replicas=3, storage={"ephemeral": True}), namespace=namespace)
    children = wait_children(k8s, namespace, "rs", op)
    before = {key: obj["metadata"]["resourceVersion"] for key, obj in children.items()}
    op.stop()
    op.start()
    # The new instance takes the Lease once the old one released it, then reconciles every Queue.
    k8s.wait_for(lambda: op.tail(400).count("holding lease") >= 2, 40, "restarted operator holds the Lease")
    k8s.apply(queue_manifest("rs2", replicas=1, storage={"ephemeral": True}), namespace=namespace)
    wait_children(k8s, namespace, "rs2", op)  # it acts again...
    after = {key: get(k8s, key[0], key[1], namespace)["metadata"]["resourceVersion"] for key in before}
    assert after == before  # ...and left the settled children alone


def test_queue_deletion_removes_children(k8s, op, namespace):
    k8s.apply(queue_manifest("gone", replicas=1, storage={"ephemeral": True}), namespace=namespace)
    wait_children(k8s, namespace, "gone", op)
    k8s.kubectl("delete", "queue", "gone", "-n", namespace, "--timeout=30s")
    k8s.wait_for(
        lambda: get(k8s, "statefulset", "gone", namespace) is None and get(k8s, "service", "gone", namespace) is None,
        60,
        "children garbage-collected",
    )


def test_chart_lints_and_renders():
    import subprocess

    from k8s_support import state_dir

    helm = state_dir() / "bin" / "helm"
    if not helm.exists():
        pytest.skip("helm not built")
    lint = subprocess.run([str(helm), "lint", "--strict", str(REPO / "helm" / "rankq")], capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    for extra in ([], ["--set", "serviceMonitor.enabled=true", "--set", "watchNamespaces={a,b}"]):
        out = subprocess.run(
            [str(helm), "template", "r", str(REPO / "helm" / "rankq"), *extra], capture_output=True, text=True
        )
        assert out.returncode == 0, out.stderr
        kinds = [d["kind"] for d in yaml.safe_load_all(out.stdout) if d]
        assert "Deployment" in kinds and ("ClusterRole" in kinds or "Role" in kinds)
    bad = subprocess.run(
        [str(helm), "template", "r", str(REPO / "helm" / "rankq"), "--set", "replicas=-1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode != 0 and "replicas" in bad.stderr
    assert (REPO / "helm" / "rankq" / "crds" / "queue.yaml").read_text() == (REPO / "crds" / "queue.yaml").read_text()
    assert Path(REPO / "helm" / "rankq" / "templates" / "NOTES.txt").read_text().count("kind: Queue") == 1
