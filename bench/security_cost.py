"""What the security work costs: `python -m bench.security_cost` (part of `make bench`).

Two builds of RankQ run in the same run, each as a 3-node group on loopback, under the same load
generators: the commit before the security work (its own virtualenv, built once per commit under
~/.cache/rankq/bench/) with its defaults — plain Raft traffic, no API token —, and this tree in
its closed mode: peers authenticated and encrypted with a shared secret, every request carrying a
bearer token. The groups alternate (A B, B A, A B ...), one fresh group per arm and repetition,
so drift in the machine's load falls on both; each figure is the median of the repetitions.

Paths (100-byte payloads, load to the leader):

- `http_batch`: HTTP enqueue, 100 messages per request, 8 connections (wrk);
- `http_single`: HTTP enqueue, one message per request, 50 connections (wrk);
- `grpc_unary`: gRPC `Enqueue`, one message per call, 50 clients with a connection each;
- `drain`: a queue filled with N messages emptied by 4 consumers, `dequeue(max=100)` + batch ack.

Beside throughput, the CPU all three members used per message (from /proc): on a shared machine
it moves less than throughput does.

    python -m bench.security_cost                      # 3 repetitions, writes bench/results/security_cost.*
    python -m bench.security_cost --reps 1 --duration 4 --out /tmp/sc   # smoke run
    python -m bench.security_cost --baseline REV       # another baseline commit

The default baseline is the state of main just before the security branches (peer security, API
access and TLS, edge validation) were merged. `git log --first-parent main` does not show it: main
was fast-forwarded onto the validation branch, so its first-parent history passes through that
branch's commits; the baseline is the main commit that branch and the access branch last merged.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import httpx

from . import procs as P
from .procs import Failure, Procs, Server, run_tool

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = Path(os.environ.get("RANKQ_BENCH_CACHE", Path.home() / ".cache" / "rankq" / "bench"))
# main before the security merges: "tests: archive test module named apart from the engine's"
BASELINE = "3b81428135be812ab4b272c4983e0b800e2f1549"
PAYLOAD_BYTES = 100
PATHS = ["http_batch", "http_single", "grpc_unary", "drain"]
LABELS = {
    "http_batch": "HTTP enqueue, 100 msg/request, 8 connections",
    "http_single": "HTTP enqueue, 1 msg/request, 50 connections",
    "grpc_unary": "gRPC Enqueue, 1 msg/call, 50 clients",
    "drain": "drain: dequeue(max=100) + batch ack, 4 consumers",
}
SHORT = {
    "http_batch": "HTTP batches",
    "http_single": "HTTP one per request",
    "grpc_unary": "gRPC one per call",
    "drain": "drain",
}
LIMIT = 0.05  # the largest throughput drop the issue allows


@dataclass
class Plan:
    reps: int = 3
    duration: float = 8.0  # measured seconds per throughput run
    warmup: float = 2.0
    batch: int = 100
    batch_conns: int = 8
    clients: int = 50
    drain_messages: int = 60_000
    drain_consumers: int = 4
    group_size: int = 3


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- the two builds ----------------------------------------------------------------------------------


@dataclass
class Build:
    """A RankQ build the bench can start: its `rankq` command, its .proto, how a group is configured."""

    name: str
    commit: str
    rankq: Path
    proto: Path
    secret: bool  # members share a Raft secret (--raft-password-file)
    token: bool  # the API needs a token; every request carries it


def git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def baseline_build(rev: str) -> Build:
    """The commit `rev` installed into its own virtualenv under the bench cache (once per commit). The
    sources come from `git archive`, so the work tree is not touched; the server runs through the
    venv's `rankq` script, so nothing of this tree is on its import path."""
    commit = git("rev-parse", f"{rev}^{{commit}}")
    home = CACHE / f"baseline-{commit[:12]}"
    rankq = home / "venv" / "bin" / "rankq"
    stamp = home / ".installed"
    if not stamp.exists():
        log(f"building the baseline {commit[:12]} into {home} (once; about a minute)")
        shutil.rmtree(home, ignore_errors=True)
        (home / "src").mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit], capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(home / "src")], input=archive, check=True)
        subprocess.run([sys.executable, "-m", "venv", str(home / "venv")], check=True)
        pip = [str(home / "venv" / "bin" / "python"), "-m", "pip", "install", "-q"]
        with open(home / "install.log", "wb") as out:
            # every extra (commits since packaging extras need [all] for the server; older ones warn)
            src = f"{home / 'src'}[all]"
            done = subprocess.run(pip + [src], stdout=out, stderr=subprocess.STDOUT, timeout=900)
        if done.returncode != 0 or not rankq.exists():
            raise Failure(f"installing the baseline failed; see {home / 'install.log'}")
        stamp.write_text(commit + "\n")
    return Build(
        "baseline",
        commit,
        rankq,
        home / "src" / "rankq" / "server" / "proto" / "rankq.proto",
        secret=False,
        token=False,
    )


def current_build() -> Build:
    rankq = Path(sys.executable).parent / "rankq"
    if not rankq.exists():
        raise Failure(f"no rankq script beside {sys.executable}: run from the project's venv (make venv)")
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    return Build(
        "current",
        git("rev-parse", "HEAD") + (" (with uncommitted changes)" if dirty else ""),
        rankq,
        ROOT / "rankq" / "server" / "proto" / "rankq.proto",
        secret=True,
        token=True,
    )


# ---- a group of one build ----------------------------------------------------------------------------


def server_env() -> dict:
    """The servers' environment: nothing that could put another build's modules or settings first."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("RANKQ_")}


def private_file(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


class Group:
    """A fresh `size`-node group of `build` in `root`; `token` is what every request must carry."""

    def __init__(self, procs: Procs, build: Build, root: Path, size: int, name: str) -> None:
        self.build = build
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        extra: list[str] = []
        self.token: str | None = None
        if build.secret:
            extra += ["--raft-password-file", str(private_file(root / "raft-secret", secrets.token_urlsafe(32)))]
        if build.token:
            self.token = secrets.token_urlsafe(32)
            extra += ["--api-token-file", str(private_file(root / "api-tokens", self.token + "\n"))]
        ports = [{"http": P.free_port(), "grpc": P.free_port(), "raft": P.free_port()} for _ in range(size)]
        peers = ",".join(f"n{i}={P.HOST}:{p['raft']}" for i, p in enumerate(ports))
        self.members: list[Server] = []
        for i, p in enumerate(ports):
            args = [
                str(build.rankq),
                "server",
                "--data-dir",
                str(root / f"n{i}"),
                "--host",
                P.HOST,
                "--http-port",
                str(p["http"]),
                "--grpc-port",
                str(p["grpc"]),
                "--raft-port",
                str(p["raft"]),
                "--node-id",
                f"n{i}",
                "--peers",
                peers,
                *extra,
            ]
            proc = procs.spawn(f"{name}-n{i}", args, env=server_env())
            server = Server("rankq", proc, p["http"], p["grpc"])
            server.node_id = f"n{i}"
            self.members.append(server)
        for m in self.members:
            m.group = self.members
        self.leader: Server | None = None

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    @property
    def env(self) -> dict:
        """The load generators' environment: they send RANKQ_API_TOKEN as a bearer token when set."""
        env = {k: v for k, v in os.environ.items() if k != "RANKQ_API_TOKEN"}
        if self.token:
            env["RANKQ_API_TOKEN"] = self.token
        return env

    def _agreed_leader(self) -> Server | None:
        seen = set()
        for m in self.members:
            r = httpx.get(m.base + "/api/v1/cluster", headers=self.headers, timeout=1.0)
            r.raise_for_status()
            seen.add(r.json()["leader"])
        if len(seen) != 1 or None in seen:
            return None
        leader = seen.pop()
        return next((m for m in self.members if m.node_id == leader), None)

    def ready(self, timeout: float = 90.0) -> Server:
        for m in self.members:
            P.wait_rankq_ready(m, timeout)
        self.leader = P.wait_until(self._agreed_leader, timeout, None, "an agreed leader", poll=0.1)
        return self.leader

    def create_queue(self, name: str) -> None:
        r = httpx.post(self.leader.base + "/api/v1/queues", json={"name": name}, headers=self.headers, timeout=10.0)
        if r.status_code != 201:
            raise Failure(f"create queue {name!r}: {r.status_code} {r.text[:200]}")

    def counts(self, queue: str) -> dict:
        r = httpx.get(f"{self.leader.base}/api/v1/queues/{queue}", headers=self.headers, timeout=5.0)
        r.raise_for_status()
        return r.json()["counts"]

    def stop(self) -> None:
        for m in self.members:
            m.proc.stop()
        shutil.rmtree(self.root, ignore_errors=True)


# ---- the paths ---------------------------------------------------------------------------------------


class Bench:
    def __init__(self, plan: Plan, tools: dict, workdir: Path) -> None:
        self.plan = plan
        self.tools = tools
        self.workdir = workdir
        self.procs = Procs(workdir)
        self.count = 0
        body = '{"payload":"%s"}' % ("x" * (PAYLOAD_BYTES - 2))
        self.single_body = workdir / "single.json"
        self.single_body.write_text(body)
        self.batch_body = workdir / "batch.json"
        self.batch_body.write_text('{"messages":[' + ",".join([body] * plan.batch) + "]}")

    def tool(self, args: list[str], env: dict, timeout: float, marker: str | None = None) -> dict:
        return run_tool(args, timeout, marker, env=env)

    def wrk(self, g: Group, path: str, body: Path, conns: int, seconds: float) -> dict:
        args = [
            self.tools["WRK"],
            "-t1",
            f"-c{conns}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "10s",
            "-s",
            str(HERE / "post.lua"),
            g.leader.base + path,
            "--",
            str(body),
        ]
        r = self.tool(args, g.env, seconds + 60, marker="WRKJSON ")
        errors = sum(r[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
        if errors:
            raise Failure(f"wrk saw {errors} errors against {g.build.name}: {r}")
        return r

    def http_enqueue(self, g: Group, per_request: int) -> dict:
        p = self.plan
        conns = p.batch_conns if per_request > 1 else p.clients
        body = self.batch_body if per_request > 1 else self.single_body
        path = "/api/v1/queues/bench/messages" + ("/batch" if per_request > 1 else "")
        self.wrk(g, path, body, conns, p.warmup)
        with P.group_cpu_meter(g.leader) as cpu:
            r = self.wrk(g, path, body, conns, p.duration)
        msgs = r["requests"] * per_request
        return self.result(
            msgs / (r["duration_us"] / 1e6), msgs, cpu, p50_ms=r["p50_us"] / 1000, p99_ms=r["p99_us"] / 1000
        )

    def grpc_unary(self, g: Group) -> dict:
        p = self.plan
        args = [
            self.tools["RANKQ_LOAD"],
            "grpc-unary",
            "-addr",
            g.leader.grpc_addr,
            "-proto",
            str(g.build.proto),
            "-queue",
            "bench",
            "-clients",
            str(p.clients),
            "-payload-bytes",
            str(PAYLOAD_BYTES),
            "-duration",
            f"{p.duration}s",
            "-warmup",
            f"{p.warmup}s",
        ]
        with P.group_cpu_meter(g.leader) as cpu:
            r = self.tool(args, g.env, p.duration + p.warmup + 60)
        if r["errors"]:
            raise Failure(f"gRPC unary against {g.build.name}: {r}")
        # the CPU meter spans the warm-up too: prorate it to the measured part
        share = p.duration / (p.duration + p.warmup)
        lat = r["latency"]
        return self.result(r["rate"], r["calls"], cpu, share, p50_ms=lat["p50_ms"], p99_ms=lat["p99_ms"])

    def drain(self, g: Group) -> dict:
        p = self.plan
        g.create_queue("drain")
        fill = self.tool(
            [
                self.tools["RANKQ_LOAD"],
                "fill",
                "-base",
                g.leader.base,
                "-queue",
                "drain",
                "-count",
                str(p.drain_messages),
                "-batch",
                "100",
                "-conns",
                "4",
                "-payload-bytes",
                str(PAYLOAD_BYTES),
                "-deadline",
                "120s",
            ],
            g.env,
            180,
        )
        P.wait_until(lambda: g.counts("drain")["ready"] == p.drain_messages, 30, g.leader.proc, "the fill")
        with P.group_cpu_meter(g.leader) as cpu:
            r = self.tool(
                [
                    self.tools["RANKQ_LOAD"],
                    "drain",
                    "-base",
                    g.leader.base,
                    "-queue",
                    "drain",
                    "-count",
                    str(p.drain_messages),
                    "-consumers",
                    str(p.drain_consumers),
                    "-max",
                    "100",
                    "-deadline",
                    "120s",
                ],
                g.env,
                180,
            )
        if r["errors"] or r["ack_failures"] or r["acked"] != p.drain_messages:
            raise Failure(f"drain against {g.build.name}: {r}")
        return self.result(r["rate"], r["acked"], cpu, fill_rate=fill["rate"])

    @staticmethod
    def result(rate: float, msgs: int, cpu: dict, share: float = 1.0, **extra) -> dict:
        def per_msg(seconds: float | None) -> float | None:
            return seconds * share / msgs * 1e6 if msgs and seconds is not None else None

        others = [o["cpu_seconds"] for o in cpu.get("others", ()) if "cpu_seconds" in o]
        return {
            "value": rate,
            "group_cpu_us_per_msg": per_msg(cpu.get("group_cpu_seconds")),
            "leader_cpu_us_per_msg": per_msg(cpu.get("cpu_seconds")),
            "follower_cpu_us_per_msg": per_msg(statistics.mean(others)) if others else None,
            "leader_cpu_percent": cpu.get("cpu_percent"),
            **extra,
            **P.machine_load(),
        }

    def run_arm(self, build: Build, paths: list[str]) -> dict:
        self.count += 1
        name = f"{self.count:02d}-{build.name}"
        g = Group(self.procs, build, self.workdir / name, self.plan.group_size, name)
        try:
            g.ready()
            g.create_queue("bench")
            out = {}
            # drain first, on its own queue, while the group's log is short; the enqueue paths follow
            for path in sorted(paths, key=lambda k: k != "drain"):
                if path == "drain":
                    out[path] = self.drain(g)
                elif path == "grpc_unary":
                    out[path] = self.grpc_unary(g)
                else:
                    out[path] = self.http_enqueue(g, self.plan.batch if path == "http_batch" else 1)
            return out
        finally:
            g.stop()


# ---- summary and report -----------------------------------------------------------------------------

ARMS = ["baseline", "baseline-secret", "current"]
ARM_TEXT = {
    "baseline": "the commit before the security merges with its defaults: Raft traffic in plain pickle, no API token",
    "baseline-secret": "the same commit with its optional `--raft-password-file` (PySyncObj's own encryption, "
    "what the operator passed to every group): the cost of encrypting peers, measured in the old code",
    "current": "this tree in its closed mode: peers authenticated and encrypted with a shared secret, a bearer "
    "token on every request, the validation layer on every input",
}


def summarise(runs: dict, paths: list[str]) -> dict:
    """Per path and arm: median, min, max, spread and CPU per message; then current against each other
    arm: the ratio of the medians, and the median of the ratios of runs of the same repetition
    (taken minutes apart at most, so their spread shows how much of a difference is noise)."""
    out = {}
    for path in paths:
        arms = {}
        for arm, reps in runs.items():
            values = [r[path]["value"] for r in reps]
            cpu = [r[path]["group_cpu_us_per_msg"] for r in reps if r[path].get("group_cpu_us_per_msg")]
            med = statistics.median(values)
            arms[arm] = {
                "median": med,
                "min": min(values),
                "max": max(values),
                "values": values,
                "spread": (max(values) - min(values)) / med,
                "cpu_values": cpu,
                "group_cpu_us_per_msg": statistics.median(cpu) if cpu else None,
            }
            for role in ("leader", "follower"):
                got = [r[path][f"{role}_cpu_us_per_msg"] for r in reps if r[path].get(f"{role}_cpu_us_per_msg")]
                arms[arm][f"{role}_cpu_us_per_msg"] = statistics.median(got) if got else None
        against = {}
        for ref in (a for a in runs if a != "current"):
            pairs = [c[path]["value"] / b[path]["value"] for b, c in zip(runs[ref], runs["current"])]
            ratio = arms["current"]["median"] / arms[ref]["median"]
            cb, cc = arms[ref]["group_cpu_us_per_msg"], arms["current"]["group_cpu_us_per_msg"]
            against[ref] = {
                "ratio": ratio,
                "pair_ratios": pairs,
                "pair_ratio_median": statistics.median(pairs),
                "cpu_ratio": cc / cb if cb and cc else None,
                "drop_over_limit": ratio < 1 - LIMIT,
            }
        out[path] = {"label": LABELS[path], "unit": "msg/s", "arms": arms, "current_vs": against}
    return out


def _us(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


def _range(x: dict) -> str:
    return f"{x['median']:,.0f} ({x['min']:,.0f}–{x['max']:,.0f})"


def markdown(res: dict) -> str:
    m = res["meta"]
    plan = m["plan"]
    arms = m["arms"]
    refs = [a for a in arms if a != "current"]
    lines = [
        "# What the security work costs",
        "",
        f"`python -m bench.security_cost` ({m['date']}, {m['cores']} cores shared with other work, Python "
        f"{m['python']}). Each arm is a {plan['group_size']}-node group on loopback, load to the leader, "
        f"{PAYLOAD_BYTES}-byte payloads, every write committed on a majority before it is answered:",
        "",
    ]
    for arm in arms:
        commit = m["commits"][arm]
        lines.append(f"- **{arm}** (`{commit[:12]}`{commit[40:]}): {ARM_TEXT[arm]};")
    lines += [
        "",
        f"A fresh group per arm and repetition; the arms take turns, rotated each repetition ({' '.join(m['order'])}), "
        f"so drift in the machine's load falls on all of them. {plan['duration']:g} s measured after "
        f"{plan['warmup']:g} s of warm-up per enqueue path; the drain empties {plan['drain_messages']:,} messages. "
        f"Throughput figures are medians of {plan['reps']} with the min–max of the runs; CPU is what all "
        f"{plan['group_size']} members used per message (median), which the machine's load moves less than "
        "throughput.",
        "",
        "| path | "
        + " | ".join(f"{a} msg/s" for a in arms)
        + " | "
        + " | ".join(f"current / {a}: medians, paired runs (min–max)" for a in refs)
        + " | CPU µs/msg: "
        + " → ".join(arms)
        + " |",
        "| --- | " + " | ".join("---:" for _ in arms) + " | " + " | ".join("---:" for _ in refs) + " | ---: |",
    ]
    for x in res["results"].values():
        cells = [_range(x["arms"][a]) for a in arms]
        for ref in refs:
            v = x["current_vs"][ref]
            cells.append(
                f"**{v['ratio']:.0%}**, {v['pair_ratio_median']:.0%} ({min(v['pair_ratios']):.0%}–"
                f"{max(v['pair_ratios']):.0%})"
            )
        cpu = [x["arms"][a]["group_cpu_us_per_msg"] for a in arms]
        cells.append(" → ".join("–" if c is None else f"{c:,.0f}" for c in cpu))
        lines.append(f"| {x['label']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "CPU per message by member (medians, µs): "
        + "; ".join(
            f"{SHORT[path]}: "
            + ", ".join(
                f"{a} leader {_us(x['arms'][a].get('leader_cpu_us_per_msg'))} / follower "
                f"{_us(x['arms'][a].get('follower_cpu_us_per_msg'))}"
                for a in arms
            )
            for path, x in res["results"].items()
        )
        + ".",
    ]
    loads = m["load"]
    lines += [
        "",
        f"Noise: during the measurements the machine's load average ran from {min(loads['loadavg']):.1f} to "
        f"{max(loads['loadavg']):.1f}"
        + (
            f" and CPU pressure (share of time a runnable task waited for a core) from "
            f"{min(loads['cpu_pressure']):.0f}% to {max(loads['cpu_pressure']):.0f}%"
            if loads.get("cpu_pressure")
            else ""
        )
        + "; the min–max ranges above are each arm's spread across its runs. Per run: "
        + "; ".join(
            f"{p} " + ", ".join(f"{a} " + "/".join(f"{v:,.0f}" for v in x["arms"][a]["values"]) for a in arms)
            for p, x in res["results"].items()
        )
        + ".",
        "",
    ]
    over = [x for x in res["results"].values() if x["current_vs"]["baseline"]["drop_over_limit"]]
    if over:
        lines.append(
            f"Against the baseline, paths whose median throughput is below {1 - LIMIT:.0%}: "
            + ", ".join(f"{x['label']} ({x['current_vs']['baseline']['ratio']:.1%})" for x in over)
            + "."
        )
    else:
        lines.append(f"Against the baseline every path keeps at least {1 - LIMIT:.0%} of the median throughput.")
    lines.append("")
    notes = HERE / "security_cost_notes.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--baseline", default=BASELINE, help="commit to compare with (default: main before the security merges)"
    )
    ap.add_argument(
        "--arms", default=",".join(ARMS), help=f"comma-separated subset of {', '.join(ARMS)} (current is always run)"
    )
    ap.add_argument("--reps", type=int, default=Plan.reps)
    ap.add_argument("--duration", type=float, default=Plan.duration, help="measured seconds per enqueue run")
    ap.add_argument("--only", help="comma-separated subset of: " + ", ".join(PATHS))
    ap.add_argument("--out", default=str(HERE / "results" / "security_cost"), help="results path prefix (.json, .md)")
    ap.add_argument("--render", action="store_true", help="only rewrite the markdown from the results JSON")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (server logs)")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.render:
        Path(f"{args.out}.md").write_text(markdown(json.loads(Path(f"{args.out}.json").read_text())))
        return 0
    paths = PATHS if not args.only else [p.strip() for p in args.only.split(",")]
    if set(paths) - set(PATHS):
        ap.error(f"unknown path(s): {', '.join(sorted(set(paths) - set(PATHS)))}")
    arms = [a for a in ARMS if a in {x.strip() for x in args.arms.split(",")} | {"current"}]
    if len(arms) < 2:
        ap.error(f"--arms needs at least one of {', '.join(a for a in ARMS if a != 'current')}")
    plan = Plan(reps=args.reps, duration=args.duration)
    from .run import setup_tools

    tools = setup_tools()
    baseline = baseline_build(args.baseline)
    builds = {
        "baseline": baseline,
        "baseline-secret": replace(baseline, name="baseline-secret", secret=True),
        "current": current_build(),
    }
    workdir = Path(tempfile.mkdtemp(prefix="rankq-bench-security-"))
    b = Bench(plan, tools, workdir)
    runs: dict[str, list] = {arm: [] for arm in arms}
    order: list[str] = []
    started = time.monotonic()
    try:
        for rep in range(plan.reps):
            for arm in arms[rep % len(arms) :] + arms[: rep % len(arms)]:
                runs[arm].append(b.run_arm(builds[arm], paths))
                order.append(arm)
                log(
                    f"rep {rep + 1}/{plan.reps} {arm}: "
                    + ", ".join(
                        f"{k} {v['value']:,.0f} ({v['group_cpu_us_per_msg'] or 0:,.0f} µs/msg)"
                        for k, v in runs[arm][-1].items()
                    )
                )
    except Failure as err:
        log(f"benchmark failed: {err}; logs in {workdir / 'logs'}")
        return 1
    finally:
        b.procs.close()
    samples = [r for arm in runs.values() for rep in arm for r in rep.values()]
    res = {
        "meta": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "arms": arms,
            "commits": {arm: builds[arm].commit for arm in arms},
            "plan": asdict(plan),
            "order": order,
            "seconds": round(time.monotonic() - started, 1),
            "load": {
                "loadavg": [s["loadavg"] for s in samples],
                "cpu_pressure": [s["cpu_pressure"] for s in samples if "cpu_pressure" in s],
            },
        },
        "results": summarise(runs, paths),
        "runs": runs,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{out}.json").write_text(json.dumps(res, indent=2) + "\n")
    Path(f"{out}.md").write_text(markdown(res))
    print(Path(f"{out}.md").read_text())
    if args.keep:
        log(f"work dir kept: {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
