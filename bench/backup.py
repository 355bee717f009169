"""Backup and restore timings: `python -m bench.backup` (part of `make bench`).

Fills a queue of a fresh group with N 100-byte messages (HTTP batches), times `Client.backup` of the
group under no other load, then times `Client.restore` of that file into a second, empty group of
the same size, and checks the second group holds N ready messages. Medians of --reps runs.

    python -m bench.backup                      # 1,000,000 messages, 3-node groups, 1 run
    python -m bench.backup --messages 100000 --nodes 1 --reps 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from rankq import Client

from . import procs as P

HERE = Path(__file__).resolve().parent
BATCH = 1000
PAYLOAD = "x" * 98  # a 100-byte JSON string


def fill(base: str, queue: str, n: int) -> float:
    body = json.dumps({"messages": [{"payload": PAYLOAD} for _ in range(BATCH)]})
    started = time.monotonic()
    with httpx.Client(base_url=base + "/api/v1", timeout=60) as http:
        for _ in range(n // BATCH):
            r = http.post(f"/queues/{queue}/messages/batch", content=body, headers={"content-type": "application/json"})
            if r.status_code != 201:
                raise P.Failure(f"fill: {r.status_code} {r.text[:200]}")
    return time.monotonic() - started


def group(procs: P.Procs, name: str, root: Path, size: int) -> tuple[list[P.Server], str]:
    if size == 1:
        member = P.start_rankq(procs, name, root, grpc=False)
        P.wait_rankq_ready(member)
        members = [member]
    else:
        members = P.start_group(procs, name, root, size, grpc=False)
        P.wait_group_ready(members)
    return members, ",".join(m.base for m in members)


def one_run(workdir: Path, n: int, size: int, rep: int) -> dict:
    procs = P.Procs(workdir)
    try:
        source, source_urls = group(procs, f"source{rep}", workdir / f"source{rep}", size)
        with Client(source_urls) as rq:
            rq.create_queue("bench")
        fill_s = fill(P.agreed_leader(source).base if size > 1 else source[0].base, "bench", n)
        path = str(workdir / f"backup{rep}.jsonl.gz")
        started = time.monotonic()
        with Client(source_urls, timeout=600) as rq:
            summary = rq.backup(path)
        backup_s = time.monotonic() - started
        P.stop_group(source) if size > 1 else source[0].proc.stop()
        target, target_urls = group(procs, f"target{rep}", workdir / f"target{rep}", size)
        started = time.monotonic()
        with Client(target_urls, timeout=600) as rq:
            rq.restore(path)
            ready = rq.get_queue("bench").counts.ready
        restore_s = time.monotonic() - started
        if ready != n or summary.messages != n:
            raise P.Failure(f"restored {ready} ready of {n} (backup held {summary.messages})")
        return {"fill_s": fill_s, "backup_s": backup_s, "restore_s": restore_s, "file_bytes": os.path.getsize(path)}
    finally:
        procs.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--nodes", type=int, default=3, choices=[1, 3, 5])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--out", default=str(HERE / "results" / "backup.json"))
    args = ap.parse_args(argv)
    n = args.messages // BATCH * BATCH
    runs = []
    with tempfile.TemporaryDirectory(prefix="rankq-bench-backup-") as tmp:
        for rep in range(args.reps):
            runs.append(one_run(Path(tmp), n, args.nodes, rep))
            print(json.dumps(runs[-1]), flush=True)
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    result = {
        "messages": n,
        "nodes": args.nodes,
        "reps": args.reps,
        "median": med,
        "runs": runs,
        "backup_msgs_per_s": n / med["backup_s"],
        "restore_msgs_per_s": n / med["restore_s"],
        "fill_msgs_per_s": n / med["fill_s"],
        "load": P.machine_load(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{n} messages, {args.nodes}-node groups, median of {args.reps}: backup {med['backup_s']:.1f} s "
        f"({result['backup_msgs_per_s']:.0f} msg/s, file {med['file_bytes'] / 2**20:.1f} MiB), restore "
        f"{med['restore_s']:.1f} s ({result['restore_msgs_per_s']:.0f} msg/s); filling took {med['fill_s']:.1f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
