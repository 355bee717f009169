"""One message per request, and draining: `python -m bench.hotpath` (part of `make bench`).

In one run, alternating, with the same load generators as bench.security_cost (100-byte payloads,
load to the leader, closed mode: peer secret and API token):

- `current`: this tree as a 3-node group;
- `single`: this tree as one node (a single process: the design's gain must show against it);
- `before`: the commit before the hot routes (`--before`, built into its own venv once);
- null servers, the framework floors: `null-asgi` (bare ASGI on uvicorn, what the hot routes
  run on), `null-fastapi` (RankQ's routes on FastAPI, doing nothing) and `null-grpc` (grpc.aio).

Paths: `http_single` (one message per request, 50 connections), `grpc_unary` (one per call, 50
clients), `drain` (dequeue(max=100) + batch ack, 4 consumers), `http_batch` (100 per request, a
regression check). Medians of `--reps` repetitions; CPU per message summed over the group.

    python -m bench.hotpath                      # writes bench/results/hotpath.{json,md}
    python -m bench.hotpath --reps 1 --duration 4 --out /tmp/hp   # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import httpx

from . import procs as P
from . import security_cost as sc
from .procs import Failure, Server

HERE = Path(__file__).resolve().parent
BEFORE = "7368e20acb3e43e2d1db8b70898b8cdb113a7e6e"  # main before the hot routes
# in this order, each on an emptied queue after the machine has gone quiet: the one-message paths
# first, on a fresh group (after a run of large batches the group stays slower for a while)
PATHS = ["http_single", "http_p99_half", "grpc_unary", "http_batch", "drain"]
ARMS = ["current", "single", "before"]
NULLS = {"null-asgi": "bench.null_asgi", "null-fastapi": "bench.null_http", "null-grpc": "bench.null_grpc"}
TARGETS = {"http_single": 15_000, "grpc_unary": 15_000, "drain": 120_000, "http_batch": 66_000, "http_p99_half": 5.0}
LABELS = {
    **sc.LABELS,
    "http_p99_half": "HTTP enqueue p99 (ms) at half of the 1 msg/request peak, open loop, 50 connections",
}
PACED_SECONDS = 8.0


def cpu_busy(seconds: float = 0.5) -> float:
    """The machine's busy share of all cores over `seconds` (from /proc/stat)."""

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (b1 - b0) / max(1, t1 - t0)


def settle(limit: float = 60.0, quiet: float = 0.25) -> float:
    """Wait (at most `limit` s) until the machine is quiet: the members have applied what the last
    path sent and their snapshot children are done, so no path pays for the one before it."""
    start = time.monotonic()
    while time.monotonic() - start < limit and cpu_busy() > quiet:
        pass
    return time.monotonic() - start


def fresh_queue(g: sc.Group, name: str) -> None:
    """Delete the queue (if any) and create it again: no path inherits another's backlog."""
    r = httpx.delete(f"{g.leader.base}/api/v1/queues/{name}", headers=g.headers, timeout=30.0)
    if r.status_code not in (204, 404):
        raise Failure(f"delete queue {name!r}: {r.status_code} {r.text[:200]}")
    g.create_queue(name)


class HotBench(sc.Bench):
    """bench.security_cost's paths, plus the p99 of single enqueues paced at half the arm's peak."""

    def run_arm(self, build: sc.Build, paths: list[str]) -> dict:
        self.count += 1
        name = f"{self.count:02d}-{build.name}"
        g = sc.Group(self.procs, build, self.workdir / name, self.plan.group_size, name)
        try:
            g.ready()
            out: dict = {}
            for path in paths:
                if path != "http_p99_half":  # every path starts from an empty queue (the paced one
                    fresh_queue(g, "bench")  # follows its peak run on the same queue)
                settle()
                if path == "drain":
                    out[path] = self.drain(g)
                elif path == "grpc_unary":
                    out[path] = self.grpc_unary(g)
                elif path == "http_p99_half":
                    out[path] = self.paced(g, out["http_single"]["value"] / 2)
                else:
                    out[path] = self.http_enqueue(g, self.plan.batch if path == "http_batch" else 1)
            return out
        finally:
            g.stop()

    def paced(self, g: sc.Group, rate: float) -> dict:
        args = [
            self.tools["RANKQ_LOAD"],
            "http-paced",
            "-url",
            g.leader.base + "/api/v1/queues/bench/messages",
            "-body",
            self.single_body.read_text(),
            "-rate",
            f"{rate:.0f}",
            "-duration",
            f"{PACED_SECONDS}s",
            "-warmup",
            f"{self.plan.warmup}s",
            "-conns",
            str(self.plan.clients),
        ]
        with P.group_cpu_meter(g.leader) as cpu:
            r = self.tool(args, g.env, PACED_SECONDS + 60)
        if r["errors"]:
            raise Failure(f"paced HTTP against {g.build.name}: {r}")
        lat = r["latency"]
        share = PACED_SECONDS / (PACED_SECONDS + self.plan.warmup)
        return self.result(
            lat["p99_ms"], r.get("sent") or 1, cpu, share, p50_ms=lat["p50_ms"], p99_ms=lat["p99_ms"], paced_rate=rate
        )


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def start_null(b: sc.Bench, kind: str) -> SimpleNamespace:
    """A null server dressed as a group of one (what Bench's load methods take)."""
    port = P.free_port()
    proc = b.procs.spawn(f"{kind}-{time.monotonic_ns()}", [sys.executable, "-m", NULLS[kind], "--port", str(port)])
    P.wait_until(lambda: P.port_open(port), 30.0, proc, "the null server's port")
    grpc = kind == "null-grpc"
    server = Server(kind, proc, None if grpc else port, port if grpc else None)
    env = {k: v for k, v in os.environ.items() if k != "RANKQ_API_TOKEN"}
    build = SimpleNamespace(name=kind, proto=HERE.parent / "rankq" / "server" / "proto" / "rankq.proto")
    return SimpleNamespace(leader=server, env=env, build=build)


def run_null(b: sc.Bench, kind: str) -> dict:
    g = start_null(b, kind)
    try:
        if kind == "null-grpc":
            return {"grpc_unary": b.grpc_unary(g)}  # type: ignore[arg-type]
        return {"http_single": b.http_enqueue(g, 1)}  # type: ignore[arg-type]
    finally:
        g.leader.proc.stop()


def engine_floor(messages: int = 100_000) -> dict:
    """The engine alone, in this process (no I/O): µs per message to enqueue (batches of 100) and to
    lease + ack (dequeue 100, ack 100). Every member of a group applies every one of these."""
    from rankq.engine import Engine
    from rankq.engine import commands as c

    engine = Engine()
    engine.apply(c.CreateQueue("q", {}, os.urandom(16)), 0)
    payload = '"' + "x" * 98 + '"'
    t0 = time.perf_counter()
    for _ in range(0, messages, 100):
        engine.apply(c.Enqueue("q", tuple(c.NewMessage(payload) for _ in range(100))), 1000)
    t1 = time.perf_counter()
    for _ in range(0, messages, 100):
        got = engine.apply(c.Dequeue("q", 100, None), 2000)
        engine.apply(c.Ack("q", tuple(c.AckItem(d.id, d.lease_token, None) for d in got)), 2001)
    t2 = time.perf_counter()
    return {"enqueue_us": (t1 - t0) / messages * 1e6, "lease_ack_us": (t2 - t1) / messages * 1e6}


def summarise(runs: dict[str, list[dict]]) -> dict:
    out: dict = {}
    for arm, reps in runs.items():
        for path in PATHS:
            values = [r[path] for r in reps if path in r]
            if not values:
                continue
            cpu = [v["group_cpu_us_per_msg"] for v in values if v.get("group_cpu_us_per_msg") is not None]
            p99 = [v["p99_ms"] for v in values if v.get("p99_ms") is not None]
            out.setdefault(path, {})[arm] = {
                "median": statistics.median(v["value"] for v in values),
                "values": [round(v["value"], 1) for v in values],
                "cpu_us_per_msg": statistics.median(cpu) if cpu else None,
                "p99_ms": statistics.median(p99) if p99 else None,
            }
    return out


def markdown(res: dict) -> str:
    meta, r = res["meta"], res["results"]
    lines = [
        "# One message per request, and draining (bench.hotpath)",
        "",
        f"{meta['cores']} cores, Python {meta['python']}, {meta['date']}; this tree {meta['commits']['current'][:12]}, "
        f"before {meta['commits']['before'][:12]}. Medians of {meta['plan']['reps']} repetitions, arms alternated. "
        "100-byte payloads; groups in closed mode (peer secret, API token on every request); load to the leader; "
        "the load generators share the machine's cores with every member.",
        "",
        "| Path | 3 nodes (this tree) | 1 node (this tree) | 3 nodes (before) | null servers | group µs/msg now (before) | target | met |",
        "| --- | ---: | ---: | ---: | --- | ---: | ---: | :---: |",
    ]
    for path in PATHS:
        row = r.get(path, {})
        cur, one, before = row.get("current"), row.get("single"), row.get("before")
        nulls = ", ".join(f"{k} {row[k]['median']:,.0f}" for k in NULLS if k in row) or ""

        def fmt(x):
            return f"{x['median']:,.0f}" if x else "-"

        def us(x):
            return f"{x['cpu_us_per_msg']:,.0f}" if x and x.get("cpu_us_per_msg") else "-"

        if path == "http_p99_half":
            met = "yes" if cur and cur["median"] <= TARGETS[path] else "**no**"
            lines.append(
                f"| {LABELS[path]} | {cur['median']:.1f} | {one['median']:.1f} | {before['median']:.1f} | | | "
                f"≤ {TARGETS[path]:g} ms | {met} |"
                if cur and one and before
                else f"| {LABELS[path]} | - | - | - | | | ≤ {TARGETS[path]:g} ms | - |"
            )
            continue
        met = "yes" if cur and cur["median"] >= TARGETS[path] else "**no**"
        lines.append(
            f"| {LABELS[path]} | {fmt(cur)} | {fmt(one)} | {fmt(before)} | {nulls} | {us(cur)} ({us(before)}) "
            f"| ≥ {TARGETS[path]:,} | {met} |"
        )
    lines += [
        "",
        "p99 of one-message requests at full load (ms): "
        + "; ".join(
            f"{path} {arm} {r[path][arm]['p99_ms']:.1f}"
            for path in ("http_single", "grpc_unary")
            for arm in ARMS
            if arm in r.get(path, {}) and r[path][arm].get("p99_ms") is not None
        ),
        "",
        "Per-run values (msg/s; ms for the p99 row):",
        "",
    ]
    for path in PATHS:
        for arm, x in r.get(path, {}).items():
            lines.append(f"- {path} {arm}: {', '.join(f'{v:,.1f}' for v in x['values'])}")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default=BEFORE, help="the commit to compare with (default: main before the hot routes)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--duration", type=float, default=6.0, help="measured seconds per throughput run")
    ap.add_argument("--out", default=str(HERE / "results" / "hotpath"), help="results path prefix (.json, .md)")
    ap.add_argument("--render", action="store_true", help="only rewrite the markdown from the results JSON")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.render:
        Path(f"{args.out}.md").write_text(markdown(json.loads(Path(f"{args.out}.json").read_text())))
        return 0
    plan = sc.Plan(reps=args.reps, duration=args.duration)
    from .run import setup_tools

    tools = setup_tools()
    current = sc.current_build()
    builds = {
        "current": current,
        "single": replace(current, name="single"),
        "before": replace(sc.baseline_build(args.before), name="before", secret=True, token=True),
    }
    b = HotBench(plan, tools, Path(tempfile.mkdtemp(prefix="rankq-bench-hotpath-")))
    runs: dict[str, list[dict]] = {arm: [] for arm in [*ARMS, *NULLS]}
    started = time.monotonic()
    engines: list[dict] = []
    try:
        for rep in range(plan.reps):
            engines.append(engine_floor())
            for arm in ARMS[rep % len(ARMS) :] + ARMS[: rep % len(ARMS)]:
                b.plan = replace(plan, group_size=1 if arm == "single" else 3)
                runs[arm].append(b.run_arm(builds[arm], PATHS))
                log(f"rep {rep + 1} {arm}: " + ", ".join(f"{k} {v['value']:,.0f}" for k, v in runs[arm][-1].items()))
            for kind in NULLS:
                runs[kind].append(run_null(b, kind))
                log(f"rep {rep + 1} {kind}: " + ", ".join(f"{k} {v['value']:,.0f}" for k, v in runs[kind][-1].items()))
    except Failure as err:
        log(f"benchmark failed: {err}; logs in {b.workdir / 'logs'}")
        return 1
    finally:
        b.procs.close()
    res = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "commits": {arm: builds[arm].commit for arm in ARMS},
            "plan": asdict(plan),
            "seconds": round(time.monotonic() - started, 1),
        },
        "results": summarise(runs),
        "engine": engines,
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(res, indent=1))
    Path(f"{out}.md").write_text(markdown(res))
    log(f"results in {out}.json and {out}.md ({res['meta']['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
