"""`rankq dev cluster`: a local replicated group on loopback under a small supervisor.

Each member is a `rankq server` process with its own data dir; the Raft secret is generated once
into the data dir (mode 0600) and shared through a file, never baked in. A member that exits is
started again after a short pause, so `kill -9` of any node shows failover and catch-up live.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time

import httpx


class DevCluster:
    def __init__(self, nodes: int, data_dir: str, http_port: int, grpc_port: int, raft_port: int,
                 demo_queue: str | None) -> None:
        self.n = nodes
        self.root = os.path.abspath(data_dir)
        self.ports = [(http_port + i, grpc_port + i if grpc_port else 0, raft_port + i) for i in range(nodes)]
        self.demo_queue = demo_queue
        self.procs: list[subprocess.Popen | None] = [None] * nodes
        self.stopping = False

    def secret_file(self) -> str:
        path = os.path.join(self.root, "raft-secret")
        if not os.path.exists(path):
            os.makedirs(self.root, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
        return path

    def command(self, i: int) -> list[str]:
        http, grpc, raft = self.ports[i]
        peers = ",".join(f"node-{k}=127.0.0.1:{p[2]}" for k, p in enumerate(self.ports))
        cmd = [sys.executable, "-m", "rankq.cli", "server", "--data-dir", os.path.join(self.root, f"node-{i}"),
               "--host", "127.0.0.1", "--http-port", str(http), "--grpc-port", str(grpc), "--raft-port", str(raft),
               "--node-id", f"node-{i}", "--raft-password-file", self.secret_file()]
        if self.n > 1:
            cmd += ["--peers", peers]
        if self.demo_queue:
            cmd += ["--demo-queue", self.demo_queue]
        return cmd

    def start(self, i: int) -> None:
        os.makedirs(os.path.join(self.root, f"node-{i}"), exist_ok=True)
        log = open(os.path.join(self.root, f"node-{i}.log"), "ab")
        self.procs[i] = subprocess.Popen(self.command(i), stdout=log, stderr=subprocess.STDOUT)

    def last_error(self, i: int) -> str:
        """The last error line of node i's log, to say why it stopped."""
        try:
            with open(os.path.join(self.root, f"node-{i}.log"), "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 8192))
                lines = fh.read().decode(errors="replace").splitlines()
        except OSError:
            return "no log"
        errors = [line for line in lines if "[ERROR]" in line or "Error" in line]
        return (errors or lines or ["no log"])[-1].strip()[-160:]

    def banner(self) -> None:
        urls = ",".join(f"http://127.0.0.1:{h}" for h, _, _ in self.ports)
        print(f"RankQ local group of {self.n} node(s); data and logs in {self.root}")
        for i, (h, g, r) in enumerate(self.ports):
            grpc = f"grpc://127.0.0.1:{g}" if g else "off"
            print(f"  node-{i}: HTTP http://127.0.0.1:{h}  docs http://127.0.0.1:{h}/docs  "
                  f"gRPC {grpc}  Raft 127.0.0.1:{r}  log {self.root}/node-{i}.log")
        print(f"  any node accepts any request; clients may list them all: RANKQ_URL={urls}")
        if self.demo_queue:
            print(f"  demo queue '{self.demo_queue}': rankq send {self.demo_queue} '{{\"hello\": 1}}' && "
                  f"rankq receive {self.demo_queue} --ack")
        print("  rankq cluster status    shows the leader and members; Ctrl-C stops the group", flush=True)

    def wait_leader(self, timeout: float = 30.0) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            for h, _, _ in self.ports:
                try:
                    r = httpx.get(f"http://127.0.0.1:{h}/readyz", timeout=1)
                    if r.status_code == 200:
                        return r.json().get("leader")
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        return None

    def run(self) -> None:
        def stop(*_):
            self.stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for i in range(self.n):
            self.start(i)
        self.banner()
        leader = self.wait_leader()
        print(f"  leader elected: {leader}; ready" if leader else "  no leader yet; see the node logs", flush=True)
        restarts_at: dict[int, float] = {}
        failures: dict[int, int] = {}
        started_at: dict[int, float] = {}
        try:
            while not self.stopping:
                for i, p in enumerate(self.procs):
                    if p is not None and p.poll() is not None:
                        if i not in restarts_at:
                            failures[i] = failures.get(i, 0) + 1
                            pause = min(10.0, 0.5 * 2 ** failures[i])
                            restarts_at[i] = time.monotonic() + pause
                            print(f"  node-{i} exited with {p.returncode} ({self.last_error(i)}); "
                                  f"starting it again in {pause:g}s", flush=True)
                        if time.monotonic() >= restarts_at[i]:
                            restarts_at.pop(i)
                            self.start(i)
                            started_at[i] = time.monotonic()
                    elif p is not None and time.monotonic() - started_at.get(i, 0) > 30:
                        failures.pop(i, None)  # ran for a while: the next exit starts a fresh backoff
                time.sleep(0.2)
        finally:
            for p in self.procs:
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in self.procs:
                if p is not None:
                    try:
                        p.wait(10)
                    except subprocess.TimeoutExpired:
                        p.kill()
            print("stopped", flush=True)
