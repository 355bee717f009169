"""Worker-pool autoscaling on the local control plane: `python -m bench.autoscaling` (`make bench`).

Runs the end-to-end scenario of tests/k8s/autoscale_scenario.py several times: an idle pool at 0
replicas, 1,000 messages enqueued at once with targetBacklogPerReplica 100 and maxReplicas 10, the
real HPA controller (5 s sync) scaling on the backlog the operator serves, real `rankq worker`
processes draining the queue, the pool back at 0. It reports medians of

- first worker: seconds from the enqueue until the first worker process runs;
- full scale: seconds from the enqueue until the Deployment asks for 10 replicas;
- to zero: seconds from the last message handled until the pool is at 0 with no worker left
  (the operator's cooldown is 10 s; with the gate the HPA's scale-down window is 0).

in two modes: `operator` (the shared control plane, HPAScaleToZero off: the operator moves the pool
0 <-> 1, the HPA scales 1..N) and `hpa-zero` (a second control plane started with
HPAScaleToZero=true: the HPA does 0 <-> N itself).

    python -m bench.autoscaling                      # 3 runs per mode
    python -m bench.autoscaling --runs 1 --modes operator --out /tmp/as.json

Uses the control plane of `make k8s-up` when it runs (RANKQ_K8S_* ports and RANKQ_K8S_DIR as
for the tests), else starts one and stops it afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "tests" / "k8s"), str(REPO / "tests")]

import autoscale_jobs  # noqa: E402
import autoscale_scenario as scenario  # noqa: E402
import k8s_support  # noqa: E402
from k8s_support import Cluster, state_dir  # noqa: E402

MODES = ("operator", "hpa-zero")
METRICS = ("first_worker", "full_scale", "to_zero")


@contextlib.contextmanager
def shared_control_plane() -> Iterator[Cluster]:
    hack = REPO / "hack" / "k8s"
    running = (
        subprocess.run(
            ["bash", str(hack / "status.sh")], capture_output=True, text=True, timeout=60, cwd=REPO
        ).returncode
        == 0
        and (state_dir() / "run" / "components").exists()
    )
    if not running:
        up = subprocess.run(["bash", str(hack / "up.sh")], capture_output=True, text=True, timeout=900, cwd=REPO)
        if up.returncode != 0:
            raise SystemExit(f"hack/k8s/up.sh failed:\n{(up.stdout + up.stderr)[-3000:]}")
    try:
        yield Cluster(state_dir())
    finally:
        if not running:
            subprocess.run(["bash", str(hack / "down.sh")], capture_output=True, text=True, timeout=120, cwd=REPO)


def run_mode(mode: str, runs: int, workdir: Path) -> dict:
    out = []
    with contextlib.ExitStack() as stack:
        if mode == "operator":
            cluster = stack.enter_context(shared_control_plane())
        else:
            cluster = stack.enter_context(scenario.gated_control_plane(workdir / f"{mode}-k8s"))
        for i in range(runs):
            tmp = workdir / f"{mode}-{i}"
            tmp.mkdir()
            o = scenario.run(cluster, tmp)
            print(f"{mode} run {i + 1}/{runs}: {o.summary()}", flush=True)
            out.append(
                {
                    **{m: round(getattr(o, m), 2) for m in METRICS},
                    "replicas_seen": o.replicas_seen,
                    "hpa_min_replicas": o.hpa_min_replicas,
                }
            )
    return {"runs": out, "median": {m: round(statistics.median(r[m] for r in out), 2) for m in METRICS}}


def markdown(results: dict) -> str:
    s = results["scenario"]
    lines = [
        f"# Worker autoscaling ({results['date']}, {results['cores']} cores)",
        "",
        f"Idle pool at 0, {s['messages']} messages enqueued at once, target {s['target']} per replica, "
        f"max {s['max_replicas']}, HPA sync {s['hpa_sync_seconds']} s, operator cooldown "
        f"{s['cooldown_seconds']} s. Medians of {results['runs']} runs, seconds.",
        "",
        "| mode | first worker | full scale (10) | drained -> zero |",
        "|---|---|---|---|",
    ]
    names = {"operator": "operator moves 0 <-> 1, HPA 1..N", "hpa-zero": "HPAScaleToZero: HPA 0..N"}
    for mode, r in results["modes"].items():
        m = r["median"]
        lines.append(f"| {names[mode]} | {m['first_worker']:.1f} | {m['full_scale']:.1f} | {m['to_zero']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results" / "autoscaling.json",
        help="results JSON; the markdown goes beside it (.md)",
    )
    args = parser.parse_args(argv)
    if not k8s_support._module.can_run():
        print("bench.autoscaling skipped: no Go toolchain to build the local control plane (hack/k8s/README.md)")
        return 0
    results = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "cores": os.cpu_count(),
        "runs": args.runs,
        "scenario": {
            "messages": scenario.TOTAL,
            "target": scenario.TARGET,
            "max_replicas": scenario.MAX,
            "hpa_sync_seconds": scenario.HPA_SYNC_SECONDS,
            "cooldown_seconds": scenario.COOLDOWN,
            "work_seconds_per_message": autoscale_jobs.WORK_SECONDS,
            "worker_concurrency": scenario.CONCURRENCY,
        },
        "modes": {},
    }
    with tempfile.TemporaryDirectory(prefix="rankq-bench-as-") as tmp:
        for mode in args.modes:
            results["modes"][mode] = run_mode(mode, args.runs, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
