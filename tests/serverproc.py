"""Run real `rankq server` processes on loopback for tests: start, wait until ready, kill -9, restart."""

from __future__ import annotations

import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import time

import httpx

PORTS_FROM = 20_000  # above the local control plane's fixed ports (hack/k8s/lib.sh)


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as fh:
            return int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()  # ports this process has given out: each at most once


def free_port() -> int:
    """A port nothing listens on now, picked below the kernel's ephemeral range: a port taken from
    that range can become the local end of any outgoing connection on the machine before the
    server binds it (seen as "address already in use" under load). Never one handed out before in
    this run: a group's ports are picked before any of its servers binds, so a random pick could
    repeat one of them (seen: a member's Raft port taken by another member of the same test)."""
    low = _ephemeral_low()
    if low - PORTS_FROM > 1000:
        for _ in range(100):
            port = random.randrange(PORTS_FROM, low)
            if port in _handed_out:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("", port))
                except OSError:
                    continue
            _handed_out.add(port)
            return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll `predicate` until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_err = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as err:  # the condition may not be checkable yet
            last_err = err
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what} (last error: {last_err})")


class ServerProcess:
    def __init__(
        self, data_dir: str, grpc: bool = False, extra: list[str] | None = None, ca: str | None = None
    ) -> None:
        self.data_dir = data_dir
        self.ca = ca  # set when the server serves TLS: the CA that signed its certificate
        self.http_port = free_port()
        self.grpc_port = free_port() if grpc else 0
        self.raft_port = free_port()
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(data_dir, "server.log")

    @property
    def url(self) -> str:
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.start_async()
        self.wait_ready(timeout)
        return self

    def start_async(self) -> ServerProcess:
        """Launch the process without waiting (a group member is ready only once a leader exists)."""
        os.makedirs(self.data_dir, exist_ok=True)
        cmd = [
            sys.executable,
            "-m",
            "rankq.cli",
            "server",
            "--data-dir",
            self.data_dir,
            "--host",
            "127.0.0.1",
            "--http-port",
            str(self.http_port),
            "--grpc-port",
            str(self.grpc_port),
            "--raft-port",
            str(self.raft_port),
            *self.extra,
        ]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        verify = ssl.create_default_context(cafile=self.ca) if self.ca else True

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            return httpx.get(self.url + "/readyz", timeout=1, verify=verify).status_code == 200

        wait_for(ready, timeout, "server /readyz")

    def signal(self, sig) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
        if getattr(self, "_log", None):
            self._log.close()
        return self.proc.returncode if self.proc else None

    def logs(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()


class Cluster:
    """A Raft group of real server processes on loopback."""

    def __init__(self, root: str, size: int, password: str = "test-secret", grpc: bool = False) -> None:
        self.root = root
        self.password = password
        self.nodes: list[ServerProcess] = []
        for i in range(size):
            self.nodes.append(self._new_node(i, grpc))
        self._wire()

    def _new_node(self, i: int, grpc: bool = False) -> ServerProcess:
        node = ServerProcess(os.path.join(self.root, f"n{i}"), grpc=grpc)
        node.node_id = f"n{i}"
        os.makedirs(node.data_dir, exist_ok=True)
        secret = os.path.join(self.root, "raft-secret")
        if not os.path.exists(secret):
            with open(secret, "w") as fh:
                fh.write(self.password)
        node.secret_file = secret
        return node

    @property
    def raft_addresses(self) -> list[str]:
        return [f"127.0.0.1:{n.raft_port}" for n in self.nodes]

    def _wire(self, members: list[ServerProcess] | None = None) -> None:
        members = members or self.nodes
        peers = ",".join(f"{n.node_id}=127.0.0.1:{n.raft_port}" for n in members)
        for n in members:
            n.extra = ["--node-id", n.node_id, "--peers", peers, "--raft-password-file", n.secret_file]

    def start(self, timeout: float = 30.0) -> Cluster:
        for n in self.nodes:
            n.start_async()
        for n in self.nodes:
            n.wait_ready(timeout)
        return self

    def add_node(self) -> ServerProcess:
        """Start one more process whose peer list is the current group plus itself."""
        node = self._new_node(len(self.nodes))
        self._wire(self.running() + [node])
        self.nodes.append(node)
        node.start_async()
        return node

    def running(self) -> list[ServerProcess]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def status(self, node: ServerProcess | None = None) -> dict:
        node = node or self.running()[0]
        return httpx.get(node.url + "/api/v1/cluster", timeout=2).json()

    def leader(self, timeout: float = 10.0, among: list[ServerProcess] | None = None) -> ServerProcess:
        """The node that every running node agrees leads."""
        nodes = among or self.running()

        def agreed():
            seen = set()
            answered = 0
            for n in nodes:
                try:
                    seen.add(self.status(n)["leader_address"])
                    answered += 1
                except httpx.HTTPError:
                    continue  # still starting, or going away
            if answered * 2 > len(nodes) and len(seen) == 1 and None not in seen:
                addr = seen.pop()
                return next((n for n in nodes if f"127.0.0.1:{n.raft_port}" == addr), None)
            return None

        return wait_for(agreed, timeout, "an agreed leader")

    def followers(self) -> list[ServerProcess]:
        lead = self.leader()
        return [n for n in self.running() if n is not lead]

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
