"""Smoke tests of the local control plane: what the operator will rely on must really happen.

Every wait polls a condition with a deadline (``Cluster.wait_for``); kubectl calls carry their own
timeouts, so no test can hang.
"""

from __future__ import annotations

import base64
import http.server
import json
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from k8s_support import Cluster

pytestmark = pytest.mark.k8s

IMAGE = "registry.k8s.io/pause:3.10"  # never pulled: kwok fakes the container runtime


def _pods(k8s: Cluster, namespace: str, selector: str) -> list[dict[str, Any]]:
    return k8s.get_json("pods", "-l", selector, namespace=namespace)["items"]


def _is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _running_ready(pods: list[dict[str, Any]]) -> bool:
    return all(p["status"].get("phase") == "Running" and _is_ready(p) and p["status"].get("podIP") for p in pods)


def _deployment(name: str, replicas: int, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "main", "image": IMAGE, "ports": [{"containerPort": 8080}]}]},
            },
        },
    }


CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.smoke.rankq.test"},
    "spec": {
        "group": "smoke.rankq.test",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            },
                            "status": {"type": "object", "properties": {"phase": {"type": "string"}}},
                        },
                    }
                },
            }
        ],
    },
}


def test_crd_and_custom_object_apply(k8s: Cluster, namespace: str) -> None:
    k8s.kubectl("apply", "-f", "-", input=json.dumps(CRD))
    try:
        k8s.kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.rankq.test", "--timeout=30s", timeout=40)
        widget = {
            "apiVersion": "smoke.rankq.test/v1",
            "kind": "Widget",
            "metadata": {"name": "w1"},
            "spec": {"size": 3},
        }
        # Discovery of a just-established CRD can lag a moment behind the condition.
        k8s.wait_for(
            lambda: (
                k8s.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(widget), check=False).returncode == 0
            ),
            timeout=30,
            what="kubectl apply of a Widget",
        )
        got = k8s.get_json("widget", "w1", namespace=namespace)
        assert got["spec"] == {"size": 3}

        # The structural schema is enforced by the real apiserver.
        bad = {**widget, "metadata": {"name": "w2"}, "spec": {"size": 0}}
        proc = k8s.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(bad), check=False)
        assert proc.returncode != 0
        assert "spec.size" in proc.stderr

        # Server-side apply and the status subresource work on custom objects.
        k8s.kubectl(
            "patch",
            "widget",
            "w1",
            "-n",
            namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"phase": "Ready"}}),
        )
        assert k8s.get_json("widget", "w1", namespace=namespace)["status"] == {"phase": "Ready"}
    finally:
        k8s.kubectl("delete", "crd", "widgets.smoke.rankq.test", "--wait=false", check=False)


def test_deployment_pods_reach_running_on_fake_nodes(k8s: Cluster, namespace: str) -> None:
    k8s.require("kube-controller-manager", "kube-scheduler", "kwok")
    k8s.apply(_deployment("web", 3, {"app": "web"}), namespace=namespace)

    def three_running() -> list[dict[str, Any]] | None:
        pods = _pods(k8s, namespace, "app=web")
        return pods if len(pods) == 3 and _running_ready(pods) else None

    pods = k8s.wait_for(three_running, timeout=60, what="3 Running and Ready pods of Deployment web")
    assert all(p["spec"]["nodeName"].startswith("kwok-node-") for p in pods)
    assert len({p["status"]["podIP"] for p in pods}) == 3
    k8s.wait_for(
        lambda: k8s.get_json("deployment", "web", namespace=namespace)["status"].get("availableReplicas") == 3,
        timeout=30,
        what="Deployment web to report 3 available replicas",
    )


def test_statefulset_creates_ordered_pods_with_stable_names(k8s: Cluster, namespace: str) -> None:
    k8s.require("kube-controller-manager", "kube-scheduler", "kwok")
    labels = {"app": "db"}
    k8s.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "db"},
                "spec": {"clusterIP": "None", "selector": labels, "ports": [{"port": 8080}]},
            },
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {"name": "db"},
                "spec": {
                    "serviceName": "db",
                    "replicas": 3,
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "main", "image": IMAGE}]},
                    },
                },
            },
        ],
        namespace=namespace,
    )

    # OrderedReady: whenever db-k exists, db-0..db-(k-1) are already Running and Ready.
    violations: list[str] = []

    def all_three() -> list[dict[str, Any]] | None:
        pods = {p["metadata"]["name"]: p for p in _pods(k8s, namespace, "app=db")}
        for name in pods:
            ordinal = int(name.rsplit("-", 1)[1])
            for lower in range(ordinal):
                prev = pods.get(f"db-{lower}")
                if prev is None or not _is_ready(prev):
                    violations.append(f"{name} exists while db-{lower} is not ready")
        if sorted(pods) == ["db-0", "db-1", "db-2"] and _running_ready(list(pods.values())):
            return list(pods.values())
        return None

    pods = k8s.wait_for(all_three, timeout=90, what="StatefulSet db pods db-0, db-1, db-2 Running", interval=0.2)
    assert not violations, violations
    created = {p["metadata"]["name"]: p["metadata"]["creationTimestamp"] for p in pods}
    assert created["db-0"] <= created["db-1"] <= created["db-2"]
    assert all(p["spec"]["hostname"] == p["metadata"]["name"] and p["spec"]["subdomain"] == "db" for p in pods)

    # A deleted member comes back under the same name (new identity object, same network identity).
    old_uid = next(p["metadata"]["uid"] for p in pods if p["metadata"]["name"] == "db-1")
    k8s.kubectl("delete", "pod", "db-1", "-n", namespace, "--wait=false")

    def replaced() -> bool:
        pod = k8s.get_json("pods", "db-1", namespace=namespace) if _exists(k8s, namespace, "pod/db-1") else None
        return bool(pod and pod["metadata"]["uid"] != old_uid and _running_ready([pod]))

    k8s.wait_for(replaced, timeout=60, what="db-1 to be recreated under the same name")


def _exists(k8s: Cluster, namespace: str, ref: str) -> bool:
    return k8s.kubectl("get", ref, "-n", namespace, "-o", "name", check=False).returncode == 0


def test_service_gets_endpointslice_with_ready_pods(k8s: Cluster, namespace: str) -> None:
    k8s.require("kube-controller-manager", "kube-scheduler", "kwok")
    labels = {"app": "api"}
    k8s.apply(
        [
            _deployment("api", 2, labels),
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "api"},
                "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
            },
        ],
        namespace=namespace,
    )

    def slice_matches(replicas: int) -> bool:
        pods = _pods(k8s, namespace, "app=api")
        if len(pods) != replicas or not _running_ready(pods):
            return False
        slices = k8s.get_json("endpointslices", "-l", "kubernetes.io/service-name=api", namespace=namespace)["items"]
        ready = {
            address
            for s in slices
            for e in s.get("endpoints") or []
            if e.get("conditions", {}).get("ready")
            for address in e["addresses"]
        }
        ports = {(p.get("name"), p.get("port")) for s in slices for p in s.get("ports") or []}
        return ready == {p["status"]["podIP"] for p in pods} and ports == {("http", 8080)}

    k8s.wait_for(lambda: slice_matches(2), timeout=60, what="EndpointSlice of Service api listing 2 ready pods")
    assert k8s.get_json("service", "api", namespace=namespace)["spec"]["clusterIP"].startswith("10.96.")

    k8s.kubectl("scale", "deployment/api", "--replicas=3", "-n", namespace)
    k8s.wait_for(lambda: slice_matches(3), timeout=60, what="EndpointSlice of Service api listing 3 ready pods")


def test_rbac_denies_serviceaccount_without_permissions(k8s: Cluster, namespace: str, tmp_path: Path) -> None:
    k8s.kubectl("create", "serviceaccount", "nobody", "-n", namespace)
    token = k8s.kubectl("create", "token", "nobody", "-n", namespace, "--duration=10m").stdout.strip()
    sa_kubeconfig = tmp_path / "sa.kubeconfig"
    ca = base64.b64encode((k8s.pki / "ca.crt").read_bytes()).decode()
    sa_kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": k8s.server, "certificate-authority-data": ca}}],
                "users": [{"name": "nobody", "user": {"token": token}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "nobody", "namespace": namespace}}],
                "current-context": "c",
            }
        )
    )

    # The signed token authenticates: the API knows who is asking...
    whoami = json.loads(k8s.kubectl("auth", "whoami", "-o", "json", kubeconfig=sa_kubeconfig).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:nobody"
    # ...and RBAC refuses it everything it was not granted.
    denied = k8s.kubectl("get", "pods", kubeconfig=sa_kubeconfig, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr
    denied = k8s.kubectl("create", "configmap", "x", kubeconfig=sa_kubeconfig, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower(), denied.stderr

    # A Role and RoleBinding grant exactly what they say.
    k8s.kubectl("create", "role", "pod-reader", "--verb=get,list", "--resource=pods", "-n", namespace)
    k8s.kubectl(
        "create",
        "rolebinding",
        "nobody-reads-pods",
        "--role=pod-reader",
        f"--serviceaccount={namespace}:nobody",
        "-n",
        namespace,
    )
    k8s.wait_for(
        lambda: k8s.kubectl("get", "pods", kubeconfig=sa_kubeconfig, check=False).returncode == 0,
        timeout=30,
        what="the RoleBinding to allow listing pods",
    )
    still_denied = k8s.kubectl("get", "configmaps", kubeconfig=sa_kubeconfig, check=False)
    assert still_denied.returncode != 0 and "forbidden" in still_denied.stderr.lower()


def test_hpa_controller_scales_deployment(k8s: Cluster, namespace: str) -> None:
    """The HPA controller runs: below minReplicas it scales up without needing any metrics."""
    k8s.require("kube-controller-manager", "kube-scheduler", "kwok")
    k8s.apply(_deployment("worker", 1, {"app": "worker"}), namespace=namespace)
    k8s.apply(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "worker"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
                "minReplicas": 3,
                "maxReplicas": 5,
                "metrics": [
                    {
                        "type": "External",
                        "external": {
                            "metric": {"name": "rankq_queue_depth"},
                            "target": {"type": "AverageValue", "averageValue": "10"},
                        },
                    }
                ],
            },
        },
        namespace=namespace,
    )

    def scaled() -> bool:
        pods = _pods(k8s, namespace, "app=worker")
        return len(pods) == 3 and _running_ready(pods)

    k8s.wait_for(scaled, timeout=90, what="the HPA to scale Deployment worker to minReplicas=3")
    spec = k8s.get_json("deployment", "worker", namespace=namespace)["spec"]
    assert spec["replicas"] == 3


# --- aggregation layer --------------------------------------------------------------------------

GROUP = "aggregation-smoke.rankq.test"
DISCOVERY = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": f"{GROUP}/v1alpha1",
    "resources": [{"name": "probes", "singularName": "probe", "namespaced": True, "kind": "Probe", "verbs": ["get"]}],
}


class _AggregatedHandler(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, Any]] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        peer = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        type(self).seen.append(
            {"path": self.path, "user": self.headers.get("X-Remote-User"), "cert_cn": subject.get("commonName")}
        )
        if self.path.split("?")[0] == f"/apis/{GROUP}/v1alpha1":
            body = json.dumps(DISCOVERY).encode()
            self.send_response(200)
        else:
            body = json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404}).encode()
            self.send_response(404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def aggregated_server(
    k8s: Cluster, namespace: str, tmp_path: Path
) -> Iterator[tuple[int, str, type[_AggregatedHandler]]]:
    """A stdlib HTTPS server on 127.0.0.1 that only accepts the apiserver's front-proxy client cert."""
    service_host = f"smoke-api.{namespace}.svc"
    key, crt = tmp_path / "tls.key", tmp_path / "tls.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(crt),
            "-days",
            "1",
            "-subj",
            f"/CN={service_host}",
            "-addext",
            f"subjectAltName=DNS:{service_host}",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    ctx.load_verify_locations(k8s.pki / "front-proxy-ca.crt")
    ctx.verify_mode = ssl.CERT_REQUIRED
    handler = type("Handler", (_AggregatedHandler,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], base64.b64encode(crt.read_bytes()).decode(), handler
    finally:
        server.shutdown()
        server.server_close()


def test_aggregation_layer_proxies_to_local_api_server(
    k8s: Cluster, namespace: str, aggregated_server: tuple[int, str, type[_AggregatedHandler]]
) -> None:
    port, ca_bundle, handler = aggregated_server
    apiservice = f"v1alpha1.{GROUP}"
    # An ExternalName Service lets the aggregator reach a server on loopback (no kube-proxy here).
    k8s.apply(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "smoke-api"},
            "spec": {"type": "ExternalName", "externalName": "127.0.0.1"},
        },
        namespace=namespace,
    )
    k8s.apply(
        {
            "apiVersion": "apiregistration.k8s.io/v1",
            "kind": "APIService",
            "metadata": {"name": apiservice},
            "spec": {
                "group": GROUP,
                "version": "v1alpha1",
                "service": {"name": "smoke-api", "namespace": namespace, "port": port},
                "caBundle": ca_bundle,
                "groupPriorityMinimum": 100,
                "versionPriority": 100,
            },
        }
    )
    try:

        def available() -> bool:
            conditions = k8s.get_json("apiservice", apiservice)["status"].get("conditions", [])
            return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)

        k8s.wait_for(available, timeout=60, what=f"APIService {apiservice} to become Available")
        got = json.loads(k8s.kubectl("get", "--raw", f"/apis/{GROUP}/v1alpha1").stdout)
        assert got["resources"][0]["kind"] == "Probe"
        proxied = [s for s in handler.seen if s["user"] == "rankq-admin"]
        assert proxied, handler.seen
        assert proxied[-1]["cert_cn"] == "front-proxy-client"
    finally:
        k8s.kubectl("delete", "apiservice", apiservice, "--wait=false", check=False)


def test_helm_installs_a_chart(k8s: Cluster, namespace: str, tmp_path: Path) -> None:
    """The helm in .k8s/bin talks to this cluster (the operator chart is installed with it)."""
    k8s.require("helm")
    chart = tmp_path / "smoke"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: smoke\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-cm\n"
        "data:\n  greeting: {{ .Values.greeting | quote }}\n"
    )
    cmd = [
        str(k8s.helm_path),
        "install",
        "smoke",
        str(chart),
        "--namespace",
        namespace,
        "--set",
        "greeting=hi",
        "--wait",
        "--timeout",
        "60s",
    ]
    proc = subprocess.run(cmd, env=k8s.env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    assert k8s.get_json("configmap", "smoke-cm", namespace=namespace)["data"] == {"greeting": "hi"}
    listed = subprocess.run(
        [str(k8s.helm_path), "list", "-n", namespace, "-o", "json"],
        env=k8s.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert [r["status"] for r in json.loads(listed.stdout)] == ["deployed"]


def test_kubectl_errors_surface(k8s: Cluster) -> None:
    """The helper reports API errors instead of hiding them (guards every test above)."""
    with pytest.raises(k8s.Error, match="NotFound|not found"):
        k8s.kubectl("get", "namespace", "does-not-exist-rankq")
