"""The autoscaling scenario shared by the end-to-end tests and `bench/autoscaling.py`.

An idle worker pool at 0 replicas; 1,000 messages arrive at once with target 100 and max 10; the
real HPA controller (5 s sync) scales on the backlog the operator serves through the aggregated
external metrics API; real `rankq worker` processes stand in for the pods and drain the queue;
the pool returns to 0. Every message must be handled exactly once and every worker exit 0.

Real parts: kube-apiserver (its aggregation layer proxies external.metrics.k8s.io to the operator
process on this host through an ExternalName Service), kube-controller-manager (HPA and Deployment
controllers), kwok pods backed by real `rankq server` and `rankq worker` processes.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from k8s_support import Cluster
from operator_support import (
    REPO,
    OperatorProcess,
    StandIns,
    WorkerStandIns,
    drop_finalizers,
    free_port,
    install_chart,
    unique,
)

TOTAL = 1000
TARGET = 100
MAX = 10
COOLDOWN = 10
CONCURRENCY = 2  # per worker pod
HPA_SYNC_SECONDS = 5  # kube-controller-manager's --horizontal-pod-autoscaler-sync-period in hack/k8s/up.sh
SCALE_TO_ZERO_GATE = "HPAScaleToZero=true"


@contextlib.contextmanager
def gated_control_plane(state: Path, gates: str = SCALE_TO_ZERO_GATE) -> Iterator[Cluster]:
    """A second local control plane with feature gates on (hack/k8s/up.sh reads
    RANKQ_K8S_FEATURE_GATES): state in `state`, free loopback ports, one kwok node; stopped after."""
    env = dict(os.environ, RANKQ_K8S_DIR=str(state), RANKQ_K8S_NODES="1", RANKQ_K8S_FEATURE_GATES=gates)
    env.update(
        {
            f"RANKQ_K8S_{name}_PORT": str(free_port())
            for name in ("APISERVER", "ETCD_CLIENT", "ETCD_PEER", "KCM", "SCHED")
        }
    )
    env.pop("RANKQ_K8S_REAL_NODE", None)
    hack = REPO / "hack" / "k8s"
    try:
        up = subprocess.run(
            ["bash", str(hack / "up.sh")], env=env, capture_output=True, text=True, timeout=300, cwd=REPO
        )
        if up.returncode != 0:
            raise RuntimeError(f"hack/k8s/up.sh with {gates} failed:\n{(up.stdout + up.stderr)[-4000:]}")
        yield Cluster(state)
    finally:
        subprocess.run(["bash", str(hack / "down.sh")], env=env, capture_output=True, text=True, timeout=120, cwd=REPO)


def serving_cert(root: Path, names: list[str]) -> tuple[str, str, str]:
    """A CA and a serving certificate for `names` (and 127.0.0.1)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metrics test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    paths = (root / "ca.crt", root / "tls.crt", root / "tls.key")
    paths[0].write_bytes(ca.public_bytes(pem))
    paths[1].write_bytes(cert.public_bytes(pem))
    paths[2].write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return tuple(str(p) for p in paths)  # type: ignore[return-value]


@dataclass
class Outcome:
    """What one run measured (seconds from the enqueue, and from the drained queue) and saw."""

    total: int
    max_replicas: int
    first_worker: float
    full_scale: float
    to_zero: float
    replicas_seen: list[int]
    hpa_min_replicas: int
    activation_events: int
    status: dict = field(default_factory=dict)

    def summary(self) -> str:
        return (
            f"{self.total} messages: first worker {self.first_worker:.1f} s after the enqueue, "
            f"{self.max_replicas} replicas after "
            f"{self.full_scale:.1f} s, back to zero {self.to_zero:.1f} s after the drain; "
            f"replicas {self.replicas_seen}"
        )


def run(k8s, tmp_path: Path, total: int = TOTAL, max_replicas: int = MAX) -> Outcome:
    """One run of the scenario on the control plane `k8s` (a tests/k8s `Cluster`); asserts the
    invariants (exactly once, clean exits, no flapping) and returns the timings. `total` messages
    with target TARGET should reach `max_replicas`."""
    sys_ns, ns, release = unique("rankq-as"), unique("t-as"), unique("rq")
    k8s.kubectl("create", "namespace", sys_ns)
    k8s.kubectl("create", "namespace", ns)
    kubeconfig = install_chart(k8s, sys_ns, release, tmp_path)
    port = free_port()
    ca, cert, key = serving_cert(tmp_path, [f"metrics-api.{sys_ns}.svc", "localhost"])
    # The aggregated API: an ExternalName Service maps it to this host (no aggregator routing).
    k8s.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "metrics-api"},
            "spec": {
                "type": "ExternalName",
                "externalName": "localhost",
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            },
        },
        namespace=sys_ns,
    )
    api_service = {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": {"name": "v1beta1.external.metrics.k8s.io"},
        "spec": {
            "group": "external.metrics.k8s.io",
            "version": "v1beta1",
            "service": {"name": "metrics-api", "namespace": sys_ns, "port": port},
            "caBundle": base64.b64encode(Path(ca).read_bytes()).decode(),
            "groupPriorityMinimum": 100,
            "versionPriority": 100,
        },
    }
    endpoints = tmp_path / "endpoints.json"
    op = OperatorProcess(
        kubeconfig,
        sys_ns,
        endpoints,
        tmp_path / "operator.log",
        extra=[
            "--metrics-api-port",
            str(port),
            "--metrics-api-host",
            "127.0.0.1",
            "--metrics-api-cert",
            cert,
            "--metrics-api-key",
            key,
            "--requestheader-ca",
            str(k8s.pki / "front-proxy-ca.crt"),
        ],
    ).start()
    journal = tmp_path / "journal"
    journal.touch()
    (tmp_path / "pods").mkdir()
    (tmp_path / "workers").mkdir()
    servers = StandIns(k8s.kubeconfig, ns, tmp_path / "pods", endpoints).reserve("q", 1).start()
    workers = WorkerStandIns(k8s.kubeconfig, ns, servers, tmp_path / "workers").start()
    replicas_seen: list[int] = []
    try:
        k8s.apply(api_service)
        k8s.apply(
            {
                "apiVersion": "rankq.io/v1alpha1",
                "kind": "Queue",
                "metadata": {"name": "q"},
                "spec": {
                    "replicas": 1,
                    "storage": {"ephemeral": True},
                    "queue": {"name": "jobs"},
                    "workers": [
                        {
                            "name": "pool",
                            "handler": "autoscale_jobs:handle",
                            "concurrency": CONCURRENCY,
                            "drainTimeoutSeconds": 20,
                            "env": [{"name": "RANKQ_TEST_JOURNAL", "value": str(journal)}],
                            "autoscaling": {
                                "minReplicas": 0,
                                "maxReplicas": max_replicas,
                                "targetBacklogPerReplica": TARGET,
                                "cooldownSeconds": COOLDOWN,
                                "behavior": {
                                    "scaleUp": {
                                        "stabilizationWindowSeconds": 0,
                                        "policies": [{"type": "Pods", "value": max_replicas, "periodSeconds": 5}],
                                    },
                                    "scaleDown": {"stabilizationWindowSeconds": 0},
                                },
                            },
                        }
                    ],
                },
            },
            namespace=ns,
        )
        secret = k8s.wait_for(lambda: k8s.get_json("secret", "q-token", namespace=ns), 60, "the generated token")
        auth = {"Authorization": "Bearer " + base64.b64decode(secret["data"]["token"]).decode()}
        url = servers.url("q-0")

        def queue_exists() -> bool:
            try:
                return httpx.get(f"{url}/api/v1/queues/jobs", headers=auth, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        k8s.wait_for(queue_exists, 90, "the queue in the group")

        def deployment_replicas() -> int:
            dep = k8s.get_json("deployment", "q-pool", namespace=ns)
            n = int(dep["spec"].get("replicas") or 0)
            if not replicas_seen or replicas_seen[-1] != n:
                replicas_seen.append(n)
            return n

        hpa = k8s.wait_for(lambda: k8s.get_json("hpa", "q-pool", namespace=ns), 30, "the HPA")
        assert deployment_replicas() == 0  # idle pool asleep

        body = {"messages": [{"payload": {"n": i}} for i in range(total)]}
        t0 = time.monotonic()
        assert (
            httpx.post(f"{url}/api/v1/queues/jobs/messages/batch", json=body, headers=auth, timeout=30).status_code
            == 201
        )

        def live_backlog() -> dict | None:
            raw = k8s.kubectl(
                "get",
                "--raw",
                f"/apis/external.metrics.k8s.io/v1beta1/namespaces/{ns}/"
                f"rankq_queue_backlog?labelSelector=rankq.io%2Fqueue%3Djobs",
            ).stdout
            item = json.loads(raw)["items"][0]
            return item if int(item["value"]) > 0 else None  # the operator caches a value for up to 1 s

        item = k8s.wait_for(live_backlog, 10, "the backlog through the external metrics API")
        assert item["metricLabels"] == {"rankq.io/queue": "jobs"}
        k8s.wait_for(lambda: workers.running() >= 1, 30, "the first worker")
        first_worker = time.monotonic() - t0
        k8s.wait_for(lambda: deployment_replicas() >= max_replicas, 90, f"{max_replicas} replicas")
        full_scale = time.monotonic() - t0
        k8s.wait_for(lambda: len(journal.read_text().split("\n")) > total, 180, "every message handled")
        drained = time.monotonic()
        k8s.wait_for(lambda: deployment_replicas() == 0 and workers.running() == 0, 120, "the pool back at zero")
        to_zero = time.monotonic() - drained
        lines = [line.split()[0] for line in journal.read_text().split("\n") if line]
        assert len(lines) == len(set(lines)) == total, "every message handled exactly once"
        counts = httpx.get(f"{url}/api/v1/queues/jobs", headers=auth, timeout=5).json()["counts"]
        assert (counts["ready"], counts["leased"], counts["dead"]) == (0, 0, 0)
        k8s.wait_for(lambda: all(code is not None for code in workers.exits.values()), 60, "every worker to exit")
        assert all(code == 0 for code in workers.exits.values()), workers.exits
        # Up, then down: no flapping while the backlog lasted.
        turns = sum(1 for a, b, c in zip(replicas_seen, replicas_seen[1:], replicas_seen[2:]) if (b - a) * (c - b) < 0)
        assert turns <= 1, replicas_seen
        status = k8s.get_json("queue", "q", namespace=ns)["status"]
        assert status["workers"][0]["name"] == "pool"
        events = k8s.get_json("events", namespace=ns)["items"]
        activations = sum(1 for e in events if e.get("reason") in ("WorkersActivated", "WorkersDeactivated"))
        hpa = k8s.get_json("hpa", "q-pool", namespace=ns)
        return Outcome(
            total,
            max_replicas,
            first_worker,
            full_scale,
            to_zero,
            replicas_seen,
            int(hpa["spec"]["minReplicas"]),
            activations,
            status,
        )
    except BaseException:
        print(op.tail())
        raise
    finally:
        k8s.kubectl("delete", "apiservice", "v1beta1.external.metrics.k8s.io", check=False)
        workers.stop()
        servers.stop()
        op.stop()
        drop_finalizers(k8s, ns)
        for namespace in (ns, sys_ns):
            k8s.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        k8s.kubectl(
            "delete", "clusterrole,clusterrolebinding", "-l", f"app.kubernetes.io/instance={release}", check=False
        )
