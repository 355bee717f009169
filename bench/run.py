"""RankQ single-node benchmark: `python -m bench.run` (what `make bench` runs).

Each measure runs against a fresh `rankq server` and, in the same run, against a null server on the
same transport (bench/null_http.py: FastAPI/uvicorn; bench/null_grpc.py: grpc.aio) whose handlers
only parse and answer: that is the framework ceiling, and RankQ/null is the share of it RankQ keeps.
Every figure is the median of --reps repetitions, RankQ and null interleaved.

Load generators: wrk (C) for closed-loop HTTP throughput; bench/loadgen (Go) for paced open-loop
latency, producer/consumer pairs, bulk fills and gRPC streams. bench/setup.sh installs both.
All traffic goes to 127.0.0.1; every run is bounded in time; every process started is stopped at
the end, also on failure.

    python -m bench.run                 # full run (about 10 minutes), writes bench/results/latest.*
    python -m bench.run --quick         # smoke run (about 2 minutes), results in a temp dir
    python -m bench.run --only http_single,latency
    python -m bench.run --only replicated,failover   # the 3-node group: throughput and failover (~6 min)

The replicated measures start a 3-node group on this machine (three `rankq server` processes on the
same two cores) and compare it with a single node started in the same run; bench/failover.py kills
the group's leader with SIGKILL at least 20 times and times the first write the new leader accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from . import failover as F
from . import procs as P
from .procs import Failure, Procs, Server

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROTO = ROOT / "rankq" / "server" / "proto" / "rankq.proto"
PAYLOAD_BYTES = 100
MiB = 1024 * 1024

SCENARIOS = [
    "http_single",
    "http_batch",
    "grpc_stream",
    "pairs",
    "latency",
    "memory_restart",
    "replicated",
    "failover",
    "dashboard",
]


@dataclass
class Plan:
    reps: int = 3
    duration: float = 8.0  # measured seconds per throughput run
    warmup: float = 2.0
    single_conns: int = 64  # wrk connections, one message per request
    batch_conns: int = 8  # wrk connections, BATCH messages per request
    batch: int = 100
    grpc_streams: int = 8
    grpc_conns: int = 2
    grpc_window: int = 256  # unanswered messages per stream
    grpc_paced_streams: int = 2  # open loop: frames gather what falls due within grpc_linger
    grpc_linger: str = "1ms"
    pair_producers: int = 2
    pair_consumers: int = 4
    pair_max: int = 100  # dequeue max and producer batch size
    pair_backlog: int = 20_000
    latency_duration: float = 12.0  # paced run, warm-up included
    latency_conns: int = 64
    fill_count: int = 1_000_000
    fill_batch: int = 1000
    fill_conns: int = 4
    group_size: int = 3  # members of the replicated group
    failover_kills: int = 20
    failover_budget: float = 240.0  # seconds: fewer kills if they run out
    server_args: list[str] = field(default_factory=list)

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            reps=1,
            duration=3.0,
            warmup=1.0,
            latency_duration=5.0,
            fill_count=100_000,
            failover_kills=3,
            failover_budget=60.0,
        )


TARGETS = {
    "http_single": None,
    "http_batch": (">=", 50_000),
    "grpc_stream": (">=", 30_000),
    "pairs": (">=", 15_000),
    "latency_p99": ("<=", 5.0),
    "rss_per_million": ("<=", 300.0),
    "restart": None,
    "replicated_http_batch": (">=", 50_000),
    "replicated_grpc_stream": (">=", 50_000),
    "failover_p99": 2.0,  # seconds from kill -9 of the leader to the first write the new leader accepts
}


# ---- helpers ---------------------------------------------------------------------------------------


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def setup_tools() -> dict:
    done = subprocess.run(["bash", str(HERE / "setup.sh")], capture_output=True, text=True, timeout=900)
    sys.stderr.write(done.stderr)
    if done.returncode != 0:
        raise Failure(f"bench/setup.sh failed ({done.returncode})")
    tools = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    for key in ("WRK", "RANKQ_LOAD"):
        if not tools.get(key):
            raise Failure(f"bench/setup.sh did not report {key}")
    return tools


def cpu_us(cpu: dict, messages: int, plan: Plan | None = None) -> float | None:
    """Server CPU microseconds per message; a run with a warm-up inside is prorated to its measured part."""
    if not messages or "cpu_seconds" not in cpu:
        return None
    seconds = cpu["cpu_seconds"]
    if plan is not None:
        seconds *= plan.duration / (plan.duration + plan.warmup)
    return seconds / messages * 1e6


def cpu_fields(cpu: dict, messages: int, plan: Plan | None = None) -> dict:
    """The measured server's CPU share and µs per message; for a group member also every other member's
    share and the group's CPU per message (the replication cost)."""
    out = {"server_cpu_percent": cpu.get("cpu_percent"), "server_cpu_us_per_msg": cpu_us(cpu, messages, plan)}
    if cpu.get("others"):
        out["other_cpu_percent"] = [o.get("cpu_percent") for o in cpu["others"]]
        out["group_cpu_percent"] = cpu.get("cpu_percent", 0) + sum(o.get("cpu_percent", 0) for o in cpu["others"])
        out["group_cpu_us_per_msg"] = cpu_us({"cpu_seconds": cpu["group_cpu_seconds"]}, messages, plan)
    return out


def payload_json() -> str:
    return '"' + "x" * (PAYLOAD_BYTES - 2) + '"'


class Bench:
    def __init__(self, plan: Plan, tools: dict, workdir: Path) -> None:
        self.plan = plan
        self.tools = tools
        self.workdir = workdir
        self.procs = Procs(workdir)
        self.grpc = (ROOT / "rankq" / "server" / "grpc_api.py").exists()
        self.count = 0
        body = '{"payload":%s}' % payload_json()
        self.single_body = workdir / "single.json"
        self.single_body.write_text(body)
        self.batch_body = workdir / "batch.json"
        self.batch_body.write_text('{"messages":[' + ",".join([body] * plan.batch) + "]}")

    # ---- servers -------------------------------------------------------------------------------

    def _name(self, kind: str) -> str:
        self.count += 1
        return f"{self.count:03d}-{kind}"

    def rankq(self, grpc: bool | None = None) -> Server:
        grpc = self.grpc if grpc is None else grpc
        name = self._name("rankq")
        server = P.start_rankq(self.procs, name, self.workdir / name, grpc, extra=self.plan.server_args)
        P.wait_rankq_ready(server)
        P.create_queue(server)
        return server

    def drop(self, server: Server) -> None:
        server.proc.stop()
        if server.kind == "rankq":
            shutil.rmtree(self.workdir / server.proc.name, ignore_errors=True)

    def rankq_group(self) -> Server:
        """A fresh replicated group on this machine; returns its leader (the others are `leader.group`)."""
        name = self._name("group")
        members = P.start_group(
            self.procs, name, self.workdir / name, self.plan.group_size, self.grpc, extra=self.plan.server_args
        )
        leader = P.wait_group_ready(members)
        P.create_queue(leader)
        return leader

    def drop_group(self, leader: Server) -> None:
        P.stop_group(leader.group)
        shutil.rmtree(leader.group_root, ignore_errors=True)

    def compare_replicated(self, measures: dict) -> dict:
        """Run each of `measures` against the leader of a fresh group and against a fresh single node,
        `reps` times, interleaved; each group or single node serves all the measures of a repetition."""
        out = {key: {"group": [], "single": []} for key in measures}
        for i in range(self.plan.reps):
            for side, start, stop in (("group", self.rankq_group, self.drop_group), ("single", self.rankq, self.drop)):
                server = start()
                try:
                    for key, measure in measures.items():
                        out[key][side].append({**measure(server), **P.machine_load()})
                finally:
                    stop(server)
            log(
                f"replicated rep {i + 1}/{self.plan.reps}: "
                + "; ".join(
                    f"{key} group {v['group'][-1]['value']:,.0f} single {v['single'][-1]['value']:,.0f}"
                    for key, v in out.items()
                )
            )
        return out

    def compare(self, label: str, measure, start_null) -> dict:
        """Run `measure` on a fresh RankQ server and on the null server, `reps` times, interleaved."""
        out = {"rankq": [], "null": []}
        null = start_null()
        try:
            for i in range(self.plan.reps):
                server = self.rankq()
                try:
                    out["rankq"].append({**measure(server), **P.machine_load()})
                finally:
                    self.drop(server)
                out["null"].append({**measure(null), **P.machine_load()})
                log(
                    f"{label} rep {i + 1}/{self.plan.reps}: rankq {out['rankq'][-1]['value']:,.0f}  "
                    f"null {out['null'][-1]['value']:,.0f}"
                )
        finally:
            self.drop(null)
        return out

    # ---- load generators -----------------------------------------------------------------------

    def wrk(self, server: Server, path: str, body: Path, conns: int, seconds: float) -> dict:
        args = [
            self.tools["WRK"],
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "post.lua"),
            server.base + path,
            "--",
            str(body),
        ]
        return P.run_tool(args, timeout=seconds + 60, marker="WRKJSON ")

    def load(self, sub: str, args: list[str], timeout: float) -> dict:
        return P.run_tool([self.tools["RANKQ_LOAD"], sub, *args], timeout=timeout)

    # ---- measures ------------------------------------------------------------------------------

    def http_enqueue(self, per_request: int, conns: int, body: Path):
        path = "/api/v1/queues/bench/messages" + ("/batch" if per_request > 1 else "")

        def measure(server: Server) -> dict:
            self.wrk(server, path, body, conns, self.plan.warmup)
            with P.group_cpu_meter(server) as cpu:
                r = self.wrk(server, path, body, conns, self.plan.duration)
            errors = sum(r[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
            secs = r["duration_us"] / 1e6
            if errors:
                raise Failure(f"wrk saw {errors} errors against {server.kind}: {r}")
            msgs = r["requests"] * per_request
            return {
                "value": msgs / secs,
                "requests_per_s": r["requests"] / secs,
                "p50_ms": r["p50_us"] / 1000,
                "p99_ms": r["p99_us"] / 1000,
                **cpu_fields(cpu, msgs),
            }

        return measure

    def grpc_measure(self, server: Server) -> dict:
        p = self.plan
        args = [
            "-addr",
            server.grpc_addr,
            "-proto",
            str(PROTO),
            "-queue",
            "bench",
            "-streams",
            str(p.grpc_streams),
            "-conns",
            str(p.grpc_conns),
            "-window",
            str(p.grpc_window),
            "-payload-bytes",
            str(PAYLOAD_BYTES),
            "-duration",
            f"{p.duration}s",
            "-warmup",
            f"{p.warmup}s",
        ]
        with P.group_cpu_meter(server) as cpu:
            r = self.load("grpc-stream", args, timeout=p.duration + p.warmup + 60)
        if r["errors"] or r["refused"]:
            raise Failure(f"gRPC stream against {server.kind}: {r}")
        return {
            "value": r["rate"],
            "acked": r["acked"],
            "mean_frame": r.get("mean_frame"),
            **cpu_fields(cpu, r["acked"], p),
        }

    def pairs_measure(self, server: Server) -> dict:
        p = self.plan
        args = [
            "-base",
            server.base,
            "-queue",
            "bench",
            "-producers",
            str(p.pair_producers),
            "-consumers",
            str(p.pair_consumers),
            "-batch",
            str(p.pair_max),
            "-max",
            str(p.pair_max),
            "-backlog",
            str(p.pair_backlog),
            "-payload-bytes",
            str(PAYLOAD_BYTES),
            "-duration",
            f"{p.duration}s",
            "-warmup",
            f"{p.warmup}s",
        ]
        with P.cpu_meter(server.proc) as cpu:
            r = self.load("pairs", args, timeout=p.duration + p.warmup + 60)
        if r["errors"] or r["ack_failures"]:
            raise Failure(f"pairs against {server.kind}: {r}")
        return {
            "value": r["pairs_rate"],
            "enqueue_rate": r["enqueue_rate"],
            "server_cpu_percent": cpu.get("cpu_percent"),
            "server_cpu_us_per_msg": cpu_us(cpu, r["acked"], p),
        }

    def paced_http(self, rate: float):
        p = self.plan

        def measure(server: Server) -> dict:
            args = [
                "-url",
                server.base + "/api/v1/queues/bench/messages",
                "-body",
                self.single_body.read_text(),
                "-rate",
                f"{rate:.0f}",
                "-duration",
                f"{p.latency_duration}s",
                "-warmup",
                f"{p.warmup}s",
                "-conns",
                str(p.latency_conns),
            ]
            with P.cpu_meter(server.proc) as cpu:
                r = self.load("http-paced", args, timeout=p.latency_duration + 60)
            if r["errors"]:
                raise Failure(f"paced HTTP against {server.kind}: {r}")
            lat = r["latency"]
            return {
                "value": lat["p99_ms"],
                "p50_ms": lat["p50_ms"],
                "p99_ms": lat["p99_ms"],
                "p999_ms": lat["p999_ms"],
                "max_ms": lat["max_ms"],
                "achieved_rate": r["achieved_rate"],
                "server_cpu_percent": cpu.get("cpu_percent"),
            }

        return measure

    def paced_grpc(self, rate: float):
        p = self.plan

        def measure(server: Server) -> dict:
            args = [
                "-addr",
                server.grpc_addr,
                "-proto",
                str(PROTO),
                "-queue",
                "bench",
                "-streams",
                str(p.grpc_paced_streams),
                "-conns",
                str(min(p.grpc_conns, p.grpc_paced_streams)),
                "-linger",
                p.grpc_linger,
                "-rate",
                f"{rate:.0f}",
                "-payload-bytes",
                str(PAYLOAD_BYTES),
                "-duration",
                f"{p.latency_duration}s",
                "-warmup",
                f"{p.warmup}s",
            ]
            with P.cpu_meter(server.proc) as cpu:
                r = self.load("grpc-stream", args, timeout=p.latency_duration + 60)
            if r["errors"] or r["refused"]:
                raise Failure(f"paced gRPC against {server.kind}: {r}")
            lat = r["latency"]
            return {
                "value": lat["p99_ms"],
                "p50_ms": lat["p50_ms"],
                "p99_ms": lat["p99_ms"],
                "p999_ms": lat["p999_ms"],
                "max_ms": lat["max_ms"],
                "achieved_rate": r["achieved_rate"],
                "mean_frame": r.get("mean_frame"),
                "server_cpu_percent": cpu.get("cpu_percent"),
            }

        return measure

    # ---- memory and restart --------------------------------------------------------------------

    def memory_restart(self) -> dict:
        """Per repetition: fill a fresh server with N messages, read RSS, kill -9, time the restart."""
        p = self.plan
        runs, floors = [], []
        for i in range(p.reps):
            name = self._name("rankq")
            data = self.workdir / name
            server = P.start_rankq(self.procs, name, data, self.grpc, extra=p.server_args)
            try:
                P.wait_rankq_ready(server)
                P.create_queue(server)
                time.sleep(0.5)
                mem0 = server.proc.memory()
                fill = self.load(
                    "fill",
                    [
                        "-base",
                        server.base,
                        "-queue",
                        "bench",
                        "-count",
                        str(p.fill_count),
                        "-batch",
                        str(p.fill_batch),
                        "-conns",
                        str(p.fill_conns),
                        "-payload-bytes",
                        str(PAYLOAD_BYTES),
                        "-deadline",
                        "300s",
                    ],
                    timeout=360,
                )
                P.wait_until(lambda: P.queue_counts(server)["ready"] == p.fill_count, 30, server.proc, "the fill")
                time.sleep(1.0)
                mem1 = server.proc.memory()
                journal = sum(f.stat().st_size for f in data.iterdir() if f.is_file())
                server.proc.kill9()
                restarted = P.start_rankq(
                    self.procs, self._name("rankq-restart"), data, self.grpc, ports=server.ports, extra=p.server_args
                )
                t0 = time.monotonic()
                P.wait_until(lambda: P.http_ready(restarted.base), 600, restarted.proc, "/readyz after restart")
                t_ready = time.monotonic() - t0
                P.wait_until(
                    lambda: P.queue_counts(restarted)["ready"] == p.fill_count,
                    600,
                    restarted.proc,
                    "all messages back after restart",
                    poll=0.05,
                )
                t_all = time.monotonic() - t0
                mem_restarted = restarted.proc.memory()
                restarted.proc.stop()
            finally:
                server.proc.stop()
                shutil.rmtree(data, ignore_errors=True)
            scale = 1_000_000 / p.fill_count / MiB
            per_million = (mem1["VmRSS"] - mem0["VmRSS"]) * scale
            runs.append(
                {
                    "rss_before_mib": mem0["VmRSS"] / MiB,
                    "rss_after_mib": mem1["VmRSS"] / MiB,
                    "rss_per_million_mib": per_million,
                    "anon_per_million_mib": (mem1.get("RssAnon", 0) - mem0.get("RssAnon", 0)) * scale,
                    "file_per_million_mib": (mem1.get("RssFile", 0) - mem0.get("RssFile", 0)) * scale,
                    "rss_after_restart_mib": mem_restarted["VmRSS"] / MiB,
                    "fill_rate": fill["rate"],
                    "fill_seconds": fill["seconds"],
                    "data_dir_mib": journal / MiB,
                    "restart_ready_s": t_ready,
                    "restart_all_s": t_all,
                }
            )
            # The floor: the same server starting on an empty data dir.
            name = self._name("rankq-empty")
            empty = P.start_rankq(self.procs, name, self.workdir / name, self.grpc, extra=p.server_args)
            t0 = time.monotonic()
            try:
                P.wait_until(lambda: P.http_ready(empty.base), 60, empty.proc, "/readyz of an empty server")
                floors.append(time.monotonic() - t0)
            finally:
                self.drop(empty)
            log(
                f"memory/restart rep {i + 1}/{p.reps}: {per_million:,.0f} MiB per 1M, restart {t_all:.1f}s "
                f"(empty start {floors[-1]:.1f}s), fill {fill['rate']:,.0f} msg/s"
            )
        return {"runs": runs, "empty_start_s": floors}


# ---- the run ---------------------------------------------------------------------------------------


def summarise(name: str, raw: dict, unit: str, higher_is_better: bool = True, target_key: str | None = None) -> dict:
    rq = median(r["value"] for r in raw["rankq"])
    nl = median(r["value"] for r in raw["null"])
    target = TARGETS.get(target_key or name)
    out = {
        "unit": unit,
        "rankq": rq,
        "null": nl,
        "ratio": (rq / nl) if rq and nl else None,
        "rankq_server_cpu_percent": median(r.get("server_cpu_percent") for r in raw["rankq"]),
        "null_server_cpu_percent": median(r.get("server_cpu_percent") for r in raw["null"]),
        "rankq_cpu_us_per_msg": median(r.get("server_cpu_us_per_msg") for r in raw["rankq"]),
        "null_cpu_us_per_msg": median(r.get("server_cpu_us_per_msg") for r in raw["null"]),
        "runs": raw,
    }
    if target:
        op, value = target
        out["target"] = f"{op} {value:,g} {unit}"
        out["met"] = (rq >= value) if op == ">=" else (rq <= value)
    return out


def summarise_replicated(name: str, raw: dict, unit: str) -> dict:
    """Group (to its leader) vs single node; CPU of the leader, of each other member and of the group."""
    grp, one = raw["group"], raw["single"]
    g, s = median(r["value"] for r in grp), median(r["value"] for r in one)
    out = {
        "unit": unit,
        "rankq": g,
        "single": s,
        "ratio": (g / s) if g and s else None,
        "leader_cpu_percent": median(r.get("server_cpu_percent") for r in grp),
        "other_cpu_percent": median(statistics.mean(r["other_cpu_percent"]) for r in grp if r.get("other_cpu_percent")),
        "group_cpu_percent": median(r.get("group_cpu_percent") for r in grp),
        "group_cpu_us_per_msg": median(r.get("group_cpu_us_per_msg") for r in grp),
        "leader_cpu_us_per_msg": median(r.get("server_cpu_us_per_msg") for r in grp),
        "single_cpu_percent": median(r.get("server_cpu_percent") for r in one),
        "single_cpu_us_per_msg": median(r.get("server_cpu_us_per_msg") for r in one),
        "runs": raw,
    }
    op, value = TARGETS[name]
    out["target"] = f"{op} {value:,g} {unit}"
    out["met"] = g is not None and ((g >= value) if op == ">=" else (g <= value))
    return out


def raft_settings() -> dict:
    """The Raft timing every member runs with (the server's defaults; `rankq server` has no flags for them)."""
    from dataclasses import fields

    from rankq.replication.node import RaftSettings

    keep = ("election_timeout", "heartbeat_period", "leader_fallback_timeout", "tick_period", "connection_timeout")
    return {f.name: f.default for f in fields(RaftSettings) if f.name in keep}


def wrk_version(path: str) -> str | None:
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    words = (done.stdout + done.stderr).split()
    return words[1] if len(words) > 1 and words[0] == "wrk" else None


def meta(plan: Plan, tools: dict) -> dict:
    def cmd(args):
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=ROOT).stdout.strip()
        except Exception:
            return None

    def have(mod):
        try:
            __import__(mod)
            return True
        except ImportError:
            return False

    import grpc
    import uvicorn

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": cmd(["git", "rev-parse", "--short", "HEAD"]),
        "worktree_dirty": bool(cmd(["git", "status", "--porcelain", "--untracked-files=no"])),
        "python": platform.python_version(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "loadavg_start": os.getloadavg()[0],
        "uvicorn": uvicorn.__version__,
        "uvloop": have("uvloop"),
        "httptools": have("httptools"),
        "grpcio": grpc.__version__,
        "wrk": wrk_version(tools["WRK"]),
        "payload_bytes": PAYLOAD_BYTES,
        "plan": asdict(plan),
    }


def wait_quiet(limit: float) -> dict:
    """Wait up to `limit` seconds for the machine to be nearly idle (other work skews every figure)."""
    cores = os.cpu_count() or 1
    deadline = time.monotonic() + limit
    first = True
    while True:
        now = P.machine_load()
        if now["loadavg"] < 0.75 * cores and now.get("cpu_pressure", 0) < 20:
            return now
        if time.monotonic() > deadline:
            log(f"machine still busy ({now}); measuring anyway")
            return now
        if first:
            log(f"machine busy ({now}); waiting up to {limit:.0f}s for it to quieten")
            first = False
        time.sleep(5)


def run(plan: Plan, only: list[str], workdir: Path, quiet: float = 0) -> dict:
    tools = setup_tools()
    load_at_start = wait_quiet(quiet) if quiet > 0 else P.machine_load()
    results = {"meta": {**meta(plan, tools), "load_at_start": load_at_start}, "results": {}}
    res = results["results"]
    b = Bench(plan, tools, workdir)
    try:
        if "http_single" in only or "latency" in only:
            log("HTTP enqueue, one message per request")
            raw = b.compare(
                "http_single",
                b.http_enqueue(1, plan.single_conns, b.single_body),
                lambda: P.start_null_http(b.procs, b._name("null-http")),
            )
            res["http_single"] = summarise("http_single", raw, "msg/s")
        if "http_batch" in only:
            log(f"HTTP enqueue, {plan.batch} messages per request")
            raw = b.compare(
                "http_batch",
                b.http_enqueue(plan.batch, plan.batch_conns, b.batch_body),
                lambda: P.start_null_http(b.procs, b._name("null-http")),
            )
            res["http_batch"] = summarise("http_batch", raw, "msg/s")
        if "grpc_stream" in only or ("latency" in only and b.grpc):
            if b.grpc:
                log("gRPC EnqueueStream")
                raw = b.compare("grpc_stream", b.grpc_measure, lambda: P.start_null_grpc(b.procs, b._name("null-grpc")))
                res["grpc_stream"] = summarise("grpc_stream", raw, "msg/s")
            else:
                res["grpc_stream"] = {"skipped": "rankq/server/grpc_api.py is not there yet"}
        if "pairs" in only:
            log("enqueue -> dequeue -> ack pairs")
            raw = b.compare("pairs", b.pairs_measure, lambda: P.start_null_http(b.procs, b._name("null-http")))
            res["pairs"] = summarise("pairs", raw, "pairs/s")
        if "latency" in only:
            rate = res["http_single"]["rankq"] / 2
            log(f"HTTP enqueue latency, paced at {rate:,.0f}/s (half the measured peak)")
            raw = b.compare(
                "latency_http", b.paced_http(rate), lambda: P.start_null_http(b.procs, b._name("null-http"))
            )
            res["latency_http"] = summarise("latency_http", raw, "ms", higher_is_better=False, target_key="latency_p99")
            res["latency_http"]["rate"] = rate
            if "grpc_stream" in res and "rankq" in res["grpc_stream"]:
                rate = res["grpc_stream"]["rankq"] / 2
                log(f"gRPC EnqueueStream latency, paced at {rate:,.0f}/s (half the measured peak)")
                raw = b.compare(
                    "latency_grpc", b.paced_grpc(rate), lambda: P.start_null_grpc(b.procs, b._name("null-grpc"))
                )
                res["latency_grpc"] = summarise(
                    "latency_grpc", raw, "ms", higher_is_better=False, target_key="latency_p99"
                )
                res["latency_grpc"]["rate"] = rate
        if "memory_restart" in only:
            log(f"memory per {plan.fill_count:,} queued {PAYLOAD_BYTES}-byte messages, and restart after kill -9")
            raw = b.memory_restart()
            rss = median(r["rss_per_million_mib"] for r in raw["runs"])
            res["memory"] = {
                "unit": "MiB per 1M messages",
                "rankq": rss,
                # the ceiling: the payload bytes alone
                "null": PAYLOAD_BYTES * 1_000_000 / MiB,
                "ratio": rss / (PAYLOAD_BYTES * 1_000_000 / MiB),
                "target": "<= 300 MiB per 1M messages",
                "met": rss <= 300,
                "fill_count": plan.fill_count,
                "fill_rate": median(r["fill_rate"] for r in raw["runs"]),
                "data_dir_mib": median(r["data_dir_mib"] for r in raw["runs"]),
                "anon_per_million_mib": median(r["anon_per_million_mib"] for r in raw["runs"]),
                "file_per_million_mib": median(r["file_per_million_mib"] for r in raw["runs"]),
                "rss_after_restart_mib": median(r["rss_after_restart_mib"] for r in raw["runs"]),
                "runs": raw["runs"],
            }
            res["restart"] = {
                "unit": "s",
                "rankq": median(r["restart_all_s"] for r in raw["runs"]),
                "ready_s": median(r["restart_ready_s"] for r in raw["runs"]),
                "null": median(raw["empty_start_s"]),
                "fill_count": plan.fill_count,
                "runs": [
                    {"restart_ready_s": r["restart_ready_s"], "restart_all_s": r["restart_all_s"]} for r in raw["runs"]
                ],
                "empty_start_s": raw["empty_start_s"],
            }
            res["restart"]["ratio"] = res["restart"]["rankq"] / res["restart"]["null"]
        if "replicated" in only:
            measures = {"replicated_http_batch": b.http_enqueue(plan.batch, plan.batch_conns, b.batch_body)}
            if b.grpc:
                measures["replicated_grpc_stream"] = b.grpc_measure
            log(f"{plan.group_size}-node group vs single node: " + ", ".join(measures))
            raw = b.compare_replicated(measures)
            for key, sides in raw.items():
                res[key] = summarise_replicated(key, sides, "msg/s")
        if "failover" in only:
            log(f"failover: {plan.failover_kills} kills of the leader of a {plan.group_size}-node group")
            raw = asyncio.run(F.run_failover(b, plan.failover_kills, plan.failover_budget, log=log))
            res["failover"] = F.summary(raw, raft_settings(), TARGETS["failover_p99"])
        if "dashboard" in only:
            from . import dashboard as D

            log("dashboard live feed: HTTP enqueue with 0 and 50 open feeds (bench/dashboard.py)")
            res["dashboard"] = D.measure(b, log=log)
    finally:
        b.procs.close()
    results["meta"]["loadavg_end"] = os.getloadavg()[0]
    samples = [r for x in res.values() if isinstance(x.get("runs"), dict) for side in x["runs"].values() for r in side]
    pressure = [r["cpu_pressure"] for r in samples if "cpu_pressure" in r]
    if pressure:
        results["meta"]["cpu_pressure_median"] = median(pressure)
        results["meta"]["cpu_pressure_max"] = max(pressure)
    return results


# ---- report ----------------------------------------------------------------------------------------


def fmt(v, unit: str) -> str:
    if v is None:
        return "–"
    if unit == "ms" or unit == "s":
        return f"{v:,.2f} {unit}" if v < 100 else f"{v:,.0f} {unit}"
    if "MiB" in unit:
        return f"{v:,.0f} MiB"
    return f"{v:,.0f} {unit}"


def markdown(results: dict) -> str:
    m, r = results["meta"], results["results"]
    reps = m["plan"]["reps"]
    lines = [
        "# RankQ benchmark",
        "",
        f"Single node, {m['cores']} cores ({m['cpu']}), Python {m['python']}, uvicorn {m['uvicorn']} "
        f"(uvloop {'yes' if m['uvloop'] else 'no'}, httptools {'yes' if m['httptools'] else 'no'}), grpcio {m['grpcio']}; "
        f"commit {m['commit']}{' (with uncommitted changes)' if m['worktree_dirty'] else ''}, {m['date']}. "
        f"Load average {m['loadavg_start']:.1f} at the start, {m.get('loadavg_end', 0):.1f} at the end; "
        + (
            f"CPU pressure (share of time a runnable task waited for a core, 10 s average) after each measurement: "
            f"median {m['cpu_pressure_median']:.0f}%, max {m['cpu_pressure_max']:.0f}%. "
            if "cpu_pressure_median" in m
            else ""
        )
        + "The load generators share the two cores with the server; other work on the machine slows RankQ and "
        "the null server alike, so the ratios are steadier than the absolute figures.",
        "",
        f"Medians of {reps} repetitions. *Null* is a server on the same stack whose handlers only parse and answer "
        f"(the framework ceiling), measured in the same run; *ratio* = RankQ / null. {m['payload_bytes']}-byte "
        "payloads; every enqueue is committed to the Raft journal before it is answered.",
        "",
        "| Measure | RankQ | Null server | Ratio | Server CPU: RankQ (null), µs/msg | Target | Met |",
        "| --- | ---: | ---: | ---: | ---: | --- | :---: |",
    ]
    plan = m["plan"]
    rows = [
        ("http_single", f"HTTP enqueue, 1 msg/request ({plan['single_conns']} connections)"),
        ("http_batch", f"HTTP enqueue, {plan['batch']} msg/request ({plan['batch_conns']} connections)"),
        ("grpc_stream", f"gRPC EnqueueStream ({plan['grpc_streams']} streams × {plan['grpc_window']} in flight)"),
        (
            "pairs",
            f"enqueue → dequeue → ack ({plan['pair_producers']} producers, {plan['pair_consumers']} consumers, "
            f"batches of {plan['pair_max']})",
        ),
    ]
    for key, label in rows:
        x = r.get(key)
        if not x:
            continue
        if "skipped" in x:
            lines.append(f"| {label} | skipped: {x['skipped']} | | | | | |")
            continue
        lines.append(_row(label, x))
    for key, transport in (("latency_http", "HTTP"), ("latency_grpc", "gRPC stream")):
        x = r.get(key)
        if not x:
            continue
        p50 = median(v["p50_ms"] for v in x["runs"]["rankq"])
        p50n = median(v["p50_ms"] for v in x["runs"]["null"])
        lines.append(
            f"| {transport} enqueue p50 at {x['rate']:,.0f} msg/s (half of RankQ's peak, open loop) | {fmt(p50, 'ms')} | "
            f"{fmt(p50n, 'ms')} | {p50 / p50n:.1f}× | | | |"
        )
        lines.append(_row(f"{transport} enqueue **p99** at {x['rate']:,.0f} msg/s", x, times=True))
    if "memory" in r:
        x = r["memory"]
        lines.append(
            f"| RSS per 1M queued messages (filled {x['fill_count']:,} in batches of {plan['fill_batch']} "
            f"at {x['fill_rate']:,.0f} msg/s) | {fmt(x['rankq'], 'MiB')} | {fmt(x['null'], 'MiB')} (payload bytes) | "
            f"{x['ratio']:.1f}× | anonymous {x['anon_per_million_mib']:,.0f} MiB + file pages "
            f"{x['file_per_million_mib']:,.0f} MiB; data dir {x['data_dir_mib']:,.0f} MiB | {x['target']} | {_met(x)} |"
        )
    if "restart" in r:
        x = r["restart"]
        lines.append(
            f"| Restart after kill -9 with {x['fill_count']:,} queued (until /readyz and all ready; "
            f"/readyz alone {x['ready_s']:.1f} s) | {fmt(x['rankq'], 's')} | {fmt(x['null'], 's')} (empty data dir) | "
            f"{x['ratio']:.1f}× | | | |"
        )
    if "dashboard" in r:
        x = r["dashboard"]
        lines.append(
            f"| HTTP enqueue with {x['clients']} open dashboard feeds (vs none, same server, runs alternated) | "
            f"{fmt(x['with'], 'msg/s')} | {fmt(x['without'], 'msg/s')} (no feed) | cost {x['cost']:.1%} (paired runs) | "
            f"feed alone {x['feed_cpu_percent_of_core']:.2f}% of a core | "
            f"{x['target']} | {_met(x)} |"
        )
    lines += ["", "Ratios for latency are RankQ / null (lower is better for both).", ""]
    lines += replicated_markdown(r, plan)
    details = ["## Per-run values", ""]
    for key, x in r.items():
        if "runs" not in x:
            continue
        if key == "failover":
            details.append(
                "- failover, per kill (s): "
                + ", ".join("none" if v["failover_s"] is None else f"{v['failover_s']:.2f}" for v in x["runs"])
            )
            details.append(
                "- election, per kill (s): "
                + ", ".join("–" if v.get("elected_s") is None else f"{v['elected_s']:.2f}" for v in x["runs"])
            )
        elif isinstance(x["runs"], dict):
            sides = "; ".join(
                f"{'RankQ' if side == 'rankq' else side} " + ", ".join(f"{v['value']:,.1f}" for v in vals)
                for side, vals in x["runs"].items()
            )
            details.append(f"- {key} ({x['unit']}): {sides}")
        else:
            details.append(
                f"- {key}: " + "; ".join(", ".join(f"{k}={v:,.1f}" for k, v in run.items()) for run in x["runs"])
            )
    lines += details + [""]
    notes = HERE / "analysis.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    return "\n".join(lines)


def replicated_markdown(r: dict, plan: dict) -> list[str]:
    lines = []
    rows = [
        (k, label)
        for k, label in (
            ("replicated_http_batch", f"HTTP enqueue, {plan['batch']} msg/request ({plan['batch_conns']} connections)"),
            (
                "replicated_grpc_stream",
                f"gRPC EnqueueStream ({plan['grpc_streams']} streams × {plan['grpc_window']} in flight)",
            ),
        )
        if k in r
    ]
    if rows:
        size = plan.get("group_size", 3)
        lines += [
            f"## Replicated: a {size}-node group on this machine vs. a single node",
            "",
            f"The load goes to the leader of a fresh {size}-node group (all {size} `rankq server` processes on this "
            f"machine's {os.cpu_count()} cores, with the load generator), and in the same run to a fresh single node. "
            f"A write is answered once a majority ({size // 2 + 1} of {size}) has it in its journal. Medians of "
            f"{plan['reps']} repetitions; *ratio* = group / single node. Server CPU is the share of one core each "
            "process used during the measured run; µs/msg is CPU time per message summed over all members "
            "(single node: its own).",
            "",
            "| Measure | Group (to leader) | Single node | Ratio | CPU: leader, each other member, group total (single) | "
            "µs/msg: group (single) | Target | Met |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | :---: |",
        ]
        for key, label in rows:
            x = r[key]
            ratio = "–" if x["ratio"] is None else f"{x['ratio']:.0%}"
            cpu = (
                f"{_pct(x['leader_cpu_percent'])}, {_pct(x['other_cpu_percent'])}, {_pct(x['group_cpu_percent'])} "
                f"({_pct(x['single_cpu_percent'])})"
            )
            us = f"{_num(x['group_cpu_us_per_msg'])} ({_num(x['single_cpu_us_per_msg'])})"
            lines.append(
                f"| {label} | {fmt(x['rankq'], x['unit'])} | {fmt(x['single'], x['unit'])} | {ratio} | {cpu} | "
                f"{us} | {x['target']} | {_met(x)} |"
            )
        lines.append("")
    x = r.get("failover")
    if x:
        st, cl = x["settings"], x["client"]
        et = st.get("election_timeout") or [None, None]
        loads = [v["loadavg"] for v in x["runs"]]
        pressure = [v["cpu_pressure"] for v in x["runs"] if "cpu_pressure" in v]
        lines += [
            "## Failover: kill -9 of the leader",
            "",
            f"A {plan.get('group_size', 3)}-node group; a client sends small enqueues with dedup keys "
            f"({cl['senders']} senders, one request per {cl['interval_s'] * 1000:.0f} ms each at most, "
            f"{cl['timeout_s']:g} s timeout, to all members in turn). The leader gets SIGKILL at a recorded "
            "instant, after 2.5-3 s of steady writes (longer than the Raft connection timeout, as in a group "
            "that has run for a while); *failover* is the time from the kill to the answer "
            "of the first enqueue sent after the kill that got 201 (it names the new leader in `X-RankQ-Leader`). "
            "*Election* is from the kill to the first poll (every 20 ms) in which a survivor's /api/v1/cluster "
            "names a new leader; *leader lost* is when a survivor first stopped naming the old one (its election "
            "timeout ran out). The killed node then starts again and catches up (same queue counts as the "
            "leader) before the next kill.",
            "",
            f"Raft settings: election timeout {et[0]:g}-{et[1]:g} s (random per term), heartbeat every "
            f"{st.get('heartbeat_period', 0):g} s, a leader without a majority steps down after "
            f"{st.get('leader_fallback_timeout', 0):g} s, Raft tick {st.get('tick_period', 0):g} s. "
            f"{x['kills']} kills in {x['seconds']:.0f} s"
            + (
                f", {x['failed']} without an accepted write within {F.FAILOVER_DEADLINE:g} s (counted as that)"
                if x["failed"]
                else ""
            )
            + f". Load average during the kills: median {median(loads):.1f}"
            + (f", CPU pressure median {median(pressure):.0f}%" if pressure else "")
            + (
                ". Raft terms each election took: "
                + ", ".join(f"{k} in {v} kill{'s' if v != 1 else ''}" for k, v in x["election_rounds"].items())
                if x.get("election_rounds")
                else ""
            )
            + (
                f". Every write answered 201 ({x['acked']:,}) is in the final queue."
                if x.get("acked_all_kept")
                else f". Writes answered 201: {x['acked']:,}; final counts {x['final_counts']}."
            ),
            "",
            "| From the kill to | n | p50 | p90 | p99 | max | Target | Met |",
            "| --- | ---: | ---: | ---: | ---: | ---: | --- | :---: |",
        ]
        for key, label in (
            ("failover", "**first write accepted by the new leader** (failover)"),
            ("election", "a survivor names the new leader (election)"),
            ("leader_lost", "a survivor stops naming the old leader (election timeout)"),
        ):
            d = x[key]
            target = (x["target"], _met(x)) if key == "failover" else ("", "")
            lines.append(
                f"| {label} | {d['n']} | {fmt(d['p50'], 's')} | {fmt(d['p90'], 's')} | {fmt(d['p99'], 's')} | "
                f"{fmt(d['max'], 's')} | {target[0]} | {target[1]} |"
            )
        for key, label in (
            ("after_election", "From the election to the first accepted write (± the 20 ms poll)"),
            ("catch_up", "Restart of the killed node until it is caught up"),
        ):
            d = x[key]
            lines.append(
                f"| {label} | {d['n']} | {fmt(d['p50'], 's')} | {fmt(d['p90'], 's')} | {fmt(d['p99'], 's')} | "
                f"{fmt(d['max'], 's')} | | |"
            )
        if x["kills"] <= 100:
            lines += ["", f"Quantiles by nearest rank: with {x['kills']} kills the p99 is the largest value."]
        lines.append("")
    return lines


def _pct(v) -> str:
    return "–" if v is None else f"{v:.0f}%"


def _num(v) -> str:
    return "–" if v is None else f"{v:.0f}"


def _met(x: dict) -> str:
    if "met" not in x:
        return ""
    return "yes" if x["met"] else "**no**"


def _row(label: str, x: dict, times: bool = False) -> str:
    ratio = "–" if x.get("ratio") is None else f"{x['ratio']:.1f}×" if times else f"{x['ratio']:.0%}"
    cpu, cpu_null = x.get("rankq_server_cpu_percent"), x.get("null_server_cpu_percent")
    cell = "" if cpu is None else f"{cpu:.0f}% ({cpu_null:.0f}%)" if cpu_null is not None else f"{cpu:.0f}%"
    us, us_null = x.get("rankq_cpu_us_per_msg"), x.get("null_cpu_us_per_msg")
    if us is not None and us_null is not None:
        cell += f", {us:.0f} ({us_null:.0f}) µs"
    return (
        f"| {label} | {fmt(x['rankq'], x['unit'])} | {fmt(x['null'], x['unit'])} | {ratio} | "
        f"{cell} | {x.get('target', '')} | {_met(x)} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="RankQ single-node benchmark (results in bench/results/).")
    parser.add_argument("--quick", action="store_true", help="one short repetition each; results in a temp dir")
    parser.add_argument("--reps", type=int, help="repetitions of each measure (default 3)")
    parser.add_argument("--only", help="comma-separated subset of: " + ", ".join(SCENARIOS))
    parser.add_argument("--out", help="results path prefix (default bench/results/latest; --quick: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir (server logs, data dirs)")
    parser.add_argument("--server-arg", action="append", default=[], help="extra argument for `rankq server`")
    parser.add_argument(
        "--render",
        action="store_true",
        help="only rewrite the markdown from the results JSON (e.g. after editing bench/analysis.md)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=None,
        metavar="SECONDS",
        help="first wait up to this long for the machine to be nearly idle (default 120; --quick 0)",
    )
    args = parser.parse_args(argv)
    # make's SIGTERM (or a CI timeout) still stops every process the run started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.render:
        out = Path(args.out) if args.out else HERE / "results" / "latest"
        Path(f"{out}.md").write_text(markdown(json.loads(Path(f"{out}.json").read_text())))
        log(f"wrote {out}.md")
        return 0
    plan = Plan.quick() if args.quick else Plan()
    if args.reps:
        plan.reps = args.reps
    plan.server_args = args.server_arg
    only = SCENARIOS if not args.only else [s.strip() for s in args.only.split(",")]
    unknown = set(only) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown measure(s): {', '.join(sorted(unknown))}")
    workdir = Path(tempfile.mkdtemp(prefix="rankq-bench-"))
    out = Path(args.out) if args.out else (workdir / "results" if args.quick else HERE / "results" / "latest")
    started = time.monotonic()
    try:
        quiet = args.wait_quiet if args.wait_quiet is not None else (0 if args.quick else 120)
        results = run(plan, only, workdir, quiet)
    except Failure as err:
        log(f"benchmark failed: {err}")
        log(f"logs kept in {workdir / 'logs'}")
        return 1
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(results, indent=2) + "\n")
    Path(f"{out}.md").write_text(markdown(results))
    print(Path(f"{out}.md").read_text())
    log(f"wrote {out}.json and {out}.md in {results['meta']['seconds']:.0f}s")
    if not args.keep and not args.quick:
        shutil.rmtree(workdir, ignore_errors=True)
    elif args.quick or args.keep:
        log(f"work dir kept: {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
