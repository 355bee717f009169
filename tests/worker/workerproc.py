"""Real `rankq worker` processes for tests, and the journal their handlers write."""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys

import httpx
from serverproc import free_port, wait_for

HERE = os.path.dirname(os.path.abspath(__file__))


class WorkerProcess:
    def __init__(
        self, url: str, queue: str, journal: str, log_dir: str, *args: str, target: str = "jobs:handle"
    ) -> None:
        self.metrics_port = free_port()
        self.cmd = [
            sys.executable,
            "-m",
            "rankq.cli",
            "worker",
            target,
            "--queue",
            queue,
            "--url",
            url,
            "--metrics-port",
            str(self.metrics_port),
            "--metrics-host",
            "127.0.0.1",
            *args,
        ]
        self.env = {**os.environ, "RANKQ_TEST_JOURNAL": journal, "PYTHONPATH": HERE}
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, f"worker-{self.metrics_port}.log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20.0) -> WorkerProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.cmd, cwd=HERE, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}: {self.logs()[-2000:]}")
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/readyz", timeout=1).status_code == 200

        wait_for(ready, timeout, "worker /readyz")
        return self

    def metric(self, name: str) -> float:
        text = httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2).text
        for line in text.splitlines():
            if line.startswith((name + "{", name + " ")):
                return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def signal(self, sig=signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if getattr(self, "_log", None):
            self._log.close()

    def logs(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as fh:
            return fh.read()


class Journal:
    def __init__(self, path: str) -> None:
        self.path = path

    def events(self, kind: str | None = None) -> list[dict]:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as fh:
            rows = [json.loads(line) for line in fh if line.strip()]
        return [r for r in rows if kind is None or r["event"] == kind]

    def counts(self, kind: str) -> collections.Counter:
        return collections.Counter(r["n"] for r in self.events(kind))
