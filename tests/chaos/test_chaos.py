"""Chaos runs: producers and consumers against a 3- or 5-node group in network namespaces while the
nemesis kills, pauses, restarts and partitions members; then the history is checked.

The short sample runs in `make test`; the long runs (`slow`) in `make chaos`. Each run's summary is
printed at the end of the session and written to tests/chaos/last-run.json. Each run works in its
own directory under $RANKQ_CHAOS_ARTIFACTS (default: <tmp>/rankq-chaos), removed when the run is
clean; a failing run keeps it — server logs (faults are marked in them), data dirs and the history as
JSON lines — and names it in the failure.

RANKQ_CHAOS_SEED fixes the fault schedule and the workload's choices (not the timing).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import pytest
from group import NsGroup
from history import OK, History, check, summarize
from nemesis import KINDS_3, KINDS_5, Nemesis, plan
from netns import Network
from workload import Workload, drain, final_state

pytestmark = pytest.mark.chaos

QUEUE = "chaos"
QUEUE_SETTINGS = {
    "max_deliveries": 4,  # leases lost to faults and walked-away consumers reach the DLQ
    "dedup_window": 3600,  # longer than any run: a retried key is always recognised
    "visibility_timeout": 5,
    "retry_base": 0.2,
    "retry_max": 1,
}
LAST_RUN = Path(__file__).with_name("last-run.json")
KEEP_ARTIFACTS = 6  # failed runs' directories kept, newest first


def artifacts_dir(name: str) -> Path:
    base = Path(os.environ.get("RANKQ_CHAOS_ARTIFACTS") or Path(tempfile.gettempdir()) / "rankq-chaos")
    base.mkdir(parents=True, exist_ok=True)
    old = sorted(base.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in old[KEEP_ARTIFACTS - 1 :]:
        if time.time() - stale.stat().st_mtime > 3600:  # never a run still going
            shutil.rmtree(stale, ignore_errors=True)
    path = base / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    path.mkdir()
    return path


def log(text: str) -> None:
    print(text, flush=True)


def create_queue(group: NsGroup, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=8, trust_env=False) as http:
        while time.monotonic() < deadline:
            lead = group.wait_leader(timeout)
            try:
                r = http.post(f"{lead.url}/api/v1/queues", json={"name": QUEUE, **QUEUE_SETTINGS})
            except httpx.HTTPError:
                time.sleep(0.2)
                continue
            if r.status_code in (201, 409):
                return
            time.sleep(0.2)
    raise TimeoutError("could not create the chaos queue")


def wait_for_traffic(history: History, minimum: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for op in history.enqueues if op.outcome == OK) >= minimum and history.deliveries:
            return
        time.sleep(0.1)
    raise TimeoutError(f"the workload did not get {minimum} enqueues through a healthy group in {timeout}s")


def write_summary(summary: dict) -> None:
    runs = {}
    try:
        runs = json.loads(LAST_RUN.read_text()).get("runs", {})
    except (OSError, ValueError, AttributeError):
        pass
    runs[summary["name"]] = summary
    total_faults = sum(r["faults"]["total"] for r in runs.values())
    total_violations = sum(r["violations"]["total"] for r in runs.values())
    LAST_RUN.write_text(
        json.dumps(
            {
                "faults_total": total_faults,
                "violations_total": total_violations,
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )


def run_chaos(name: str, size: int, faults: int, workdir: Path, budget: float, **workload_kw) -> dict:
    seed = int(os.environ.get("RANKQ_CHAOS_SEED") or random.randrange(1 << 30))
    rng = random.Random(seed)
    kinds = plan(KINDS_5 if size >= 5 else KINDS_3, faults, rng)
    log(f"\n{name}: {size} nodes, {faults} faults, seed {seed}, artifacts in {workdir}")
    started = time.monotonic()
    with Network(size) as net:
        group = NsGroup(net, str(workdir / name))
        try:
            group.start(timeout=60)
            create_queue(group)
            history = History()
            urls = [n.url for n in group.nodes]
            workload = Workload(urls, QUEUE, history, seed=seed, duration=budget, **workload_kw).start()
            try:
                wait_for_traffic(history, 20, 30)
                nemesis = Nemesis(group, net, history, rng, log=log)
                nemesis.run(kinds)
                nemesis.reset()
                group.wait_healthy(60)
                time.sleep(2.0)  # a little traffic on the healed group before stopping
            finally:
                workload.stop()
            drained = drain(lambda: group.wait_leader(30).url, QUEUE, history, timeout=120)
            final = final_state(group.wait_leader(30).url, QUEUE, history, drained)
            violations = check(history, final, max_deliveries=QUEUE_SETTINGS["max_deliveries"])
        finally:
            group.stop()
    summary = {
        "name": name,
        "nodes": size,
        "seed": seed,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_s": round(time.monotonic() - started, 1),
        "faults": {
            "total": sum(nemesis.counts.values()),
            "by_kind": dict(nemesis.counts),
            "slow_recoveries": nemesis.slow_recoveries,
            "recovery_s_max": round(max(nemesis.recoveries, default=0), 2),
            "recovery_s_mean": round(sum(nemesis.recoveries) / max(1, len(nemesis.recoveries)), 2),
        },
        "operations": history.operation_counts(),
        "dead_letters": len(final.dlq),
        "drained": drained,
        "violations": summarize(violations),
        "unexpected_answers": history.unexpected[:10],
        "artifacts": str(workdir),
    }
    history.dump(str(workdir / "history.jsonl"))
    write_summary(summary)
    log(json.dumps({k: summary[k] for k in ("faults", "operations", "violations", "drained")}, indent=1))
    return summary


def assert_clean(summary: dict, faults: int) -> None:
    v = summary["violations"]
    assert v["total"] == 0, (
        f"{v['total']} violations {v['by_property']}; first ones: {json.dumps(v['examples'][:5], indent=1)}; "
        f"history and server logs in {summary['artifacts']}"
    )
    assert summary["drained"], "the queue did not drain after the faults stopped"
    assert summary["faults"]["total"] == faults
    ops = summary["operations"]
    # The run must have exercised the group, or a clean result means nothing.
    assert ops["enqueued_acknowledged_ids"] >= 10 * faults // 2, ops
    assert ops["acks"].get("ok", 0) >= ops["enqueued_acknowledged_ids"] // 2, ops
    assert not summary["unexpected_answers"], summary["unexpected_answers"]


def chaos(name: str, size: int, faults: int, budget: float, summaries: list) -> None:
    workdir = artifacts_dir(name)
    summary = run_chaos(name, size, faults, workdir, budget)
    summaries.append(summary)
    assert_clean(summary, faults)
    shutil.rmtree(workdir, ignore_errors=True)  # kept only when the run failed


@pytest.mark.timeout(300)
def test_chaos_sample_3_nodes(netns_ready, chaos_summaries):
    """A short run (about two minutes) of every fault kind against 3 nodes; part of `make test`."""
    chaos("sample-3", 3, 12, 240, chaos_summaries)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_chaos_3_nodes(netns_ready, chaos_summaries):
    chaos("full-3", 3, 60, 1300, chaos_summaries)


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_chaos_5_nodes(netns_ready, chaos_summaries):
    chaos("full-5", 5, 50, 1300, chaos_summaries)
