"""Run real `rankq server` processes on loopback for tests: start, wait until ready, kill -9, restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx


def free_port() -> int:
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
    def __init__(self, data_dir: str, grpc: bool = False, extra: list[str] | None = None) -> None:
        self.data_dir = data_dir
        self.http_port = free_port()
        self.grpc_port = free_port() if grpc else 0
        self.raft_port = free_port()
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(data_dir, "server.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self, timeout: float = 20.0) -> "ServerProcess":
        os.makedirs(self.data_dir, exist_ok=True)
        cmd = [
            sys.executable, "-m", "rankq.cli", "server", "--data-dir", self.data_dir, "--host", "127.0.0.1",
            "--http-port", str(self.http_port), "--grpc-port", str(self.grpc_port),
            "--raft-port", str(self.raft_port), *self.extra,
        ]
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 20.0) -> None:
        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            return httpx.get(self.url + "/readyz", timeout=1).status_code == 200

        wait_for(ready, timeout, "server /readyz")

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
