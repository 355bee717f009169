"""Processes the benchmark runs: RankQ servers, null servers and load generators, all on loopback.

Every process started here is tracked by its pid and stopped when the run ends, failed or not.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx

HOST = "127.0.0.1"


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A TCP port nothing uses right now (on every interface: Raft binds them all), taken below the
    kernel's ephemeral range when there is room: a server restarted on its old ports (kill -9 and
    restart) must find them free, and a port in the ephemeral range can meanwhile become the local
    end of any outgoing connection on the machine."""
    low, _ = _ephemeral_range()
    if low > 20_000:
        for _ in range(50):
            port = random.randrange(10_000, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.2)
        return s.connect_ex((HOST, port)) == 0


def machine_load() -> dict:
    """How busy the machine is: 1-minute load average and the share of the last 10 s in which some
    runnable task waited for a CPU (Linux PSI; absent on kernels without it)."""
    out = {"loadavg": os.getloadavg()[0]}
    try:
        some = Path("/proc/pressure/cpu").read_text().splitlines()[0].split()
        out["cpu_pressure"] = float(dict(kv.split("=") for kv in some[1:])["avg10"])
    except (OSError, KeyError, ValueError, IndexError):
        pass
    return out


class Failure(Exception):
    """A server or load generator did not do what the benchmark needs."""


class Proc:
    def __init__(self, name: str, args: list[str], log: Path, env: dict | None = None) -> None:
        self.name = name
        self.args = args
        self.log = log
        self.env = env
        self.popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")
        try:
            self.popen = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        finally:
            out.close()
        return self

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def sigkill(self) -> None:
        """SIGKILL to the process and everything it forked, as when its container dies, without waiting
        for the exit (the instant of the kill is the caller's to record). A forked child matters: the
        server forks to write a snapshot, and that child holds the server's listening sockets."""
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)  # its own session and process group
            except ProcessLookupError:
                pass

    def kill9(self) -> None:
        if self.alive():
            self.sigkill()
            self.popen.wait(10)

    def stop(self, grace: float = 5.0) -> None:
        if not self.alive():
            return
        os.kill(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.kill9()

    # ---- /proc readings -----------------------------------------------------------------------

    def memory(self) -> dict:
        """VmRSS and its parts (anonymous memory; file pages, e.g. a mapped journal) in bytes."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
        if "VmRSS" not in out:
            raise Failure(f"no VmRSS for {self.name}")
        return out

    def cpu_seconds(self) -> float:
        """User + system CPU time of the process so far (all threads)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks


class Procs:
    """Owns every process of a run; `close()` stops them all."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.all: list[Proc] = []

    def spawn(self, name: str, args: list[str], env: dict | None = None) -> Proc:
        p = Proc(name, args, self.workdir / "logs" / f"{name}.log", env)
        self.all.append(p)
        return p.start()

    def close(self) -> None:
        for p in reversed(self.all):
            try:
                p.stop(grace=3.0)
            except Exception:
                try:
                    p.kill9()
                except Exception:
                    pass


class Server:
    """A server under test (RankQ or null) reachable over HTTP and/or gRPC."""

    def __init__(self, kind: str, proc: Proc, http_port: int | None, grpc_port: int | None) -> None:
        self.kind = kind
        self.proc = proc
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.node_id: str | None = None  # a group member's --node-id
        self.group: list[Server] = [self]  # every member of its replicated group (itself alone if single)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.http_port}"

    @property
    def grpc_addr(self) -> str:
        return f"{HOST}:{self.grpc_port}"


def wait_until(check, timeout: float, proc: Proc | None = None, what: str = "condition", poll: float = 0.02):
    """Poll `check()` until it returns a truthy value; fail at the deadline or if `proc` dies."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            got = check()
            if got:
                return got
        except (httpx.HTTPError, OSError):
            pass
        if proc is not None and not proc.alive():
            raise Failure(f"{proc.name} exited ({proc.popen.returncode}) while waiting for {what}:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            tail = f":\n{proc.log_tail()}" if proc is not None else ""
            raise Failure(f"timed out after {timeout:g}s waiting for {what}{tail}")
        time.sleep(poll)


def http_ready(base: str) -> bool:
    return httpx.get(base + "/readyz", timeout=1.0).status_code == 200


def start_rankq(
    procs: Procs, name: str, data_dir: Path, grpc: bool, ports: dict | None = None, extra: list[str] | None = None
) -> Server:
    """`rankq server` on fresh free ports (or the given ones, for a restart on the same data dir)."""
    ports = ports or {"http": free_port(), "grpc": free_port() if grpc else 0, "raft": free_port()}
    args = [
        sys.executable,
        "-m",
        "rankq.cli",
        "server",
        "--data-dir",
        str(data_dir),
        "--host",
        HOST,
        "--http-port",
        str(ports["http"]),
        "--grpc-port",
        str(ports["grpc"]),
        "--raft-port",
        str(ports["raft"]),
    ]
    proc = procs.spawn(name, args + list(extra or []))
    server = Server("rankq", proc, ports["http"], ports["grpc"] or None)
    server.ports = ports
    return server


def wait_rankq_ready(server: Server, timeout: float = 60.0) -> None:
    wait_until(lambda: http_ready(server.base), timeout, server.proc, "/readyz")
    if server.grpc_port:
        wait_until(lambda: port_open(server.grpc_port), timeout, server.proc, "the gRPC port")


def create_queue(server: Server, name: str = "bench") -> None:
    r = httpx.post(server.base + "/api/v1/queues", json={"name": name}, timeout=10.0)
    if r.status_code != 201:
        raise Failure(f"create queue {name!r}: {r.status_code} {r.text[:200]}")


def queue_counts(server: Server, name: str = "bench") -> dict:
    r = httpx.get(f"{server.base}/api/v1/queues/{name}", timeout=5.0)
    r.raise_for_status()
    return r.json()["counts"]


# ---- replicated groups ----------------------------------------------------------------------------


def start_group(
    procs: Procs, name: str, root: Path, size: int, grpc: bool, extra: list[str] | None = None
) -> list[Server]:
    """`size` members of one Raft group (node ids n0, n1, ...), started together, not yet waited for."""
    root.mkdir(parents=True, exist_ok=True)
    secret = root / "raft-secret"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32))
    ports = [{"http": free_port(), "grpc": free_port() if grpc else 0, "raft": free_port()} for _ in range(size)]
    peers = ",".join(f"n{i}={HOST}:{p['raft']}" for i, p in enumerate(ports))
    members = []
    for i, p in enumerate(ports):
        node_args = ["--node-id", f"n{i}", "--peers", peers, "--raft-password-file", str(secret)]
        server = start_rankq(procs, f"{name}-n{i}", root / f"n{i}", grpc, ports=p, extra=node_args + list(extra or []))
        server.node_id = f"n{i}"
        server.node_args = node_args + list(extra or [])
        server.group_root = root
        members.append(server)
    for server in members:
        server.group = members
    return members


def restart_member(procs: Procs, server: Server, name: str) -> Server:
    """Start a stopped group member again on its ports and data dir; it takes its place in the group."""
    again = start_rankq(
        procs,
        name,
        server.group_root / server.node_id,
        server.grpc_port is not None,
        ports=server.ports,
        extra=server.node_args,
    )
    again.node_id, again.node_args, again.group = server.node_id, server.node_args, server.group
    again.group_root = server.group_root
    server.group[server.group.index(server)] = again
    return again


def cluster_status(server: Server, timeout: float = 1.0) -> dict:
    r = httpx.get(server.base + "/api/v1/cluster", timeout=timeout)
    r.raise_for_status()
    return r.json()


def agreed_leader(members: list[Server]) -> Server | None:
    """The member that every live member names as leader, or None while they do not agree."""
    live = [m for m in members if m.proc.alive()]
    seen = set()
    for m in live:
        try:
            seen.add(cluster_status(m)["leader"])
        except (httpx.HTTPError, OSError, ValueError):
            return None
    if len(seen) != 1 or None in seen:
        return None
    leader = seen.pop()
    return next((m for m in live if m.node_id == leader), None)


def wait_group_ready(members: list[Server], timeout: float = 90.0) -> Server:
    """Wait until every member is ready (and its gRPC port open) and all agree on a leader; return it."""
    for m in members:
        wait_rankq_ready(m, timeout)
    return wait_until(lambda: agreed_leader(members), timeout, None, "an agreed leader", poll=0.1)


def stop_group(members: list[Server]) -> None:
    for m in members:
        m.proc.stop()


def start_null_http(procs: Procs, name: str) -> Server:
    port = free_port()
    proc = procs.spawn(name, [sys.executable, "-m", "bench.null_http", "--host", HOST, "--port", str(port)])
    server = Server("null-http", proc, port, None)
    wait_until(lambda: http_ready(server.base), 30.0, proc, "/readyz")
    return server


def start_null_grpc(procs: Procs, name: str) -> Server:
    port = free_port()
    proc = procs.spawn(name, [sys.executable, "-m", "bench.null_grpc", "--host", HOST, "--port", str(port)])
    server = Server("null-grpc", proc, None, port)
    wait_until(lambda: port_open(port), 30.0, proc, "the gRPC port")
    return server


# ---- load generators ------------------------------------------------------------------------------


def run_tool(args: list[str], timeout: float, marker: str | None = None, env: dict | None = None) -> dict:
    """Run a load generator to completion and parse its JSON line (after `marker` if given)."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL, env=env)
    except subprocess.TimeoutExpired as err:
        raise Failure(f"{Path(args[0]).name} ran past {timeout:g}s") from err
    if done.returncode != 0:
        raise Failure(f"{Path(args[0]).name} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    for line in done.stdout.splitlines():
        if marker is None and line.startswith("{"):
            return json.loads(line)
        if marker is not None and line.startswith(marker):
            return json.loads(line[len(marker) :])
    raise Failure(f"no result from {Path(args[0]).name}: {done.stdout[-500:]} {done.stderr[-500:]}")


@contextmanager
def group_cpu_meter(server: Server):
    """`cpu_meter` over every live member of the server's group: yields a dict filled on exit with the
    server's own reading (`cpu_seconds`, `cpu_percent`), each other member's (`others`) and their
    sum (`group_cpu_seconds`). A server that runs alone is its own group."""
    out: dict = {}
    with ExitStack() as stack:
        own = stack.enter_context(cpu_meter(server.proc))
        others = [stack.enter_context(cpu_meter(m.proc)) for m in server.group if m is not server and m.proc.alive()]
        yield out
    out.update(own)
    out["others"] = others
    if "cpu_seconds" in own:
        out["group_cpu_seconds"] = own["cpu_seconds"] + sum(o.get("cpu_seconds", 0.0) for o in others)


@contextmanager
def cpu_meter(proc: Proc):
    """Measure the CPU a process uses inside the block: yields a dict filled on exit."""
    out: dict = {}
    c0, t0 = proc.cpu_seconds(), time.monotonic()
    try:
        yield out
    finally:
        if proc.alive():
            out["cpu_seconds"] = proc.cpu_seconds() - c0
            out["wall_seconds"] = time.monotonic() - t0
            out["cpu_percent"] = 100.0 * out["cpu_seconds"] / max(out["wall_seconds"], 1e-9)
