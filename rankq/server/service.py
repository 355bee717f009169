"""The queue service both APIs call: proposes commands, waits for commit, serves reads, long polls.

It is the asyncio side of the replication boundary. Writes from many concurrent requests are
gathered into one proposal while the previous one is being committed (group commit), so the log
sees one entry per batch however many requests arrive. Reads come from the local copy of the state
under the engine lock.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

from ..engine import EngineError, Invalid, MessageInfo, NotFound
from ..engine import commands as c
from ..engine.queue import check_messages
from ..replication import RaftNode, ReplicationError
from . import metrics
from .cluster import ClusterOps
from .errors import ClusterConflict, Unavailable

__all__ = ["QueueService", "QueueView", "Unavailable", "ClusterConflict"]

log = logging.getLogger("rankq.server")

MAX_WAIT_SECONDS = 20.0
MAX_BATCH_COMMANDS = 2000
MIN_TICK_INTERVAL = 0.05
PROPOSAL_TIMEOUT = 5.0  # a write not committed by then is answered 503 (outcome unknown)


def now_ms() -> int:
    return int(time.time() * 1000)


def _log_release_failure(task: asyncio.Future) -> None:
    if not task.cancelled() and task.exception() is not None:  # the lease then runs out instead
        log.warning("could not release a message of a departed dequeue: %s", task.exception())


@dataclass(frozen=True)
class QueueView:
    name: str
    config: dict
    counts: dict[str, int]
    totals: dict[str, int]
    created_at: int


class QueueService(ClusterOps):
    def __init__(
        self,
        node: RaftNode,
        max_inflight: int = 2,
        member_info: dict | None = None,
        proposal_timeout: float = PROPOSAL_TIMEOUT,
    ) -> None:
        self.node = node
        self.max_inflight = max_inflight
        self.member_info = member_info or {}
        self.proposal_timeout = proposal_timeout
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._inflight = 0
        self._batches: dict[int, tuple[float, list]] = {}  # proposals awaiting commit
        self._batch_ids = 0
        self._tasks: list[asyncio.Task] = []
        self._ready_events: dict[str, asyncio.Event] = {}
        self._deadline_changed = asyncio.Event()  # made again in start(), on the serving loop
        self._ticker: asyncio.Task | None = None
        self.archiver: Any = None  # set when the group archives to PostgreSQL (server/archive.py)
        self._closing = False  # shutting down: no new writes
        self._last_leader: dict | None = None  # for error details while no leader is known
        self._answered = asyncio.Event()  # set whenever a proposal is answered
        node.state_machine.on_woken = self._woken_from_raft

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline_changed = asyncio.Event()
        self._answered = asyncio.Event()
        self.node.start()
        self._ticker = asyncio.create_task(self._tick_loop(), name="rankq-ticker")
        self._tasks = [
            self._ticker,
            asyncio.create_task(self._expire_loop(), name="rankq-expire"),
            asyncio.create_task(self._register_loop(), name="rankq-register"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self.node.stop)

    def is_ready(self) -> bool:
        """Whether this node can take writes now; `/readyz` and load balancers go by it."""
        return not self._closing and self.node.is_ready() and not self.node.cut_off()

    @property
    def closing(self) -> bool:
        """Shutting down: new writes are refused."""
        return self._closing

    def not_ready_reason(self) -> str:
        if self._closing:
            return "shutting down"
        if self.node.cut_off():
            return "cut off from the group's leader (removed from the group, or partitioned away)"
        return "no leader elected or log not yet applied"

    def begin_shutdown(self) -> None:
        """Take no more writes (they get 503 naming the leader) and end long polls at once.

        Writes accepted before this are still proposed and answered: see `drain`.
        """
        self._closing = True
        events, self._ready_events = self._ready_events, {}
        for ev in events.values():
            ev.set()

    def waiting_writes(self) -> int:
        """Writes accepted and not yet answered (queued here or proposed and awaiting commit)."""
        return len(self._pending) + sum(len(batch) for _, batch in self._batches.values())

    async def drain(self, timeout: float) -> int:
        """Wait up to `timeout` for accepted writes to be answered; answer the rest 503.

        A proposed write that did not commit by then may still commit after this node is gone, so
        its answer says the outcome is unknown (a retry with the same dedup key is safe); a write
        never proposed was not written. Returns how many writes were answered that way.
        """
        deadline = time.monotonic() + timeout
        while self._pending or self._batches:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            self._answered.clear()
            try:
                await asyncio.wait_for(self._answered.wait(), timeout=left)
            except TimeoutError:
                break
        return self._answer_all("this node shut down")

    def _answer_all(self, why: str) -> int:
        """Answer every write still waiting with 503: outcome unknown if proposed, else not written."""
        hint = self._leader_hint()
        unknown = Unavailable(
            f"{why}; outcome unknown",
            detail=(
                f"{why} before the write was committed; the outcome is unknown: retry with the same dedup_key{hint}"
            ),
        )
        not_written = Unavailable(
            f"{why}; not written", detail=(f"{why} before the write was proposed; nothing was written: retry{hint}")
        )
        answered = 0
        for _, batch in self._batches.values():
            answered += self._fail(batch, unknown)
        answered += self._fail(self._pending, not_written)
        self._batches.clear()
        self._pending = []
        self._inflight = 0
        if self._answered is not None:
            self._answered.set()
        return answered

    @staticmethod
    def _fail(batch: list, exc: Exception) -> int:
        n = 0
        for _, fut in batch:
            if not fut.done():
                fut.set_exception(exc)
                n += 1
        return n

    def _leader_hint(self) -> str:
        """'; send writes to the leader n1 at http://...' for error details (or the last one known)."""
        info = self.leader_info()
        which = "the leader"
        if info is None:
            info, which = self._last_leader, "the last known leader"
        if not info or info["address"] == self.node.settings.self_address:
            return "; send writes to another member"
        name = info.get("node_id") or info["address"]
        where = info.get("http_url") or info.get("grpc_target")
        return f"; send writes to {which}, {name}" + (f" at {where}" if where else "")

    def _refusal(self) -> Unavailable | None:
        """Why this node takes no new write, or None when it does."""
        if self._closing:
            return Unavailable(
                "shutting down", detail="this node is shutting down and takes no new writes" + self._leader_hint()
            )
        if self.node.cut_off():
            return Unavailable(
                "cut off",
                detail=(
                    "this node is not in contact with the group's leader (it was removed from the group, "
                    "is not yet added, or is partitioned away) and cannot commit writes" + self._leader_hint()
                ),
            )
        return None

    # ---- proposing ----------------------------------------------------------------------------

    async def submit(self, cmd) -> Any:
        """Replicate one command and return its result, or raise its EngineError."""
        refusal = self._refusal()
        if refusal is not None:
            raise refusal
        fut = self._loop.create_future()
        self._pending.append((cmd, fut))
        self._flush()
        result = await fut
        return result

    def _flush(self) -> None:
        while self._pending and self._inflight < self.max_inflight:
            batch = self._pending[:MAX_BATCH_COMMANDS]
            del self._pending[:MAX_BATCH_COMMANDS]
            self._propose(batch)

    def _propose(self, batch: list) -> None:
        self._inflight += 1
        self._batch_ids += 1
        bid = self._batch_ids
        self._batches[bid] = (time.monotonic(), batch)
        loop = self._loop

        def done(results, error, bid=bid):
            loop.call_soon_threadsafe(self._resolve, bid, results, error)

        try:
            self.node.propose(now_ms(), [cmd for cmd, _ in batch], done)
        except Exception as err:  # the batch could not be serialized: never fail the others with it
            del self._batches[bid]
            self._inflight -= 1
            if len(batch) > 1:
                for item in batch:
                    self._propose([item])
            elif not batch[0][1].done():
                batch[0][1].set_exception(Invalid(f"the request cannot be written to the log ({type(err).__name__})"))

    async def _expire_loop(self) -> None:
        """Answer requests whose proposal has not committed in time (leader lost mid-flight).

        Their outcome is unknown: the entry may still commit later. Clients retry writes with a
        dedup key, which makes the retry safe.
        """
        while True:
            await asyncio.sleep(0.25)
            self._last_leader = self.leader_info() or self._last_leader
            cut_off = self.node.cut_off()  # evaluated often: it keeps track of the last contact
            if cut_off and (self._batches or self._pending) and self.node.leader() is not None:
                # Nothing forwarded to a leader this node cannot reach will commit: answer now. (A
                # deposed leader's own entries may still commit if it is elected again: they wait.)
                self._answer_all("this node lost contact with the group's leader")
                continue
            cutoff = time.monotonic() - self.proposal_timeout
            for bid, (started, batch) in list(self._batches.items()):
                if started < cutoff:
                    del self._batches[bid]
                    self._inflight -= 1
                    exc = Unavailable(f"not committed within {self.proposal_timeout:g}s; the outcome is unknown")
                    self._fail(batch, exc)
                    self._answered.set()
            self._flush()

    def _resolve(self, bid, results, error) -> None:
        entry = self._batches.pop(bid, None)
        if entry is None:  # already answered as timed out
            return
        batch = entry[1]
        if error is None:
            metrics.observe_commit(time.monotonic() - entry[0])
        self._inflight -= 1
        if error is not None:
            if isinstance(error, ReplicationError):
                exc = Unavailable(
                    str(error),
                    detail=(f"no leader can commit writes right now ({error}); retry shortly{self._leader_hint()}"),
                )
            else:
                exc = error
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(exc)
        else:
            for (_, fut), res in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)
        self._deadline_changed.set()
        self._answered.set()
        self._flush()

    # ---- time ---------------------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        """Propose a Tick when the earliest delay, lease or retention deadline comes due."""
        while True:
            with self.node.lock:
                deadline = self.node.engine.next_deadline()
            self._deadline_changed.clear()
            wait = 3600.0 if deadline is None else max(MIN_TICK_INTERVAL, (deadline - now_ms()) / 1000)
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that
                # arrives as the event is set, and stop() then waited here for the next deadline.
                async with asyncio.timeout(wait):
                    await self._deadline_changed.wait()
                continue  # something changed: look at the deadline again
            except TimeoutError:
                pass
            if not self.node.is_leader():
                await asyncio.sleep(MIN_TICK_INTERVAL)
                continue
            try:
                await self.submit(c.Tick())
            except Exception as err:
                log.debug("tick not committed: %s", err)
                await asyncio.sleep(MIN_TICK_INTERVAL)

    # ---- long polling -------------------------------------------------------------------------

    def _woken_from_raft(self, queues: set[str]) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._wake, queues)

    def _wake(self, queues: set[str]) -> None:
        for name in queues:
            ev = self._ready_events.pop(name, None)
            if ev is not None:
                ev.set()

    def _ready_event(self, queue: str) -> asyncio.Event:
        ev = self._ready_events.get(queue)
        if ev is None:
            ev = self._ready_events[queue] = asyncio.Event()
        return ev

    # ---- queue operations ---------------------------------------------------------------------

    async def create_queue(self, name: str, settings: dict) -> QueueView:
        await self.submit(c.CreateQueue(name, settings, os.urandom(16)))
        return self.get_queue(name)

    async def update_queue(self, name: str, changes: dict) -> QueueView:
        await self.submit(c.UpdateQueue(name, changes))
        return self.get_queue(name)

    async def delete_queue(self, name: str) -> None:
        await self.submit(c.DeleteQueue(name))
        ev = self._ready_events.pop(name, None)
        if ev is not None:
            ev.set()

    def list_queues(self) -> list[QueueView]:
        with self.node.lock:
            return [self._view(q) for q in self.node.engine.queues.values()]

    def get_queue(self, name: str) -> QueueView:
        with self.node.lock:
            return self._view(self.node.engine.queue(name))

    @staticmethod
    def _view(q) -> QueueView:
        counts = {**q.counts(), "backlog": q.backlog(now_ms())}
        return QueueView(q.name, q.config.as_dict(), counts, dict(q.totals), q.created_at)

    async def enqueue(self, queue: str, messages: list[c.NewMessage]) -> list[tuple[int, bool]]:
        q = self.node.engine.queues.get(queue)
        check_messages(queue, None if q is None else q.config, messages)  # refused before the log
        return await self.submit(c.Enqueue(queue, tuple(messages)))

    async def dequeue(self, queue: str, max: int = 1, wait: float = 0.0, visibility_timeout_ms: int | None = None):
        """Lease up to `max` messages; with `wait`, hold on until one is ready or the wait ends."""
        wait = min(float(wait or 0.0), MAX_WAIT_SECONDS)  # the API layers refuse negative waits
        deadline = time.monotonic() + wait
        cmd = c.Dequeue(queue, max, visibility_timeout_ms)
        while True:
            ev = self._ready_event(queue)  # taken before proposing, so no wake-up is missed
            proposal = asyncio.ensure_future(self.submit(cmd))
            try:
                got = await asyncio.shield(proposal)
            except asyncio.CancelledError:  # the client went away: what it leased goes back
                proposal.add_done_callback(functools.partial(self._release_orphans, queue))
                raise
            left = deadline - time.monotonic()
            if got or left <= 0:
                return got
            try:
                await asyncio.wait_for(ev.wait(), timeout=left)
            except TimeoutError:
                return []
            if self._closing:
                return []  # this node is stopping: end the wait early, with nothing leased
            if queue not in self.node.engine.queues:
                raise NotFound(f"queue {queue!r} not found")

    def _release_orphans(self, queue: str, proposal: asyncio.Future) -> None:
        """Release the messages a dequeue leased for a caller that is no longer there."""
        if proposal.cancelled() or proposal.exception() is not None:
            return
        for d in proposal.result():
            task = asyncio.ensure_future(self.submit(c.Release(queue, d.id, d.lease_token)))
            task.add_done_callback(_log_release_failure)

    async def release(self, queue: str, mid: int, token: str) -> None:
        await self.submit(c.Release(queue, mid, token))

    async def ack(self, queue: str, items: list[c.AckItem]) -> list[EngineError | None]:
        return await self.submit(c.Ack(queue, tuple(items)))

    async def nack(
        self,
        queue: str,
        mid: int,
        token: str,
        delay_ms: int | None = None,
        error: str | None = None,
        dead: bool = False,
    ) -> dict:
        return await self.submit(c.Nack(queue, mid, token, delay_ms, error, random.random(), dead))

    async def extend(self, queue: str, mid: int, token: str, visibility_timeout_ms: int | None = None) -> int:
        return await self.submit(c.Extend(queue, mid, token, visibility_timeout_ms))

    async def set_priority(self, queue: str, mid: int, priority: int) -> MessageInfo:
        await self.submit(c.SetPriority(queue, mid, priority))
        return self.get_message(queue, mid)

    async def cancel(self, queue: str, mid: int) -> str:
        return await self.submit(c.Cancel(queue, mid))

    async def redrive(self, queue: str, ids: list[int] | None, rate: int | None = None) -> dict:
        """All at once (`rate` None): {"redriven", "not_found"}; paced: {"job": status}."""
        return await self.submit(c.Redrive(queue, None if ids is None else tuple(ids), rate))

    def redrive_status(self, queue: str) -> dict | None:
        """The queue's paced redrive job as this node has applied it, or None when it had none."""
        with self.node.lock:
            return self.node.engine.queue(queue).redrive_status()

    async def stop_redrive(self, queue: str) -> dict:
        return await self.submit(c.StopRedrive(queue))

    def get_message(self, queue: str, mid: int) -> MessageInfo:
        with self.node.lock:
            return self.node.engine.message(queue, mid)

    def peek(self, queue: str, limit: int) -> list[MessageInfo]:
        """The next ready messages in delivery order, leasing nothing (a local read)."""
        with self.node.lock:
            return self.node.engine.queue(queue).peek(limit)

    def dead_letters(self, queue: str, after: int | None = None, limit: int = 100) -> list[MessageInfo]:
        with self.node.lock:
            return self.node.engine.queue(queue).dead_letters(after, limit)
