"""`rankq dev cluster`: a local replicated group on loopback under a small supervisor.

Each member is a `rankq server` process with its own data dir; the Raft secret is generated once
into the data dir (mode 0600) and shared through a file, never baked in. A member that exits is
started again after a short pause, so `kill -9` of any node shows failover and catch-up live.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time

import httpx

MAX_FAILED_STARTS = 5  # a node that dies this many times in a row without settling stops the group
SETTLED_SECONDS = 30.0  # a node that ran this long has settled: its next exit starts a fresh count


class PortTaken(Exception):
    """A port the group needs is in use by another process."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def exit_reason(returncode: int) -> str:
    """How a process ended, in words: 'killed by SIGKILL' or 'exited with code 1'."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def own_error(log_tail: list[str]) -> str | None:
    """The node's own last error in these log lines, if any: request errors (lines whose source is
    a route such as `/api/v1/...`) are a client's business, not why a node stopped."""
    for line in reversed(log_tail):
        if "[ERROR]" in line or "[CRITICAL]" in line:
            source = line.split("] ", 1)[-1]
            if not source.startswith("/"):
                return line.strip()[-200:]
    return None


class DevCluster:
    def __init__(
        self, nodes: int, data_dir: str, http_port: int, grpc_port: int, raft_port: int, demo_queue: str | None
    ) -> None:
        self.n = nodes
        self.root = os.path.abspath(data_dir)
        self.ports = [(http_port + i, grpc_port + i if grpc_port else 0, raft_port + i) for i in range(nodes)]
        self.demo_queue = demo_queue
        self.procs: list[subprocess.Popen | None] = [None] * nodes
        self.log_offsets = [0] * nodes  # where each node's current run starts in its log
        self.stopping = False

    def check_ports(self) -> None:
        """Refuse to start when a port is taken, naming it, rather than crash-loop behind a stranger."""
        names = ("HTTP", "gRPC", "Raft")
        for i, ports in enumerate(self.ports):
            for name, port in zip(names, ports):
                if port and port_in_use(port):
                    raise PortTaken(
                        f"port {port} ({name} of node-{i}) is in use by another process. Stop it, or pick other "
                        f"ports: make run HTTP_PORT=18080 GRPC_PORT=19090 RAFT_PORT=17070 (node i uses port+i)"
                    )

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
        cmd = [
            sys.executable,
            "-m",
            "rankq.cli",
            "server",
            "--data-dir",
            os.path.join(self.root, f"node-{i}"),
            "--host",
            "127.0.0.1",
            "--http-port",
            str(http),
            "--grpc-port",
            str(grpc),
            "--raft-port",
            str(raft),
            "--node-id",
            f"node-{i}",
            "--raft-password-file",
            self.secret_file(),
        ]
        if self.n > 1:
            cmd += ["--peers", peers]
        if self.demo_queue:
            cmd += ["--demo-queue", self.demo_queue]
        return cmd

    def start(self, i: int) -> None:
        os.makedirs(os.path.join(self.root, f"node-{i}"), exist_ok=True)
        log = open(os.path.join(self.root, f"node-{i}.log"), "ab")
        self.log_offsets[i] = log.tell()
        self.procs[i] = subprocess.Popen(self.command(i), stdout=log, stderr=subprocess.STDOUT)

    def why_stopped(self, i: int, returncode: int) -> str:
        """How node i's last run ended, with its own last error from that run when it logged one."""
        reason = exit_reason(returncode)
        try:
            with open(os.path.join(self.root, f"node-{i}.log"), "rb") as fh:
                fh.seek(max(self.log_offsets[i], os.fstat(fh.fileno()).st_size - 16384))
                lines = fh.read().decode(errors="replace").splitlines()
        except OSError:
            lines = []
        error = own_error(lines)
        return f"{reason}: {error}" if error else reason

    def banner(self) -> None:
        urls = ",".join(f"http://127.0.0.1:{h}" for h, _, _ in self.ports)
        print(f"RankQ local group of {self.n} node(s); data and logs in {self.root}")
        for i, (h, g, r) in enumerate(self.ports):
            grpc = f"grpc://127.0.0.1:{g}" if g else "off"
            print(
                f"  node-{i}: HTTP http://127.0.0.1:{h}  docs http://127.0.0.1:{h}/docs  "
                f"gRPC {grpc}  Raft 127.0.0.1:{r}  log {self.root}/node-{i}.log"
            )
        print(f"  any node accepts any request; clients may list them all: RANKQ_URL={urls}")
        if self.demo_queue:
            print(
                f"  demo queue '{self.demo_queue}': rankq send {self.demo_queue} '{{\"hello\": 1}}' && "
                f"rankq receive {self.demo_queue} --ack"
            )
        print("  rankq cluster status    shows the leader and members; Ctrl-C stops the group", flush=True)

    def wait_leader(self, timeout: float = 30.0) -> str | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            for i, (h, _, _) in enumerate(self.ports):
                proc = self.procs[i]
                if proc is None or proc.poll() is not None:
                    continue  # only our own live nodes count, never whoever else answers on the port
                try:
                    r = httpx.get(f"http://127.0.0.1:{h}/readyz", timeout=1)
                    if r.status_code == 200:
                        return r.json().get("leader")
                except httpx.HTTPError:
                    pass
            time.sleep(0.2)
        return None

    def run(self) -> int:
        def stop(*_):
            self.stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            self.check_ports()
        except PortTaken as err:
            print(f"cannot start: {err}", file=sys.stderr, flush=True)
            return 1
        started_at: dict[int, float] = {}
        for i in range(self.n):
            self.start(i)
            started_at[i] = time.monotonic()
        self.banner()
        restarts_at: dict[int, float] = {}
        failures: dict[int, int] = {}
        announced = False
        gave_up = False
        try:
            while not self.stopping:
                for i, p in enumerate(self.procs):
                    if p is not None and p.poll() is not None:
                        if i not in restarts_at:
                            failures[i] = failures.get(i, 0) + 1
                            why = self.why_stopped(i, p.returncode)
                            if failures[i] >= MAX_FAILED_STARTS:
                                print(
                                    f"  node-{i} {why}; it failed {failures[i]} times in a row, giving up "
                                    f"(log: {self.root}/node-{i}.log)",
                                    file=sys.stderr,
                                    flush=True,
                                )
                                gave_up = self.stopping = True
                                break
                            pause = min(10.0, 0.5 * 2 ** failures[i])
                            restarts_at[i] = time.monotonic() + pause
                            print(f"  node-{i} {why}; starting it again in {pause:g}s", flush=True)
                        if time.monotonic() >= restarts_at[i]:
                            restarts_at.pop(i)
                            self.start(i)
                            started_at[i] = time.monotonic()
                    elif p is not None and time.monotonic() - started_at.get(i, 0) > SETTLED_SECONDS:
                        failures.pop(i, None)  # ran for a while: the next exit starts a fresh backoff
                if not announced and not self.stopping:
                    leader = self.wait_leader(timeout=0.01)
                    if leader:
                        announced = True
                        print(f"  leader elected: {leader}; ready", flush=True)
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
        return 1 if gave_up else 0
