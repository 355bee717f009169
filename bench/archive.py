"""What archiving to PostgreSQL costs: `python -m bench.archive` (part of `make bench`).

One `rankq server` with --archive-dsn pointing at a throwaway PostgreSQL (Debian's packages, as in
the tests). The same workload runs on a queue with archive off and one with archive on, interleaved:
N messages enqueued in batches of 100, then drained by dequeue(max=100) + batch ack with a result.
Reported: messages/s of enqueue and of drain for each, medians of --reps, and the ratio on/off;
then how long the archive needed after the drain to have every message in PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from . import procs as P

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "tests" / "archive"))


def workload(base: str, queue: str, n: int) -> tuple[float, float]:
    with httpx.Client(base_url=base + "/api/v1", timeout=30) as http:
        body = {"messages": [{"payload": {"n": i}} for i in range(100)]}
        t0 = time.monotonic()
        for _ in range(n // 100):
            http.post(f"/queues/{queue}/messages/batch", json=body).raise_for_status()
        t1 = time.monotonic()
        done = 0
        while done < n:
            got = http.post(f"/queues/{queue}/dequeue", json={"max": 100}).json()["messages"]
            if not got:
                continue
            items = [{"id": m["id"], "lease_token": m["lease_token"], "result": {"ok": True}} for m in got]
            http.post(f"/queues/{queue}/ack", json={"items": items}).raise_for_status()
            done += len(got)
        t2 = time.monotonic()
    return n / (t1 - t0), n / (t2 - t1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--out", default=str(HERE / "results" / "archive.json"))
    args = ap.parse_args(argv)
    from pg import Postgres  # tests/archive/pg.py: the same throwaway server as the tests

    n = args.messages // 100 * 100
    pg = Postgres().start()
    runs: dict[str, list] = {"off": [], "on": []}
    catch_up = []
    with tempfile.TemporaryDirectory(prefix="rankq-bench-archive-") as tmp:
        procs = P.Procs(Path(tmp))
        try:
            server = P.start_rankq(
                procs,
                "archive",
                Path(tmp) / "data",
                grpc=False,
                extra=["--archive-dsn", pg.dsn, "--archive-group", "bench"],
            )
            P.wait_rankq_ready(server)
            for rep in range(args.reps):
                for mode in ("off", "on"):
                    queue = f"{mode}{rep}"
                    httpx.post(
                        server.base + "/api/v1/queues", json={"name": queue, "archive": mode == "on"}, timeout=10
                    ).raise_for_status()
                    runs[mode].append(workload(server.base, queue, n))
                    if mode == "on":
                        t0 = time.monotonic()
                        P.wait_until(
                            lambda: httpx.get(server.base + "/api/v1/archive", timeout=5).json()["pending"] == 0,
                            120,
                            server.proc,
                            "the archive to catch up",
                        )
                        catch_up.append(time.monotonic() - t0)
            rows = pg.query("SELECT count(*) FROM rankq_messages WHERE group_name = 'bench'")[0][0]
        finally:
            procs.close()
            pg.destroy()
    med = {
        mode: {"enqueue": statistics.median(r[0] for r in rs), "drain": statistics.median(r[1] for r in rs)}
        for mode, rs in runs.items()
    }
    result = {
        "messages": n,
        "reps": args.reps,
        "median": med,
        "ratio_on_off": {k: med["on"][k] / med["off"][k] for k in ("enqueue", "drain")},
        "catch_up_s": statistics.median(catch_up),
        "rows": rows,
        "runs": runs,
        "load": P.machine_load(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{n} messages, median of {args.reps}: enqueue {med['off']['enqueue']:.0f} -> {med['on']['enqueue']:.0f} "
        f"msg/s, drain (dequeue+ack) {med['off']['drain']:.0f} -> {med['on']['drain']:.0f} msg/s with archive on "
        f"(ratio {result['ratio_on_off']['drain']:.2f}); archive caught up {result['catch_up_s']:.1f} s after "
        f"the drain; {rows} rows"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
