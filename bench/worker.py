"""Worker throughput: `python -m bench.worker` (`make bench` runs it after bench.run).

One consumer process drains N pre-filled messages with a no-op handler; the rate is N divided by
the time from the first message taken to the last one acked, seen by polling the broker every
20 ms (the consumer itself is not instrumented). Consumers, all at concurrency 8, interleaved per
repetition:

- `rankq worker` (sync no-op handler in its thread pool) against a fresh single-node server, and
  with `--prefetch 24` (as many messages reserved as Celery's default prefetch of 4 per process);
- the raw client loop a user would write without it (`dequeue(max=8, wait=1)`, handle, then one
  `ack_batch`), and the same loop acking message by message;
- Celery with a Redis broker (Debian `redis-server` on a free loopback port), prefork pool `-c 8`:
  `acks_late` with prefetch multiplier 1, and Celery's defaults (ack on receipt, prefetch 4 per
  process). With ack on receipt the end is the last message *taken*: the few prefetched no-op
  tasks still running then take milliseconds.

Celery runs from its own virtualenv (the `bench` extra of pyproject.toml, installed under
~/.cache/rankq/bench): its python-dateutil pin conflicts with the Kubernetes client RankQ uses.

    python -m bench.worker                       # 10,000 messages, 3 repetitions
    python -m bench.worker --messages 5000 --reps 1 --out /tmp/w.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import httpx

from . import procs as P
from .procs import Procs

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CONCURRENCY = 8
POLL = 0.02
CACHE = Path(os.environ.get("RANKQ_BENCH_CACHE", Path.home() / ".cache" / "rankq" / "bench"))
CONSUMERS = [
    "rankq_worker",
    "rankq_worker_prefetch24",
    "raw_loop_ack_batch",
    "raw_loop_ack_each",
    "celery_acks_late_prefetch1",
    "celery_default",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the raw client loop (run as `python -m bench.worker --raw URL QUEUE N MODE`) ------------------


def raw_loop(url: str, queue: str, n: int, mode: str) -> None:
    from rankq import Client

    def handle(msg) -> None:
        return None

    done = 0
    with Client(url) as rq:
        while done < n:
            msgs = rq.dequeue(queue, max=CONCURRENCY, wait=1)
            for m in msgs:
                handle(m)
                if mode == "each":
                    rq.ack(m)
            if mode == "batch" and msgs:
                rq.ack_batch(msgs)
            done += len(msgs)


# ---- measuring by polling the broker ---------------------------------------------------------------


def watch(left, n: int, proc: subprocess.Popen | None, timeout: float) -> float:
    """Seconds from the first message taken to none left; `left()` counts messages not yet done."""
    deadline = time.monotonic() + timeout
    first = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        remaining = left()
        if first is None and remaining < n:
            first = now
        if remaining == 0:
            return now - (first or now)
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"consumer exited with {proc.returncode}")
        time.sleep(POLL)
    raise RuntimeError(f"not drained within {timeout}s")


class RankQSide:
    def __init__(self, procs: Procs, workdir: Path) -> None:
        self.procs = procs
        self.workdir = workdir
        self.server = P.start_rankq(procs, "rankq", workdir / "rankq", grpc=False)
        P.wait_rankq_ready(self.server)
        self.http = httpx.Client(base_url=self.server.base + "/api/v1", timeout=10)
        self.runs = 0

    def fill(self, n: int) -> str:
        self.runs += 1
        queue = f"w{self.runs}"
        self.http.post("/queues", json={"name": queue, "visibility_timeout": 60}).raise_for_status()
        body = '{"messages":[' + ",".join(['{"payload":{"n":0}}'] * 1000) + "]}"
        for _ in range(0, n, 1000):
            self.http.post(
                f"/queues/{queue}/messages/batch", content=body, headers={"content-type": "application/json"}
            ).raise_for_status()
        return queue

    def left(self, queue: str):
        def count() -> int:
            c = self.http.get(f"/queues/{queue}").json()["counts"]
            return c["ready"] + c["leased"] + c["delayed"]

        return count

    def run(self, consumer: str, n: int) -> float:
        queue = self.fill(n)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if consumer.startswith("rankq_worker"):
            args = [
                sys.executable,
                "-m",
                "rankq.cli",
                "worker",
                "bench.worker:noop",
                "--queue",
                queue,
                "--url",
                self.server.base,
                "--concurrency",
                str(CONCURRENCY),
                "--poll-wait",
                "1",
                "--log-level",
                "warning",
            ]
            if consumer == "rankq_worker_prefetch24":
                args += ["--prefetch", "24"]
        else:
            mode = "batch" if consumer == "raw_loop_ack_batch" else "each"
            args = [sys.executable, "-m", "bench.worker", "--raw", self.server.base, queue, str(n), mode]
        proc = self.procs.spawn(f"{consumer}-{self.runs}", args, env=env)
        try:
            seconds = watch(self.left(queue), n, proc.popen, 300)
        finally:
            proc.stop()
        self.http.delete(f"/queues/{queue}")
        return n / seconds


def noop(msg) -> None:
    """The benchmark's handler."""
    return None


# ---- Celery ----------------------------------------------------------------------------------------


CELERY_APP = """
import os
from celery import Celery

app = Celery("bench", broker=os.environ["BENCH_BROKER"])
app.conf.task_ignore_result = True
app.conf.worker_hijack_root_logger = False
if os.environ.get("BENCH_MODE") == "late":
    app.conf.task_acks_late = True
    app.conf.worker_prefetch_multiplier = 1


@app.task(name="noop")
def noop(n):
    return None
"""


def celery_python() -> Path:
    """A virtualenv with the `bench` extra (Celery and redis-py), made on first use."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["bench"]
    venv = CACHE / "celery-venv"
    stamp = venv / ".installed"
    if not stamp.exists() or stamp.read_text() != json.dumps(extra):
        log(f"installing {', '.join(extra)} into {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", *extra], check=True)
        stamp.write_text(json.dumps(extra))
    return venv / "bin" / "python"


def redis_server() -> str:
    path = shutil.which("redis-server")
    if path:
        return path
    if os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing redis-server")
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "redis-server"],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
        return shutil.which("redis-server") or "redis-server"
    raise RuntimeError("redis-server is missing (Debian/Ubuntu: apt-get install redis-server)")


class CelerySide:
    def __init__(self, procs: Procs, workdir: Path) -> None:
        self.procs = procs
        self.workdir = workdir
        self.python = celery_python()
        self.port = P.free_port()
        (workdir / "celery").mkdir(parents=True, exist_ok=True)
        (workdir / "celery" / "bench_celery.py").write_text(CELERY_APP)
        self.redis = procs.spawn(
            "redis",
            [
                redis_server(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
            ],
        )
        self.broker = f"redis://127.0.0.1:{self.port}/0"
        P.wait_until(lambda: P.port_open(self.port), 20, self.redis, "redis")
        self.runs = 0

    def _script(self, code: str, env: dict) -> str:
        done = subprocess.run(
            [str(self.python), "-c", code],
            env=env,
            cwd=self.workdir / "celery",
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        return done.stdout

    def run(self, consumer: str, n: int) -> float:
        self.runs += 1
        mode = "late" if consumer == "celery_acks_late_prefetch1" else "default"
        env = {
            **os.environ,
            "BENCH_BROKER": self.broker,
            "BENCH_MODE": mode,
            "PYTHONPATH": str(self.workdir / "celery"),
        }
        self._script(
            "import redis, os; redis.Redis.from_url(os.environ['BENCH_BROKER']).flushdb()\n"
            "from bench_celery import noop\n"
            f"for i in range({n}): noop.apply_async((i,))\n",
            env,
        )
        worker = self.procs.spawn(
            f"celery-{mode}-{self.runs}",
            [
                str(self.python),
                "-m",
                "celery",
                "-A",
                "bench_celery",
                "worker",
                "-c",
                str(CONCURRENCY),
                "-P",
                "prefork",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-l",
                "warning",
            ],
            env={**env, "PWD": str(self.workdir / "celery")},
        )
        # redis-py lives in the Celery venv: a tiny poller there prints what is left every POLL seconds.
        poller = subprocess.Popen(
            [
                str(self.python),
                "-u",
                "-c",
                "import os, sys, time, redis\n"
                "r = redis.Redis.from_url(os.environ['BENCH_BROKER'])\n"
                "while True:\n"
                "    p = r.pipeline(); p.llen('celery'); p.hlen('unacked'); a, b = p.execute()\n"
                "    print(a + b, flush=True)\n"
                f"    time.sleep({POLL})\n",
            ],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:

            def left() -> int:
                return int(poller.stdout.readline())

            return n / watch(left, n, worker.popen, 300)
        finally:
            poller.kill()
            poller.wait()
            worker.stop()


# ---- the run ---------------------------------------------------------------------------------------


def run(messages: int, reps: int, workdir: Path) -> dict:
    procs = Procs(workdir)
    load_before = os.getloadavg()[0]
    rates: dict[str, list[float]] = {c: [] for c in CONSUMERS}
    try:
        rankq = RankQSide(procs, workdir)
        celery = CelerySide(procs, workdir)
        rankq.run("rankq_worker", min(messages, 1000))  # warm-up: imports, page cache
        for rep in range(reps):
            for consumer in CONSUMERS:
                side = celery if consumer.startswith("celery") else rankq
                rate = side.run(consumer, messages)
                rates[consumer].append(rate)
                log(f"rep {rep + 1}/{reps} {consumer}: {rate:,.0f} msg/s")
    finally:
        procs.close()
    med = {c: statistics.median(v) for c, v in rates.items()}
    worker = med["rankq_worker"]
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "messages": messages,
        "reps": reps,
        "concurrency": CONCURRENCY,
        "cpus": os.cpu_count(),
        "load_average_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # at start and end
        "rates": rates,
        "median": med,
        "ratios": {
            "worker_vs_raw_ack_batch": worker / med["raw_loop_ack_batch"],
            "worker_vs_raw_ack_each": worker / med["raw_loop_ack_each"],
            "worker_vs_celery_acks_late_prefetch1": worker / med["celery_acks_late_prefetch1"],
            "worker_vs_celery_default": worker / med["celery_default"],
            "worker_prefetch24_vs_celery_default": med["rankq_worker_prefetch24"] / med["celery_default"],
        },
        "command": f"python -m bench.worker --messages {messages} --reps {reps}",
    }


def markdown(r: dict) -> str:
    load = " → ".join(f"{v:g}" for v in r["load_average_1m"]) if r.get("load_average_1m") else "not recorded"
    names = {
        "rankq_worker": "`rankq worker`, no-op sync handler",
        "rankq_worker_prefetch24": "`rankq worker --prefetch 24`",
        "raw_loop_ack_batch": "raw client loop: dequeue(max=8) + ack_batch",
        "raw_loop_ack_each": "raw client loop: dequeue(max=8) + ack per message",
        "celery_acks_late_prefetch1": "Celery + Redis, acks_late, prefetch multiplier 1",
        "celery_default": "Celery + Redis, defaults (ack on receipt, prefetch 4)",
    }
    lines = [
        "# Worker throughput",
        "",
        f"{r['when']}, {r['cpus']} CPUs (load average {load}), `{r['command']}`: one consumer process at concurrency "
        f"{r['concurrency']} drains {r['messages']:,} pre-filled messages; median of {r['reps']}.",
        "",
        "| consumer | msg/s (median) | runs | worker / this |",
        "|---|---:|---|---:|",
    ]
    worker = r["median"]["rankq_worker"]
    for c in CONSUMERS:
        runs = ", ".join(f"{v:,.0f}" for v in r["rates"][c])
        lines.append(f"| {names[c]} | {r['median'][c]:,.0f} | {runs} | {worker / r['median'][c]:.0%} |")
    lines += ["", "Goal: the worker keeps ≥ 80% of the raw loop (ack_batch) and is ahead of Celery.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results" / "worker.json",
        help="results JSON; the markdown goes beside it (.md)",
    )
    parser.add_argument("--raw", nargs=4, metavar=("URL", "QUEUE", "N", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.raw:
        url, queue, n, mode = args.raw
        raw_loop(url, queue, int(n), mode)
        return 0
    with tempfile.TemporaryDirectory(prefix="rankq-bench-worker-") as tmp:
        results = run(args.messages, args.reps, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
