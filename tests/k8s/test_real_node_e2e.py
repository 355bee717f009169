"""What a user runs, on the real node (docs/real-node.md): helm install, then a 3-replica Queue.

The operator runs in-cluster from the image with the chart's ServiceAccount; three server pods
elect a leader over their peer DNS names; the leader-only Service routes through kube-proxy; a
client enqueues and dequeues through it; the leader pod is deleted and the Service follows the new
leader; deleting the Queue removes its pods. `make test` runs it where the machine can run the real
node (RANKQ_K8S_REAL_NODE=auto: root, the Debian packages, cgroups, overlayfs, network namespaces);
elsewhere it skips with what is missing (hack/k8s/node.sh check).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK = REPO_ROOT / "hack" / "k8s"
NODE_SELECTOR = {"type": "real"}
TOLERATIONS = [{"key": "rankq.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]
# The tag `make image` built (RANKQ_IMAGE_TAG there); the chart and the Queue both use it.
IMAGE_TAG = os.environ.get("RANKQ_E2E_IMAGE_TAG", "0.1.0")
IMAGE = f"rankq:{IMAGE_TAG}"
# The rolling image change's target: the same layer under a second tag (image.sh --also-tag).
NEXT_TAG = os.environ.get("RANKQ_E2E_IMAGE_TAG_NEXT") or f"{IMAGE_TAG}-next"
IMAGE_DIR = Path(os.environ.get("RANKQ_IMAGE_DIR", Path.home() / ".cache" / "rankq" / "image"))

pytestmark = [pytest.mark.k8s, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def real_node(k8s: Any) -> Any:
    run = Path(k8s.dir) / "run"
    if (run / "real-node-failed").exists():
        pytest.fail(
            "the machine passed hack/k8s/node.sh check but the real node did not start:\n"
            + (run / "real-node-failed").read_text()[-3000:]
        )
    if "kubelet" not in k8s.components:
        if (run / "real-node-skipped").exists():
            pytest.skip(
                "this machine cannot run the real node: "
                + "; ".join((run / "real-node-skipped").read_text().split("\n")).strip("; ")
            )
        pytest.skip(
            "no real node: the control plane runs without one (make test, or "
            "RANKQ_K8S_REAL_NODE=1 make k8s-up; docs/real-node.md)"
        )
    # Current image (rebuilt only if its sources changed) and its second tag, then imported.
    build = subprocess.run(
        ["bash", str(HACK / "image.sh"), "--if-changed", "--also-tag", NEXT_TAG],
        capture_output=True,
        text=True,
        timeout=840,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHON": sys.executable, "RANKQ_IMAGE_TAG": IMAGE_TAG},
    )
    assert build.returncode == 0, build.stderr[-3000:]
    for step in ("images", "pvs"):  # import the image; make volumes of earlier runs available again
        proc = subprocess.run(
            ["bash", str(HACK / "node.sh"), step], capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    return k8s


def _helm(k8s: Any, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(k8s.helm_path), f"--kubeconfig={k8s.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def _pods(k8s: Any, ns: str, name: str) -> list[dict[str, Any]]:
    items = k8s.get_json("pods", "-l", f"app.kubernetes.io/instance={name}", namespace=ns)["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    conds = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conds)


def _leader_endpoints(k8s: Any, ns: str, name: str) -> list[str]:
    slices = k8s.get_json("endpointslices", "-l", f"kubernetes.io/service-name={name}", namespace=ns)["items"]
    return sorted(
        ep["targetRef"]["name"]
        for s in slices
        for ep in s.get("endpoints") or []
        if ep.get("conditions", {}).get("ready") and ep.get("targetRef")
    )


def _cli(
    k8s: Any, ns: str, pod: str, service_url: str, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """The rankq CLI inside a server pod, talking to the leader Service's DNS name (via kube-proxy)."""
    return k8s.kubectl(
        "exec",
        "-n",
        ns,
        pod,
        "-c",
        "rankq",
        "--",
        "rankq",
        "--url",
        service_url,
        "-o",
        "json",
        *args,
        check=False,
        timeout=timeout,
    )


def test_helm_install_queue_failover_and_delete(real_node: Any, namespace: str) -> None:
    k8s = real_node
    ns = namespace
    values = {
        "image": {"repository": "rankq", "tag": IMAGE_TAG, "pullPolicy": "Never"},
        "nodeSelector": NODE_SELECTOR,
        "tolerations": TOLERATIONS,
        "watchNamespaces": [ns],
    }
    values_file = Path(k8s.dir) / "run" / f"values-{ns}.json"
    values_file.write_text(json.dumps(values))
    t0 = time.monotonic()
    inst = _helm(
        k8s,
        "install",
        "rq",
        str(REPO_ROOT / "helm" / "rankq"),
        "-n",
        ns,
        "-f",
        str(values_file),
        "--wait",
        "--timeout",
        "180s",
        timeout=240,
    )
    operator_ready_s = time.monotonic() - t0
    if inst.returncode != 0:
        print(k8s.kubectl("describe", "pods", "-n", ns, check=False).stdout[-4000:])
        pytest.fail(f"helm install failed: {inst.stderr[-2000:]}")
    try:
        _queue_lifecycle(k8s, ns, operator_ready_s)
    finally:
        _helm(k8s, "uninstall", "rq", "-n", ns, "--wait", "--timeout", "60s", timeout=90)
        values_file.unlink(missing_ok=True)


def _queue_lifecycle(k8s: Any, ns: str, operator_ready_s: float) -> None:
    name = "orders"
    queue = {
        "apiVersion": "rankq.io/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": name},
        "spec": {
            "replicas": 3,
            "image": IMAGE,
            "imagePullPolicy": "Never",
            "storage": {"size": "1Gi", "storageClassName": "rankq-local", "keepOnDelete": False},
            "nodeSelector": NODE_SELECTOR,
            "tolerations": TOLERATIONS,
        },
    }
    t0 = time.monotonic()
    k8s.apply(queue, namespace=ns)

    def all_ready_with_leader() -> str | None:
        pods = _pods(k8s, ns, name)
        eps = _leader_endpoints(k8s, ns, name)
        if len(pods) == 3 and all(_ready(p) for p in pods) and len(eps) == 1:
            return eps[0]
        return None

    try:
        leader = k8s.wait_for(all_ready_with_leader, 300, "3 Ready server pods and one leader endpoint")
    except BaseException:
        _dump(k8s, ns, name)
        logs = "".join(
            k8s.kubectl(
                "logs", "-n", ns, p["metadata"]["name"], "-c", "rankq", "--previous", "--tail", "5", check=False
            ).stdout
            for p in _pods(k8s, ns, name)
        )
        if "PermissionError" in logs:
            pytest.fail(
                "server pods cannot write their volume (a fresh volume is root-owned): the pod spec needs "
                "securityContext.fsGroup for the image's user 10001\n" + logs[-1500:]
            )
        raise
    group_ready_s = time.monotonic() - t0
    url = f"http://{name}.{ns}.svc:8080"
    follower = next(p["metadata"]["name"] for p in _pods(k8s, ns, name) if p["metadata"]["name"] != leader)

    # Enqueue and dequeue through the leader Service, from a follower pod (DNS + kube-proxy).
    sent = k8s.wait_for(lambda: _ok(_cli(k8s, ns, follower, url, "send", name, '{"n": 1}')), 60, "send via Service")
    got = _cli(k8s, ns, follower, url, "receive", name, "--wait", "5", "--ack")
    assert got.returncode == 0, got.stderr
    assert '"n": 1' in got.stdout or '"n":1' in got.stdout, got.stdout
    logs = k8s.kubectl("logs", "-n", ns, leader, "-c", "rankq", "--tail", "50", check=False)
    assert logs.returncode == 0 and logs.stdout.strip(), logs.stderr

    # Delete the leader pod: a new leader serves and the Service follows it.
    k8s.kubectl("delete", "pod", "-n", ns, leader, "--wait=false")
    t_kill = time.monotonic()

    def new_leader_serves() -> str | None:
        eps = _leader_endpoints(k8s, ns, name)
        if len(eps) != 1 or eps[0] == leader:
            return None
        probe_pod = next(
            (p["metadata"]["name"] for p in _pods(k8s, ns, name) if p["metadata"]["name"] != leader and _ready(p)), None
        )
        if probe_pod is None:
            return None
        return eps[0] if _ok(_cli(k8s, ns, probe_pod, url, "send", name, '{"n": 2}', timeout=15)) else None

    try:
        new_leader = k8s.wait_for(new_leader_serves, 180, "a new leader behind the Service")
    except BaseException:
        _dump(k8s, ns, name)
        raise
    failover_s = time.monotonic() - t_kill
    print(
        f"\nreal node timings: operator ready {operator_ready_s:.1f}s, group ready {group_ready_s:.1f}s, "
        f"failover (leader pod deleted -> Service routes to new leader {new_leader} and a send succeeds) "
        f"{failover_s:.1f}s; first send id {sent!r}"
    )

    # kubectl delete queue: the operator's children and the pods go away.
    k8s.kubectl("delete", "queue", name, "-n", ns, "--wait=false")
    k8s.wait_for(
        lambda: not _pods(k8s, ns, name) and not k8s.get_json("statefulsets", namespace=ns)["items"],
        180,
        "Queue children removed",
    )


def _token(k8s: Any, ns: str, name: str) -> str:
    """The API token the operator generated for the Queue (Secret <name>-token), or "" if none.

    Server pods carry it as RANKQ_API_TOKEN, so the CLI run inside them needs nothing more."""
    proc = k8s.kubectl("get", "secret", f"{name}-token", "-n", ns, "-o", "jsonpath={.data.token}", check=False)
    return base64.b64decode(proc.stdout).decode() if proc.returncode == 0 and proc.stdout else ""


def _ok(proc: subprocess.CompletedProcess[str]) -> str | None:
    return (proc.stdout.strip() or "ok") if proc.returncode == 0 else None


def _dump(k8s: Any, ns: str, name: str) -> None:
    print(k8s.kubectl("get", "pods,svc,endpointslices,pvc,queue", "-n", ns, "-o", "wide", check=False).stdout)
    print(k8s.kubectl("logs", "-n", ns, "deploy/rq-rankq", "--tail", "40", check=False).stdout[-3000:])
    for p in _pods(k8s, ns, name):
        n = p["metadata"]["name"]
        print(
            f"--- {n}\n" + k8s.kubectl("logs", "-n", ns, n, "-c", "rankq", "--tail", "20", check=False).stdout[-2000:]
        )


# Runs inside a client pod: produce with dedup keys (safe to retry, the client's contract) until
# /tmp/stop appears, then consume until every acknowledged send has been received.
WORKLOAD = r"""
import json, os, sys, time
from rankq import Client
url, q, token = sys.argv[1], sys.argv[2], sys.argv[3] or None
acked, failed, got = [], [], set()
with Client(url, timeout=5, retries=10, token=token) as c:
    i = 0
    while not os.path.exists("/tmp/stop") and i < 5000:
        try:
            c.enqueue(q, {"i": i}, dedup_key=f"m{i}")
            acked.append(i)
        except Exception as exc:
            failed.append([i, repr(exc)[:300]])
        i += 1
        time.sleep(0.05)
    deadline = time.time() + 90
    while time.time() < deadline and not set(acked) <= got:
        for m in c.dequeue(q, max=100, wait=2):
            got.add(m.payload["i"])
            c.ack(m)
print(json.dumps({"acked": acked, "failed": failed, "got": sorted(got)}))
"""


def test_rolling_image_change_under_load_loses_nothing(real_node: Any, namespace: str) -> None:
    """Two locally built tags: changing the Queue's image rolls the pods while a producer and a
    consumer run; no acknowledged message is lost and no retried request fails."""
    next_tag = NEXT_TAG
    assert (IMAGE_DIR / f"rankq-{next_tag}.oci.tar").exists()
    k8s = real_node
    ns = namespace
    pvs = subprocess.run(
        ["bash", str(HACK / "node.sh"), "pvs"], capture_output=True, text=True, timeout=120, cwd=REPO_ROOT
    )
    assert pvs.returncode == 0, pvs.stderr[-2000:]
    values_file = Path(k8s.dir) / "run" / f"values-{ns}.json"
    values_file.write_text(
        json.dumps(
            {
                "image": {"repository": "rankq", "tag": IMAGE_TAG, "pullPolicy": "Never"},
                "nodeSelector": NODE_SELECTOR,
                "tolerations": TOLERATIONS,
                "watchNamespaces": [ns],
            }
        )
    )
    inst = _helm(
        k8s,
        "install",
        "rq",
        str(REPO_ROOT / "helm" / "rankq"),
        "-n",
        ns,
        "-f",
        str(values_file),
        "--wait",
        "--timeout",
        "180s",
        timeout=240,
    )
    assert inst.returncode == 0, inst.stderr[-2000:]
    name = "jobs"
    spec = {
        "replicas": 3,
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "storage": {"size": "1Gi", "storageClassName": "rankq-local", "keepOnDelete": False},
        "nodeSelector": NODE_SELECTOR,
        "tolerations": TOLERATIONS,
    }
    client_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "client"},
        "spec": {
            "nodeSelector": NODE_SELECTOR,
            "tolerations": TOLERATIONS,
            "containers": [
                {
                    "name": "c",
                    "image": IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", "import time; time.sleep(86400)"],
                }
            ],
        },
    }
    try:
        k8s.apply(
            [
                {"apiVersion": "rankq.io/v1alpha1", "kind": "Queue", "metadata": {"name": name}, "spec": spec},
                client_pod,
            ],
            namespace=ns,
        )

        def settled(image: str) -> bool:
            pods = _pods(k8s, ns, name)
            return (
                len(pods) == 3
                and all(_ready(p) for p in pods)
                and all(p["spec"]["containers"][0]["image"] == image for p in pods)
                and len(_leader_endpoints(k8s, ns, name)) == 1
            )

        try:
            k8s.wait_for(
                lambda: settled(IMAGE) and _ready(k8s.get_json("pod", "client", namespace=ns)),
                300,
                "3 Ready server pods, a leader and the client pod",
            )
        except BaseException:
            _dump(k8s, ns, name)
            raise
        url = f"http://{name}.{ns}.svc:8080"
        work = subprocess.Popen(
            [
                str(k8s.kubectl_path),
                f"--kubeconfig={k8s.kubeconfig}",
                "exec",
                "-n",
                ns,
                "client",
                "--",
                "python",
                "-c",
                WORKLOAD,
                url,
                name,
                _token(k8s, ns, name),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            k8s.wait_for(
                lambda: (
                    k8s.kubectl(
                        "exec",
                        "-n",
                        ns,
                        "client",
                        "--",
                        "python",
                        "-c",
                        "import sys; from rankq import Client; "
                        f"sys.exit(0 if Client('{url}', token=sys.argv[1] or None)"
                        f".get_queue('{name}') else 1)",
                        _token(k8s, ns, name),
                        check=False,
                    ).returncode
                    == 0
                ),
                60,
                "the queue answering",
            )
            t0 = time.monotonic()
            k8s.kubectl(
                "patch",
                "queue",
                name,
                "-n",
                ns,
                "--type=merge",
                "-p",
                json.dumps({"spec": {"image": f"rankq:{next_tag}"}}),
            )
            try:
                k8s.wait_for(lambda: settled(f"rankq:{next_tag}"), 400, f"all pods rolled to rankq:{next_tag}")
            except BaseException:
                _dump(k8s, ns, name)
                raise
            roll_s = time.monotonic() - t0
            k8s.kubectl("exec", "-n", ns, "client", "--", "touch", "/tmp/stop")
            out, err = work.communicate(timeout=180)
        finally:
            if work.poll() is None:
                work.kill()
        assert work.returncode == 0, err[-3000:]
        result = json.loads(out.strip().splitlines()[-1])
        lost = sorted(set(result["acked"]) - set(result["got"]))
        print(
            f"\nrolling image change: {roll_s:.1f}s for 3 pods, {len(result['acked'])} messages acknowledged, "
            f"{len(result['failed'])} failed after retries, {len(lost)} lost"
        )
        assert not result["failed"], result["failed"][:5]
        assert not lost, lost[:20]
        assert len(result["acked"]) > 0
        k8s.kubectl("delete", "queue", name, "-n", ns, "--wait=false")
        k8s.wait_for(lambda: not _pods(k8s, ns, name), 180, "Queue pods removed")
    finally:
        _helm(k8s, "uninstall", "rq", "-n", ns, "--wait", "--timeout", "60s", timeout=90)
        values_file.unlink(missing_ok=True)
