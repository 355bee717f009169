"""What the dashboard's live feed costs: HTTP enqueue throughput with 0 and with 50 open feeds.

One fresh `rankq server`; runs alternate between no open feed and `--clients` open feeds
(`/api/v1/dashboard/stream`, what every open /ui page holds), the queue emptied before each run.
The feed clients run in their own process and read every event; each run checks that they kept
receiving about one snapshot a second. Reported: the median throughput of each side and the cost
(1 - with/without, the median over the pairs of adjacent runs), against the target of at most 5%; and, because throughput on a shared machine
is noisy, the feed's own CPU: the idle server's CPU with and without the open feeds (the server's
work runs on one core, so this share of a core bounds the throughput it can take away).

    python -m bench.dashboard                      # 5 pairs of 8 s runs (about 3 minutes)
    python -m bench.dashboard --reps 1 --duration 3
    python -m bench.run --only dashboard           # the same inside `make bench`
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from . import procs as P

TARGET = 0.05  # at most this share of enqueue throughput
FEED_PATH = "/api/v1/dashboard/stream"
IDLE_SECONDS = 10.0


# ---- the feed clients (run as a separate process) -------------------------------------------------


async def _hold_feeds(host: str, port: int, clients: int) -> None:
    counts = [0] * clients
    connected = asyncio.Event()
    opened = 0

    async def one(i: int) -> None:
        nonlocal opened
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(f"GET {FEED_PATH} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        first = True
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return
            counts[i] += chunk.count(b"data: ")
            if first and counts[i]:
                first = False
                opened += 1
                if opened == clients:
                    connected.set()

    tasks = [asyncio.create_task(one(i)) for i in range(clients)]
    await asyncio.wait_for(connected.wait(), 30)
    print("READY", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    start = list(counts)
    t0 = time.monotonic()
    await stop.wait()
    seconds = time.monotonic() - t0
    events = [c - s for c, s in zip(counts, start)]
    alive = sum(1 for t in tasks if not t.done())
    print(
        json.dumps(
            {
                "clients": clients,
                "alive": alive,
                "seconds": seconds,
                "min_events_per_s": min(events) / seconds,
                "median_events_per_s": sorted(events)[clients // 2] / seconds,
            }
        ),
        flush=True,
    )


class Feeds:
    """`clients` open feeds held by a child process for the duration of a `with` block."""

    def __init__(self, server: P.Server, clients: int) -> None:
        self.server = server
        self.clients = clients
        self.result: dict = {}

    def __enter__(self) -> Feeds:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.dashboard",
                "--hold-feeds",
                str(self.server.http_port),
                "--clients",
                str(self.clients),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            self.proc.kill()
            raise P.Failure(f"feed clients did not connect: {line!r}")
        return self

    def __exit__(self, *exc) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=20)
            self.result = json.loads(out.strip().splitlines()[-1])
        except Exception:
            self.proc.kill()
            raise


# ---- the measure ----------------------------------------------------------------------------------


def _empty_queue(server: P.Server) -> None:
    httpx.delete(server.base + "/api/v1/queues/bench", timeout=30)
    P.create_queue(server)


def measure(bench, clients: int = 50, log=print) -> dict:
    """Alternate runs without and with `clients` open feeds on one fresh server (the `bench` is a
    bench.run.Bench: its plan gives reps, duration and connections)."""
    plan = bench.plan
    server = bench.rankq(grpc=False)
    runs: dict[str, list] = {"without": [], "with": []}
    idle: dict[str, list] = {"without": [], "with": []}
    measure_one = bench.http_enqueue(1, plan.single_conns, bench.single_body)
    try:
        # The feed's own cost, free of the load generator: server CPU while nothing else happens.
        for _ in range(plan.reps):
            for side in ("without", "with"):
                if side == "with":
                    with Feeds(server, clients):
                        idle[side].append(_idle_cpu(server, IDLE_SECONDS))
                else:
                    idle[side].append(_idle_cpu(server, IDLE_SECONDS))
        log(
            f"dashboard idle server CPU: {_median(idle['without']):.2f}% of a core without feeds, "
            f"{_median(idle['with']):.2f}% with {clients} feeds"
        )
        for i in range(plan.reps):
            order = ("without", "with") if i % 2 == 0 else ("with", "without")
            for side in order:
                _empty_queue(server)
                if side == "with":
                    with Feeds(server, clients) as feeds:
                        r = measure_one(server)
                    r["feeds"] = feeds.result
                    if feeds.result.get("alive") != clients or feeds.result.get("min_events_per_s", 0) < 0.5:
                        raise P.Failure(f"the feeds were not live during the run: {feeds.result}")
                else:
                    r = measure_one(server)
                runs[side].append({**r, **P.machine_load()})
            log(
                f"dashboard rep {i + 1}/{plan.reps}: without feeds {runs['without'][-1]['value']:,.0f} msg/s, "
                f"with {clients} feeds {runs['with'][-1]['value']:,.0f} msg/s"
            )
    finally:
        bench.drop(server)
    without = _median([r["value"] for r in runs["without"]])
    with_ = _median([r["value"] for r in runs["with"]])
    cost_of_medians = 1 - with_ / without
    # Runs of a pair are adjacent in time and share the machine's state: the median of the paired
    # ratios cancels the drift of a shared machine that the ratio of medians keeps.
    cost = 1 - _median([w["value"] / o["value"] for w, o in zip(runs["with"], runs["without"])])
    feed_cpu = _median(idle["with"]) - _median(idle["without"])
    return {
        "unit": "msg/s",
        "clients": clients,
        "without": without,
        "with": with_,
        "cost": cost,
        "cost_of_medians": cost_of_medians,
        "idle_cpu_percent_without": _median(idle["without"]),
        "idle_cpu_percent_with": _median(idle["with"]),
        "feed_cpu_percent_of_core": feed_cpu,
        "target": f"<= {TARGET:.0%} of enqueue throughput",
        "met": cost <= TARGET,
        "server_cpu_percent_without": _median([r.get("server_cpu_percent") for r in runs["without"]]),
        "server_cpu_percent_with": _median([r.get("server_cpu_percent") for r in runs["with"]]),
        "server_cpu_us_per_msg_without": _median([r.get("server_cpu_us_per_msg") for r in runs["without"]]),
        "server_cpu_us_per_msg_with": _median([r.get("server_cpu_us_per_msg") for r in runs["with"]]),
        "runs": runs,
    }


def _idle_cpu(server: P.Server, seconds: float) -> float:
    with P.cpu_meter(server.proc) as cpu:
        time.sleep(seconds)
    return cpu["cpu_percent"]


def _median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def _wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    done = subprocess.run(
        ["bash", str(Path(__file__).resolve().parent / "setup.sh")], capture_output=True, text=True, timeout=900
    )
    path = shutil.which("wrk")
    if not path:
        raise P.Failure("wrk is missing: apt-get install wrk (or run bench/setup.sh)\n" + done.stderr[-1000:])
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="pairs of runs (default 5)")
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--clients", type=int, default=50, help="open feeds in the 'with' runs")
    parser.add_argument("--out", help="write the result JSON here")
    parser.add_argument("--hold-feeds", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.hold_feeds:
        asyncio.run(_hold_feeds(P.HOST, args.hold_feeds, args.clients))
        return 0
    from .run import Bench, Plan

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = Plan(reps=args.reps, duration=args.duration)
    workdir = Path(tempfile.mkdtemp(prefix="rankq-dashfeed-"))
    bench = Bench(plan, {"WRK": _wrk()}, workdir)
    try:
        result = measure(bench, args.clients, log=lambda m: print(m, file=sys.stderr, flush=True))
    except P.Failure as err:
        print(f"benchmark failed: {err}; logs in {workdir / 'logs'}", file=sys.stderr)
        return 1
    finally:
        bench.procs.close()
    summary = {k: v for k, v in result.items() if k != "runs"}
    print(json.dumps(summary, indent=2))
    print(
        f"median enqueue throughput: {result['without']:,.0f} msg/s without feeds, {result['with']:,.0f} msg/s "
        f"with {args.clients} open feeds (ratio of medians: cost {result['cost_of_medians']:.1%}); cost, median of the paired runs: "
        f"{result['cost']:.1%} (target <= {TARGET:.0%}: "
        f"{'met' if result['met'] else 'NOT met'}); the feed alone used {result['feed_cpu_percent_of_core']:.2f}% of a "
        f"core ({result['idle_cpu_percent_with']:.2f}% with, {result['idle_cpu_percent_without']:.2f}% without feeds, "
        f"no other load)"
    )
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
