"""Fixtures for tests that need a real Kubernetes control plane (``pytest.mark.k8s``).

The session fixture ``k8s`` reuses a control plane started by ``make k8s-up`` or brings one up
itself (building missing binaries first, see hack/k8s/README.md) and stops what it started at the
end of the session (``RANKQ_K8S_KEEP=1`` keeps it running for the next session).

Without a Go toolchain and without ``KUBEBUILDER_ASSETS`` the tests are skipped with one line that
says how to enable them; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK = REPO_ROOT / "hack" / "k8s"
T = TypeVar("T")

ENABLE_HINT = (
    "Kubernetes tests skipped: no Go toolchain and no KUBEBUILDER_ASSETS. Install Go >= 1.24 "
    "(the control plane is then built once into ~/.cache/rankq) or set KUBEBUILDER_ASSETS to a "
    "directory with etcd, kube-apiserver and kubectl; see hack/k8s/README.md"
)
SKIP_REASON = "no Go toolchain and no KUBEBUILDER_ASSETS (see hack/k8s/README.md)"
_skipped_for_lack_of_tools = False
_build_failure: list[str] = []  # set by pytest_collection_finish, reported by the k8s fixture


def pytest_configure(config: pytest.Config) -> None:
    if not any(line.split(":", 1)[0].strip() == "k8s" for line in config.getini("markers")):
        config.addinivalue_line("markers", "k8s: needs the local Kubernetes control plane (make k8s-up)")


def _missing_binaries() -> list[str]:
    names = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok", "helm")
    return [b for b in names if not _binary_available(b)]


def pytest_collection_finish(session: pytest.Session) -> None:
    """Build missing binaries before the first k8s test, outside any per-test timeout.

    The first build of Kubernetes takes ~15-20 min on two cores; later sessions find the cache.
    """
    if not any(item.get_closest_marker("k8s") for item in session.items):
        return
    if not shutil.which("go") or not _missing_binaries():
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"building {', '.join(_missing_binaries())} (hack/k8s/build.sh; the first build is slow)")
    timeout = float(os.environ.get("RANKQ_K8S_BUILD_TIMEOUT", 3600))
    try:
        proc = subprocess.run(
            ["bash", str(HACK / "build.sh")], capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT
        )
    except subprocess.TimeoutExpired:
        _build_failure.append(f"hack/k8s/build.sh did not finish within {timeout:.0f}s")
        return
    if proc.returncode != 0:
        _build_failure.append(f"hack/k8s/build.sh failed:\n{_tail(proc)}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _skipped_for_lack_of_tools:
        terminalreporter.write_line(ENABLE_HINT, yellow=True)


def _on_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (HACK / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key] = os.environ.get(key) or value
    return out


def state_dir() -> Path:
    return Path(os.environ.get("RANKQ_K8S_DIR") or REPO_ROOT / ".k8s")


def build_bin_dir() -> Path:
    cache = os.environ.get("RANKQ_K8S_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rankq"
    )
    return Path(cache) / f"k8s-{_versions()['KUBERNETES_VERSION']}" / "bin"


def _binary_available(name: str) -> bool:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    candidates = [Path(assets) / name] if assets else []
    candidates.append(build_bin_dir() / name)
    return any(os.access(p, os.X_OK) for p in candidates)


def can_run() -> bool:
    """True when a control plane can be had: built binaries, KUBEBUILDER_ASSETS, or Go to build."""
    if shutil.which("go"):
        return True
    return all(_binary_available(b) for b in ("etcd", "kube-apiserver", "kubectl"))


class KubectlError(AssertionError):
    pass


class Cluster:
    """A running control plane: kubeconfig, kubectl/helm paths, and small polling helpers."""

    Error = KubectlError

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.kubeconfig = directory / "kubeconfig"
        self.bin = directory / "bin"
        self.kubectl_path = self.bin / "kubectl"
        self.helm_path = self.bin / "helm"
        self.pki = directory / "pki"
        components = directory / "run" / "components"
        self.components = set(components.read_text().split()) if components.exists() else set()
        self.server = self._server_url()

    def _server_url(self) -> str:
        for line in self.kubeconfig.read_text().splitlines():
            line = line.strip()
            if line.startswith("server:"):
                return line.split(":", 1)[1].strip()
        raise RuntimeError(f"no server in {self.kubeconfig}")

    @property
    def env(self) -> dict[str, str]:
        """Environment for subprocesses (e.g. an operator) that should talk to this cluster."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = f"{self.bin}{os.pathsep}{env.get('PATH', '')}"
        return env

    def require(self, *components: str) -> None:
        """Skip (or on CI fail) a test that needs components (running ones, or binaries such as
        helm in .k8s/bin) this control plane lacks."""
        missing = [c for c in components if c not in self.components and not (self.bin / c).exists()]
        if missing:
            msg = f"control plane runs without {', '.join(missing)} (API-only KUBEBUILDER_ASSETS, no Go)"
            if _on_ci():
                pytest.fail(msg)
            pytest.skip(msg)

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 30,
        kubeconfig: Path | None = None,
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            str(self.kubectl_path),
            f"--kubeconfig={kubeconfig or self.kubeconfig}",
            f"--request-timeout={max(1, int(timeout))}s",
            *args,
        ]
        proc = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout + 5)
        if check and proc.returncode != 0:
            raise KubectlError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc

    def apply(self, manifest: str | dict[str, Any] | list[dict[str, Any]], namespace: str | None = None) -> None:
        if not isinstance(manifest, str):
            items = manifest if isinstance(manifest, list) else [manifest]
            manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": items})
        ns = [f"--namespace={namespace}"] if namespace else []
        self.kubectl("apply", *ns, "-f", "-", input=manifest)

    def get_json(self, *args: str, namespace: str | None = None) -> Any:
        ns = [f"--namespace={namespace}"] if namespace else []
        return json.loads(self.kubectl("get", *ns, *args, "-o", "json").stdout)

    @staticmethod
    def wait_for(
        probe: Callable[[], T | None],
        timeout: float,
        what: str,
        interval: float = 0.5,
    ) -> T:
        """Poll ``probe`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while True:
            try:
                last = probe()
            except KubectlError as exc:  # transient API errors count as "not yet"
                last = exc
            else:
                if last:
                    return last
            if time.monotonic() >= deadline:
                pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; last observed: {last!r}")
            time.sleep(interval)


def _run(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"")[-3000:] if isinstance(exc.stdout, bytes) else (exc.stdout or "")[-3000:]
        pytest.fail(f"{' '.join(cmd)} did not finish within {timeout:.0f}s:\n{out}")


def _tail(proc: subprocess.CompletedProcess[str]) -> str:
    return ((proc.stdout or "") + (proc.stderr or ""))[-4000:]


def _real_node_asked() -> bool:
    return os.environ.get("RANKQ_K8S_REAL_NODE", "") in ("1", "auto")


@pytest.fixture(scope="session")
def k8s() -> Iterator[Cluster]:
    """The local control plane, reused if `make k8s-up` already runs it, else started here."""
    if not can_run():
        if _on_ci():
            pytest.fail(ENABLE_HINT.replace("skipped", "cannot run on CI"))
        global _skipped_for_lack_of_tools
        _skipped_for_lack_of_tools = True
        pytest.skip(SKIP_REASON)

    if _build_failure:
        pytest.fail(_build_failure[0])

    directory = state_dir()
    status = _run(["bash", str(HACK / "status.sh")], timeout=60)
    running = status.returncode == 0 and (directory / "run" / "components").exists()
    started = False
    if not running:
        # Missing binaries were built in pytest_collection_finish; up.sh builds any still missing.
        # A real node (RANKQ_K8S_REAL_NODE, docs/real-node.md) adds containerd, image imports
        # and the kubelet's registration to the start, and its teardown to the stop.
        up = _run(["bash", str(HACK / "up.sh")], timeout=600 if _real_node_asked() else 300)
        if up.returncode != 0:
            pytest.fail(f"make k8s-up failed:\n{_tail(up)}")
        started = True

    cluster = Cluster(directory)
    try:
        yield cluster
    finally:
        if started and os.environ.get("RANKQ_K8S_KEEP", "") not in ("1", "true", "yes"):
            _run(["bash", str(HACK / "down.sh")], timeout=300 if _real_node_asked() else 120)


@pytest.fixture
def namespace(k8s: Cluster) -> Iterator[str]:
    """A fresh namespace per test, deleted (without waiting) afterwards."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    k8s.kubectl("create", "namespace", name)
    if "kube-controller-manager" in k8s.components:
        # Pods are only admitted once the ServiceAccount controller created "default" here.
        k8s.wait_for(
            lambda: k8s.kubectl("get", "serviceaccount", "default", "-n", name, check=False).returncode == 0,
            timeout=30,
            what=f"ServiceAccount default in namespace {name}",
        )
    try:
        yield name
    finally:
        k8s.kubectl("delete", "namespace", name, "--wait=false", check=False)
