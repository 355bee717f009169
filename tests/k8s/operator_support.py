"""Helpers for the operator's control-plane tests.

- `install_chart()` installs helm/rankq and returns a kubeconfig holding a token of the chart's
  ServiceAccount, so the operator under test has exactly the chart's RBAC.
- `OperatorProcess` runs `rankq operator` with that kubeconfig.
- `StandIns` plays kubelet for kwok's pods: for each pod of a Queue it runs a real `rankq server`
  with the pod's own args and env (ConfigMap, Secret and field references resolved, `$(VAR)`
  expanded), with the pods' DNS names mapped to loopback ports. It writes the endpoints file the
  operator reads, runs the preStop hook before stopping a deleted pod's process, and restarts the
  process when the StatefulSet recreates the pod.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml
from serverproc import free_port  # noqa: E402  (tests/ is on sys.path)

REPO = Path(__file__).resolve().parents[2]
RANKQ = [sys.executable, "-c", "from rankq.cli import main; main()"]


def install_chart(k8s, namespace: str, release: str, tmp: Path) -> Path:
    """helm install into `namespace`; returns a kubeconfig with the chart ServiceAccount's token."""
    k8s.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds" / "queue.yaml"))
    proc = subprocess.run(
        [
            str(k8s.helm_path),
            "install",
            release,
            str(REPO / "helm" / "rankq"),
            "--namespace",
            namespace,
            "--kubeconfig",
            str(k8s.kubeconfig),
            "--set",
            "replicas=0",
            "--wait=false",
            # The operator runs outside the cluster here: an APIService with no backend would break
            # discovery for everything else on the shared control plane.
            "--set",
            "externalMetrics.enabled=false",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    sa = f"{release}-rankq" if "rankq" not in release else release
    token = k8s.kubectl("create", "token", sa, "-n", namespace, "--duration=2h").stdout.strip()
    admin = yaml.safe_load(k8s.kubeconfig.read_text())
    cluster = admin["clusters"][0]["cluster"]
    if "certificate-authority" in cluster and not os.path.isabs(cluster["certificate-authority"]):
        cluster["certificate-authority"] = str((k8s.kubeconfig.parent / cluster["certificate-authority"]).resolve())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "c", "user": "operator"}}],
        "current-context": "operator",
    }
    path = tmp / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


class OperatorProcess:
    def __init__(
        self, kubeconfig: Path, lease_namespace: str, endpoints_file: Path, log: Path, extra: list[str] | None = None
    ) -> None:
        self.kubeconfig, self.lease_namespace, self.endpoints_file, self.log = (
            kubeconfig,
            lease_namespace,
            endpoints_file,
            log,
        )
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None

    def start(self) -> OperatorProcess:
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig))
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.proc = subprocess.Popen(
            [
                *RANKQ,
                "operator",
                "--lease-namespace",
                self.lease_namespace,
                "--endpoints-file",
                str(self.endpoints_file),
                *self.extra,
            ],
            stdout=open(self.log, "ab"),
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
        atexit.register(self.kill)  # never leave an operator acting after the test run
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class _Member:
    def __init__(self, uid: str, proc: subprocess.Popen, env: dict[str, str] | None = None) -> None:
        self.uid, self.proc, self.env = uid, proc, env


class _KubeletLoop:
    """Plays kubelet: `sync()` every 0.2 s on a thread of its own until `stop()`."""

    label = "stand-ins"
    stopping: threading.Event
    thread: threading.Thread | None

    def sync(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def start(self):
        atexit.register(self.stop)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.sync()
            except Exception as err:  # noqa: BLE001 - keep playing kubelet through API hiccups
                print(f"{self.label}: {err}", file=sys.stderr)
            self.stopping.wait(0.2)


class StandIns(_KubeletLoop):
    """Real server processes standing in for the pods kwok only pretends to run."""

    def __init__(self, kubeconfig: Path, namespace: str, workdir: Path, endpoints_file: Path) -> None:
        from kubernetes import client, config

        self.core = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        self.namespace = namespace
        self.workdir = workdir
        self.endpoints_file = endpoints_file
        self.ports: dict[str, dict[str, int]] = {}
        self.members: dict[str, _Member] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self.busy: set[str] = set()
        self.all_procs: list[subprocess.Popen] = []

    # -- addresses --

    def port_of(self, pod: str) -> dict[str, int]:
        with self.lock:
            if pod not in self.ports:
                self.ports[pod] = {"http": free_port(), "raft": free_port()}
                self._write_endpoints()
            return self.ports[pod]

    def _write_endpoints(self) -> None:
        data = {
            f"{self.namespace}/{pod}": {"http": f"http://127.0.0.1:{p['http']}", "raft": f"127.0.0.1:{p['raft']}"}
            for pod, p in self.ports.items()
        }
        existing = {}
        if self.endpoints_file.exists():
            try:
                existing = json.loads(self.endpoints_file.read_text())
            except ValueError:
                existing = {}
        existing.update(data)
        tmp = self.endpoints_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(existing))
        tmp.replace(self.endpoints_file)

    def reserve(self, queue: str, count: int = 7) -> StandIns:
        """Give every pod a Queue may ever have its loopback ports up front, as DNS names exist
        for them before the pods do."""
        for i in range(count):
            self.port_of(f"{queue}-{i}")
        return self

    def url(self, pod: str) -> str:
        return f"http://127.0.0.1:{self.port_of(pod)['http']}"

    # -- pod spec -> command line --

    def _value_from(self, pod: Any, ref: Any) -> str:
        if ref.field_ref:
            return {"metadata.name": pod.metadata.name, "metadata.namespace": pod.metadata.namespace}[
                ref.field_ref.field_path
            ]
        if ref.config_map_key_ref:
            cm = self.core.read_namespaced_config_map(ref.config_map_key_ref.name, self.namespace)
            return cm.data[ref.config_map_key_ref.key]
        if ref.secret_key_ref:
            secret = self.core.read_namespaced_secret(ref.secret_key_ref.name, self.namespace)
            return base64.b64decode(secret.data[ref.secret_key_ref.key]).decode()
        raise ValueError(f"unsupported valueFrom {ref}")

    def command_for(self, pod: Any) -> tuple[list[str], dict[str, str]]:
        container = pod.spec.containers[0]
        env: dict[str, str] = {}
        for e in container.env or []:
            env[e.name] = e.value if e.value is not None else self._value_from(pod, e.value_from)
        args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in container.args]
        mine = self.port_of(pod.metadata.name)
        out = []
        for arg in args:
            key, _, value = arg.partition("=")
            if key == "--host":
                value = "127.0.0.1"
            elif key == "--http-port":
                value = str(mine["http"])
            elif key == "--grpc-port":
                value = "0"
            elif key == "--raft-port":
                value = str(mine["raft"])
            elif key == "--raft-host":
                value = "127.0.0.1"
            elif key == "--data-dir":
                value = str(self.workdir / pod.metadata.name)
            elif key == "--peers":
                peers = []
                for entry in filter(None, value.split(",")):
                    pid = entry.split("=", 1)[0]
                    peers.append(f"{pid}=127.0.0.1:{self.port_of(pid)['raft']}")
                value = ",".join(peers)
            out.append(f"{key}={value}" if _ else arg)
        proc_env = dict(os.environ)
        proc_env.update({k: v for k, v in env.items() if k.startswith("RANKQ_")})
        return [*RANKQ, *out], proc_env

    # -- lifecycle --

    def sync(self) -> None:
        pods = {
            p.metadata.name: p
            for p in self.core.list_namespaced_pod(self.namespace, label_selector="app.kubernetes.io/name=rankq").items
        }
        for name, member in list(self.members.items()):
            pod = pods.get(name)
            if name in self.busy:
                continue
            if pod is None or pod.metadata.uid != member.uid or pod.metadata.deletion_timestamp is not None:
                self.busy.add(name)
                threading.Thread(target=self._terminate, args=(name, member), daemon=True).start()
        for name, pod in pods.items():
            if name in self.members or name in self.busy or pod.metadata.deletion_timestamp is not None:
                continue
            cmd, env = self.command_for(pod)
            (self.workdir / name).mkdir(parents=True, exist_ok=True)
            log = open(self.workdir / f"{name}.log", "ab")
            proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
            self.members[name] = _Member(pod.metadata.uid, proc, env)
            self.all_procs.append(proc)

    def _terminate(self, name: str, member: _Member) -> None:
        """What the kubelet does: the preStop hook, then SIGTERM, then SIGKILL after the grace period."""
        try:
            if member.proc.poll() is None:
                subprocess.run(
                    [*RANKQ, "node", "drain", f"--url={self.url(name)}", "--timeout=30"],
                    env=member.env,
                    capture_output=True,
                    timeout=40,
                    cwd=REPO,
                )
                member.proc.terminate()
                try:
                    member.proc.wait(15)
                except subprocess.TimeoutExpired:
                    member.proc.kill()
                    member.proc.wait(5)
        finally:
            with self.lock:
                if self.members.get(name) is member:
                    del self.members[name]
            self.busy.discard(name)

    def kill9(self, name: str) -> None:
        member = self.members.get(name)
        if member and member.proc.poll() is None:
            member.proc.kill()
            member.proc.wait(5)

    def stop(self) -> None:
        self.stopping.set()
        if self.thread:
            self.thread.join(5)
        for proc in self.all_procs:  # including any a preStop hook is still draining
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        self.members.clear()


def drop_finalizers(k8s, namespace: str) -> None:
    """After the operator stopped: release its finalizers so the namespace can go."""
    proc = k8s.kubectl("get", "queues", "-n", namespace, "-o", "name", check=False)
    for name in proc.stdout.split():
        k8s.kubectl(
            "patch", name, "-n", namespace, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False
        )


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cleanup_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class WorkerStandIns(_KubeletLoop):
    """Real `rankq worker` processes standing in for kwok's worker pods: started when a pod appears
    (its args, with the leader Service's URL replaced by the group's stand-in URLs), SIGTERM when it
    is deleted and SIGKILL after its grace period, as the kubelet does. Exit codes are kept."""

    label = "worker stand-ins"

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        servers: StandIns,
        workdir: Path,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        from kubernetes import client, config

        self.core = client.CoreV1Api(config.new_client_from_config(str(kubeconfig)))
        self.namespace = namespace
        self.servers = servers
        self.workdir = workdir
        self.extra_env = extra_env or {}
        self.procs: dict[str, tuple[str, subprocess.Popen, int]] = {}  # pod -> (uid, process, grace)
        self.exits: dict[str, int | None] = {}
        self.started: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def running(self) -> int:
        with self.lock:
            return sum(1 for _, p, _ in self.procs.values() if p.poll() is None)

    def sync(self) -> None:
        pods = {
            p.metadata.name: p
            for p in self.core.list_namespaced_pod(
                self.namespace, label_selector="app.kubernetes.io/name=rankq-worker"
            ).items
        }
        with self.lock:
            for name, (uid, proc, grace) in list(self.procs.items()):
                pod = pods.get(name)
                if pod is None or pod.metadata.uid != uid or pod.metadata.deletion_timestamp is not None:
                    del self.procs[name]
                    threading.Thread(target=self._terminate, args=(name, proc, grace), daemon=True).start()
            for name, pod in pods.items():
                if name in self.procs or name in self.exits or pod.metadata.deletion_timestamp is not None:
                    continue
                container = pod.spec.containers[0]
                args = list(container.args)
                urls = ",".join(self.servers.url(m) for m in sorted(self.servers.ports))
                for i, _arg in enumerate(args):
                    if args[i - 1] == "--url" and i > 0:
                        args[i] = urls
                    elif args[i - 1] == "--metrics-port" and i > 0:
                        args[i] = str(free_port())
                env = dict(os.environ, **self.extra_env)
                for e in container.env or []:
                    env[e.name] = e.value if e.value is not None else self.servers._value_from(pod, e.value_from)
                env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "k8s"), env.get("PYTHONPATH", "")])
                log = open(self.workdir / f"{name}.log", "ab")
                proc = subprocess.Popen([*RANKQ, *args], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
                self.procs[name] = (pod.metadata.uid, proc, int(pod.spec.termination_grace_period_seconds or 30))
                self.exits[name] = None
                self.started.append((time.monotonic(), name))

    def _terminate(self, name: str, proc: subprocess.Popen, grace: int) -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        with self.lock:
            self.exits[name] = proc.returncode

    def stop(self) -> None:
        self.stopping.set()
        if self.thread:
            self.thread.join(5)
        with self.lock:
            procs = list(self.procs.items())
            self.procs.clear()
        for name, (_, proc, grace) in procs:
            self._terminate(name, proc, min(grace, 20))
