"""The queue service both APIs call: proposes commands, waits for commit, serves reads, long polls.

It is the asyncio side of the replication boundary. Writes from many concurrent requests are
gathered into one proposal while the previous one is being committed (group commit), so the log
sees one entry per batch however many requests arrive. Reads come from the local copy of the state
under the engine lock.
"""

from __future__ import annotations

import asyncio
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
    def __init__(self, node: RaftNode, max_inflight: int = 2, member_info: dict | None = None,
                 proposal_timeout: float = PROPOSAL_TIMEOUT) -> None:
        self.node = node
        self.max_inflight = max_inflight
        self.member_info = member_info or {}
        self.proposal_timeout = proposal_timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[tuple[Any, asyncio.Future]] = []
        self._inflight = 0
        self._batches: dict[int, tuple[float, list]] = {}  # proposals awaiting commit
        self._batch_ids = 0
        self._tasks: list[asyncio.Task] = []
        self._ready_events: dict[str, asyncio.Event] = {}
        self._deadline_changed: asyncio.Event | None = None
        self._ticker: asyncio.Task | None = None
        self.archiver: Any = None  # set when the group archives to PostgreSQL (server/archive.py)
        node.state_machine.on_woken = self._woken_from_raft

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadline_changed = asyncio.Event()
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
        return self.node.is_ready()

    # ---- proposing ----------------------------------------------------------------------------

    async def submit(self, cmd) -> Any:
        """Replicate one command and return its result, or raise its EngineError."""
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
            cutoff = time.monotonic() - self.proposal_timeout
            for bid, (started, batch) in list(self._batches.items()):
                if started < cutoff:
                    del self._batches[bid]
                    self._inflight -= 1
                    exc = Unavailable(f"not committed within {self.proposal_timeout:g}s; the outcome is unknown")
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
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
            exc = Unavailable(str(error)) if isinstance(error, ReplicationError) else error
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
                await asyncio.wait_for(self._deadline_changed.wait(), timeout=wait)
                continue  # something changed: look at the deadline again
            except asyncio.TimeoutError:
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
                proposal.add_done_callback(lambda p, q=queue: self._release_orphans(q, p))
                raise
            left = deadline - time.monotonic()
            if got or left <= 0:
                return got
            try:
                await asyncio.wait_for(ev.wait(), timeout=left)
            except asyncio.TimeoutError:
                return []
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

    async def nack(self, queue: str, mid: int, token: str, delay_ms: int | None = None, error: str | None = None,
                   dead: bool = False) -> dict:
        return await self.submit(c.Nack(queue, mid, token, delay_ms, error, random.random(), dead))

    async def extend(self, queue: str, mid: int, token: str, visibility_timeout_ms: int | None = None) -> int:
        return await self.submit(c.Extend(queue, mid, token, visibility_timeout_ms))

    async def set_priority(self, queue: str, mid: int, priority: int) -> MessageInfo:
        await self.submit(c.SetPriority(queue, mid, priority))
        return self.get_message(queue, mid)

    async def cancel(self, queue: str, mid: int) -> str:
        return await self.submit(c.Cancel(queue, mid))

    async def redrive(self, queue: str, ids: list[int] | None) -> dict:
        return await self.submit(c.Redrive(queue, None if ids is None else tuple(ids)))

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
