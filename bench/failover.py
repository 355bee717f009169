"""Failover of a 3-node group: kill -9 the leader while a client writes; time the first write the new
leader accepts.

A writer keeps sending small enqueues (each with its own dedup key, 0.5 s timeout) to every member in
turn from a few concurrent senders. Per kill:

1. the members agree on a leader and the writer runs for a random 2.5-3.0 s (so the kill falls at
   any phase of the heartbeat, and the group has been steady for longer than the Raft connection
   timeout, as a group that has run for a while has: a restarted member's connections are fresh);
2. the leader gets SIGKILL at a recorded instant;
3. failover time = from the kill to the answer of the first enqueue *sent after the kill* that got
   201 (only a new leader can commit it; its `X-RankQ-Leader` is checked to name another node).
   Beside it, polls of the survivors' /api/v1/cluster give when a survivor first stopped naming the
   old leader (its election timeout ran out) and when one first named a new leader (election done);
4. the writer pauses, the killed node starts again on its data dir and ports, and the next kill
   waits until it is ready, all members agree on a leader and its queue counts equal the leader's.

Everything runs on one asyncio loop in the harness process, on loopback, bounded by a kill count and
a time budget.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import random
import time
from dataclasses import dataclass

import httpx

from . import procs as P
from .procs import Failure, Server

QUEUE = "failover"
PAYLOAD = {"p": "x" * 64}
STEADY = (2.5, 3.0)  # seconds of writes before a kill: longer than RaftSettings.connection_timeout (2 s)
FAILOVER_DEADLINE = 15.0  # a kill with no accepted write by then counts as a failed failover
CATCH_UP_DEADLINE = 90.0


@dataclass
class Attempt:
    sent: float
    done: float
    status: int | str  # HTTP status, or "timeout" / "error" (connection refused or reset)
    leader: str | None  # X-RankQ-Leader of the answer
    target: str  # node id the request went to


def quantile(values: list[float], q: float) -> float | None:
    """Nearest-rank quantile: with 20 values p99 is the largest and p90 the 18th."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def distribution(values: list[float]) -> dict:
    return {
        "n": len(values),
        "p50": quantile(values, 0.5),
        "p90": quantile(values, 0.9),
        "p99": quantile(values, 0.99),
        "max": max(values) if values else None,
        "min": min(values) if values else None,
    }


class Writer:
    """Concurrent senders of small enqueues, each to the next member in turn, paced per sender."""

    def __init__(
        self, client: httpx.AsyncClient, members: list[Server], senders: int, interval: float, timeout: float
    ) -> None:
        self.client = client
        self.targets = [(m.node_id, f"{m.base}/api/v1/queues/{QUEUE}/messages") for m in members]
        self.senders = senders
        self.interval = interval
        self.timeout = timeout
        self.attempts: list[Attempt] = []
        self.acked = 0  # writes answered 201
        self.running = asyncio.Event()
        self.idle = asyncio.Event()  # set while no request is in flight
        self.inflight = 0
        self.keys = itertools.count()
        self.rr = itertools.cycle(range(len(self.targets)))
        self.tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._send_loop()) for _ in range(self.senders)]

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def resume(self) -> None:
        self.running.set()

    async def pause(self) -> None:
        self.running.clear()
        while self.inflight:
            await asyncio.sleep(0.01)

    async def _send_loop(self) -> None:
        while True:
            await self.running.wait()
            node_id, url = self.targets[next(self.rr)]
            body = {"payload": PAYLOAD, "dedup_key": f"fo-{next(self.keys)}"}
            self.inflight += 1
            sent = time.monotonic()
            leader = None
            try:
                r = await self.client.post(url, json=body, timeout=self.timeout)
                status, leader = r.status_code, r.headers.get("x-rankq-leader")
            except httpx.TimeoutException:
                status = "timeout"
            except httpx.HTTPError:
                status = "error"
            finally:
                self.inflight -= 1
            done = time.monotonic()
            self.attempts.append(Attempt(sent, done, status, leader, node_id))
            if status == 201:
                self.acked += 1
            await asyncio.sleep(max(0.0, sent + self.interval - done))

    def first_accepted(self, after: float, not_leader: str, start: int = 0) -> Attempt | None:
        """The earliest-answered 201 among requests sent at or after `after` (none naming `not_leader`);
        attempts before index `start` finished before `after`."""
        ok = [a for a in self.attempts[start:] if a.sent >= after and a.status == 201 and a.leader != not_leader]
        return min(ok, key=lambda a: a.done) if ok else None


async def status(client: httpx.AsyncClient, m: Server, timeout: float = 0.5) -> dict | None:
    try:
        r = await client.get(m.base + "/api/v1/cluster", timeout=timeout)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


async def agreed_leader(client: httpx.AsyncClient, members: list[Server], deadline: float) -> Server:
    while True:
        live = [m for m in members if m.proc.alive()]
        seen = [await status(client, m) for m in live]
        names = {s["leader"] for s in seen if s}
        if all(seen) and len(names) == 1 and None not in names:
            name = names.pop()
            leader = next((m for m in live if m.node_id == name), None)
            if leader is not None:
                return leader
        if time.monotonic() > deadline:
            raise Failure(f"failover: members did not agree on a leader (saw {names})")
        await asyncio.sleep(0.05)


async def counts(client: httpx.AsyncClient, m: Server) -> dict | None:
    try:
        r = await client.get(f"{m.base}/api/v1/queues/{QUEUE}", timeout=1.0)
        return r.json()["counts"] if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError):
        return None


async def watch_election(
    client: httpx.AsyncClient, survivors: list[Server], old: str, t_kill: float, until: float, poll: float
) -> dict:
    """Poll the survivors' cluster status: when did one stop naming `old`, when did one name a new leader."""
    out: dict = {}
    while time.monotonic() < until and "elected_s" not in out:
        t0 = time.monotonic()
        for st in await asyncio.gather(*(status(client, m, timeout=poll * 4) for m in survivors)):
            if not st:
                continue
            now = time.monotonic() - t_kill
            if st["leader"] != old and "leader_lost_s" not in out:
                out["leader_lost_s"] = now
            if st["leader"] not in (old, None) and "elected_s" not in out:
                out["elected_s"] = now
                out["new_leader"] = st["leader"]
                out["term"] = st.get("term")
        await asyncio.sleep(max(0.0, t0 + poll - time.monotonic()))
    return out


async def run_failover(
    bench, kills: int, budget: float, senders: int = 3, interval: float = 0.025, timeout: float = 0.5, log=print
) -> dict:
    """Start a group, then kill its leader `kills` times (fewer if `budget` seconds run out)."""
    root = bench.workdir / bench._name("failover")
    members = P.start_group(bench.procs, root.name, root, 3, grpc=False, extra=bench.plan.server_args)
    started = time.monotonic()
    runs: list[dict] = []
    try:
        leader = await asyncio.to_thread(P.wait_group_ready, members)
        P.create_queue(leader, QUEUE)
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=64)) as client:
            writer = Writer(client, members, senders, interval, timeout)
            writer.start()
            try:
                for i in range(kills):
                    if time.monotonic() - started > budget:
                        log(f"failover: time budget of {budget:.0f}s spent after {i} kills")
                        break
                    runs.append(await one_kill(bench, client, writer, members))
                    r = runs[-1]
                    log(
                        f"failover kill {i + 1}/{kills}: {r['killed']} -> {r.get('new_leader')}: "
                        f"first write {_s(r['failover_s'])}, election {_s(r.get('elected_s'))}, "
                        f"caught up {r['catch_up_s']:.1f}s"
                    )
            finally:
                await writer.close()
            final = await counts(client, await agreed_leader(client, members, time.monotonic() + 30))
    finally:
        P.stop_group(members)
    return {
        "runs": runs,
        "acked": writer.acked,
        "final_counts": final,
        "seconds": time.monotonic() - started,
        "client": {"senders": senders, "interval_s": interval, "timeout_s": timeout, "targets": "all members in turn"},
    }


def _s(v: float | None) -> str:
    return "none" if v is None else f"{v:.2f}s"


async def one_kill(bench, client: httpx.AsyncClient, writer: Writer, members: list[Server]) -> dict:
    leader = await agreed_leader(client, members, time.monotonic() + 30)
    before = await status(client, leader)
    writer.resume()
    await asyncio.sleep(random.uniform(*STEADY))
    recent = [a for a in writer.attempts[-200:] if a.sent > time.monotonic() - 0.5]
    healthy = sum(1 for a in recent if a.status == 201)
    survivors = [m for m in members if m is not leader]
    load = P.machine_load()
    start = len(writer.attempts)
    t_kill = time.monotonic()
    leader.proc.sigkill()
    watch = asyncio.create_task(
        watch_election(client, survivors, leader.node_id, t_kill, t_kill + FAILOVER_DEADLINE, poll=0.02)
    )
    first = None
    while time.monotonic() < t_kill + FAILOVER_DEADLINE:
        first = writer.first_accepted(t_kill, leader.node_id, start)
        if first is not None:
            break
        await asyncio.sleep(0.01)
    if first is not None:
        await asyncio.sleep(0.2)  # answers still in flight may have come back sooner
        first = writer.first_accepted(t_kill, leader.node_id, start)
    election = await watch
    await writer.pause()
    window = [a for a in writer.attempts[start:] if t_kill <= a.sent and (first is None or a.sent <= first.done)]
    run = {
        "killed": leader.node_id,
        "new_leader": election.get("new_leader") or (first.leader if first else None),
        "failover_s": None if first is None else first.done - t_kill,
        "first_write_via": None if first is None else first.target,
        "first_write_named": None if first is None else first.leader,
        "leader_lost_s": election.get("leader_lost_s"),
        "elected_s": election.get("elected_s"),
        "term_before": before.get("term") if before else None,
        "term": election.get("term"),
        "rounds": election["term"] - before["term"] if before and election.get("term") else None,
        "healthy_writes_before": healthy,
        "during": _tally(window),
        **load,
    }
    # Back to three: the killed node starts again on its data dir and catches up.
    t0 = time.monotonic()
    again = P.restart_member(bench.procs, leader, bench._name(f"failover-{leader.node_id}"))
    deadline = t0 + CATCH_UP_DEADLINE
    await asyncio.to_thread(P.wait_rankq_ready, again, CATCH_UP_DEADLINE)
    while True:
        lead = await agreed_leader(client, members, deadline)
        want, got = await counts(client, lead), await counts(client, again)
        if want is not None and want == got:
            break
        if time.monotonic() > deadline:
            raise Failure(
                f"failover: {again.node_id} did not catch up within {CATCH_UP_DEADLINE:g}s "
                f"({got} vs {want}):\n{again.proc.log_tail()}"
            )
        await asyncio.sleep(0.05)
    run["catch_up_s"] = time.monotonic() - t0
    return run


def _tally(attempts: list[Attempt]) -> dict:
    out: dict = {}
    for a in attempts:
        key = str(a.status)
        out[key] = out.get(key, 0) + 1
    return out


def summary(raw: dict, settings: dict, target: float) -> dict:
    runs = raw["runs"]
    times = [r["failover_s"] for r in runs if r["failover_s"] is not None]
    failed = sum(1 for r in runs if r["failover_s"] is None)
    # a kill with no accepted write within the deadline counts as the deadline (it is above any target)
    dist = distribution(times + [FAILOVER_DEADLINE] * failed)
    out = {
        "unit": "s",
        "kills": len(runs),
        "failed": failed,
        "failover": dist,
        "election": distribution([r["elected_s"] for r in runs if r.get("elected_s") is not None]),
        "leader_lost": distribution([r["leader_lost_s"] for r in runs if r.get("leader_lost_s") is not None]),
        "after_election": distribution(
            [
                r["failover_s"] - r["elected_s"]
                for r in runs
                if r["failover_s"] is not None and r.get("elected_s") is not None
            ]
        ),
        "catch_up": distribution([r["catch_up_s"] for r in runs]),
        "election_rounds": {
            str(k): sum(1 for r in runs if r.get("rounds") == k)
            for k in sorted({r["rounds"] for r in runs if r.get("rounds") is not None})
        },
        "settings": settings,
        "client": raw["client"],
        "acked": raw["acked"],
        "final_counts": raw["final_counts"],
        "target": f"p99 <= {target:g} s",
        "met": dist["p99"] is not None and dist["p99"] <= target and len(runs) >= 20,
        "seconds": raw["seconds"],
        "runs": runs,
    }
    final = raw["final_counts"] or {}
    out["acked_all_kept"] = sum(final.values()) >= raw["acked"] if final else None
    return out
