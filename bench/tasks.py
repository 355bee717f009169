"""Task semantics: how exact the rate limiter is, and what dependencies cost. `python -m bench.tasks`
(part of `make bench`, about 3 minutes).

One `rankq server` on loopback, two measures in the same run:

- Rate limiter accuracy. For each configured rate (50, 200, 1000 deliveries/s; the burst is the
  same number) a queue holds more messages than the run can take, and 4 consumers long-poll it
  with dequeue(max=100, wait=1) as fast as they can (no acks: the limit is on deliveries, and
  acking would only take CPU from the consumers). After a warm-up that spends the initial burst,
  deliveries are counted by the time the client received them in --windows windows of --window
  seconds; reported is the median delivered rate per window and its ratio to the configured rate.
- The cost of dependencies on enqueue throughput. N messages enqueued over HTTP in batches of 100
  to a plain queue and to one where every message depends on the one before it (items on the
  previous item of their batch with `batch_index`, a batch's first item on the last id of the
  batch before), so every message but the first waits; arms interleaved, medians of --reps, and
  the ratio with/without. A warm-up pair is not counted, the order alternates between repetitions
  and each arm's queue is deleted after it, so each starts from the same state.

    python -m bench.tasks                                   # writes bench/results/tasks.{json,md}
    python -m bench.tasks --window 2 --windows 2 --messages 2000 --reps 1 --out /tmp/tasks.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

from . import procs as P

HERE = Path(__file__).resolve().parent
RATES = (50, 200, 1000)
CONSUMERS = 4
WARMUP = 2.0  # seconds before counting: the burst the bucket starts with is spent by then
BATCH = 100


def log(msg: str) -> None:
    print(f"[tasks] {msg}", flush=True)


def fill(http: httpx.Client, queue: str, n: int) -> None:
    body = {"messages": [{"payload": i} for i in range(BATCH)]}
    for _ in range(-(-n // BATCH)):
        http.post(f"/queues/{queue}/messages/batch", json=body).raise_for_status()


async def consume(base: str, queue: str, stop_at: float, stamps: list[float]) -> None:
    async with httpx.AsyncClient(base_url=base + "/api/v1", timeout=30) as http:
        while time.monotonic() < stop_at:
            r = await http.post(f"/queues/{queue}/dequeue", json={"max": 100, "wait": 1})
            r.raise_for_status()
            got = len(r.json()["messages"])
            now = time.monotonic()
            stamps.extend([now] * got)


def rate_accuracy(base: str, rate: int, window: float, windows: int) -> dict:
    queue = f"rate{rate}"
    with httpx.Client(base_url=base + "/api/v1", timeout=30) as http:
        http.post("/queues", json={"name": queue, "rate_limit": rate, "visibility_timeout": 3600}).raise_for_status()
        fill(http, queue, int(rate * (WARMUP + window * windows) * 1.2) + rate)
    stamps: list[float] = []
    t0 = time.monotonic()
    stop_at = t0 + WARMUP + window * windows

    async def run() -> None:
        await asyncio.gather(*(consume(base, queue, stop_at, stamps) for _ in range(CONSUMERS)))

    asyncio.run(run())
    starts = [t0 + WARMUP + i * window for i in range(windows)]
    per_window = [sum(1 for s in stamps if start <= s < start + window) / window for start in starts]
    median = statistics.median(per_window)
    return {
        "rate": rate,
        "burst": rate,
        "windows": per_window,
        "median": median,
        "ratio": median / rate,
        "warmup_delivered": sum(1 for s in stamps if s < t0 + WARMUP),
    }


def enqueue_rate(base: str, queue: str, n: int, deps: bool) -> float:
    with httpx.Client(base_url=base + "/api/v1", timeout=30) as http:
        http.post("/queues", json={"name": queue}).raise_for_status()
        last: int | None = None
        t0 = time.monotonic()
        for _ in range(n // BATCH):
            messages = []
            for i in range(BATCH):
                m: dict = {"payload": i}
                if deps and i:
                    m["depends_on"] = [{"batch_index": i - 1}]
                elif deps and last is not None:
                    m["depends_on"] = [{"id": last}]
                messages.append(m)
            r = http.post(f"/queues/{queue}/messages/batch", json={"messages": messages})
            r.raise_for_status()
            last = r.json()["results"][-1]["id"]
        elapsed = time.monotonic() - t0
        counts = http.get(f"/queues/{queue}").json()["counts"]
        http.delete(f"/queues/{queue}").raise_for_status()  # every arm starts from the same state
    expected_waiting = n - 1 if deps else 0
    if counts["waiting"] != expected_waiting:
        raise P.Failure(f"{queue}: {counts['waiting']} waiting, expected {expected_waiting}")
    return n / elapsed


def markdown(result: dict) -> str:
    lines = [
        "# Task semantics",
        "",
        f"{result['date']}, commit {result['commit']}, one node on loopback, {result['cores']} cores.",
        "",
        f"## Rate limiter accuracy ({result['window']:g} s windows, median of {result['windows']})",
        "",
        "| configured | delivered (median) | ratio | per window |",
        "|---:|---:|---:|---|",
    ]
    for r in result["rate_limit"]:
        shown = ", ".join(f"{w:.1f}" for w in r["windows"])
        lines.append(f"| {r['rate']}/s | {r['median']:.1f}/s | {r['ratio']:.3f} | {shown} |")
    d = result["dependencies"]
    lines += [
        "",
        f"## Enqueue throughput with dependencies ({d['messages']} messages in batches of {BATCH}, "
        f"median of {d['reps']})",
        "",
        "| arm | msg/s (median) | runs |",
        "|---|---:|---|",
        f"| no dependencies | {d['median']['plain']:.0f} | {', '.join(f'{x:.0f}' for x in d['runs']['plain'])} |",
        f"| each message depends on the previous one | {d['median']['deps']:.0f} | "
        f"{', '.join(f'{x:.0f}' for x in d['runs']['deps'])} |",
        "",
        f"Ratio with/without: {d['ratio']:.2f}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=float, default=10.0, help="seconds per measurement window")
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--messages", type=int, default=20_000, help="messages per enqueue arm")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "tasks.json"))
    args = ap.parse_args(argv)
    n = max(BATCH, args.messages // BATCH * BATCH)
    with tempfile.TemporaryDirectory(prefix="rankq-bench-tasks-") as tmp:
        procs = P.Procs(Path(tmp))
        try:
            server = P.start_rankq(procs, "tasks", Path(tmp) / "data", grpc=False)
            P.wait_rankq_ready(server)
            rates = []
            for rate in RATES:
                rates.append(rate_accuracy(server.base, rate, args.window, args.windows))
                log(f"rate {rate}/s: delivered {rates[-1]['median']:.1f}/s (median of {args.windows} windows)")
            runs: dict[str, list[float]] = {"plain": [], "deps": []}
            for arm in ("plain", "deps"):  # warm-up, not counted
                enqueue_rate(server.base, f"warm-{arm}", n, arm == "deps")
            for rep in range(args.reps):
                for arm in ("plain", "deps") if rep % 2 == 0 else ("deps", "plain"):  # alternated: drift hits both
                    runs[arm].append(enqueue_rate(server.base, f"{arm}{rep}", n, arm == "deps"))
                log(f"enqueue rep {rep + 1}: plain {runs['plain'][-1]:.0f} msg/s, deps {runs['deps'][-1]:.0f} msg/s")
        finally:
            procs.close()
    median = {arm: statistics.median(v) for arm, v in runs.items()}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=HERE.parent
    ).stdout.strip()
    result = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit,
        "cores": os.cpu_count(),
        "window": args.window,
        "windows": args.windows,
        "rate_limit": rates,
        "dependencies": {
            "messages": n,
            "reps": args.reps,
            "runs": runs,
            "median": median,
            "ratio": median["deps"] / median["plain"],
        },
        "load": P.machine_load(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    log(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
