"""The queue engine: a deterministic state machine over all queues of a group.

`apply(command, now)` is the only mutator. Replicas that apply the same commands with the same
times end in the same state, which is what lets the replication layer keep copies in step.
Time never runs backwards inside the engine: a command stamped earlier than the last one seen
(clock skew between successive leaders) is applied at the later time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator
from typing import Any

from . import commands as c
from .archive import ArchiveOutbox
from .backup import apply_records, export_records
from .config import QueueConfig, check_queue_name
from .errors import Conflict, EngineError, Invalid, NotFound
from .links import Links
from .message import READY, Delivery, Message, MessageInfo
from .queue import QueueState

DEAD_FROM = "x-rankq-dead-from"  # headers of a dead letter routed to a dead_letter_queue
DEAD_REASON = "x-rankq-dead-reason"


class Engine:
    def __init__(self) -> None:
        self.queues: dict[str, QueueState] = {}
        self.seq = 0  # logical clock: one tick per applied command and per message created
        self.now = 0  # latest command time seen, ms since the epoch
        self.woke: set[str] = set()  # queues that gained ready messages; drained by the caller
        self.restores: dict[str, int] = {}  # restore id -> chunks applied
        self.archive = ArchiveOutbox()  # finished messages of archived queues, until stored
        self.links = Links(self.queues)  # dependencies between messages, dead letters to route

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "links" not in state:  # a snapshot of an earlier build
            self.links = Links(self.queues)
            for q in self.queues.values():
                q.links = self.links

    def _next_id(self) -> int:
        self.seq += 1
        return self.seq

    def apply(self, cmd: c.Command, now: int) -> Any:
        """Apply one command; returns its result or raises an EngineError (state unchanged)."""
        if now > self.now:
            self.now = now
        now = self.now
        self.seq += 1
        handler = _HANDLERS.get(type(cmd))
        if handler is None:
            raise Invalid(f"unknown command {type(cmd).__name__}")
        try:
            return handler(self, cmd, now)
        finally:
            if self.links.events:  # also after a refused command: time may have moved its queue
                self._settle(now)

    def _settle(self, now: int) -> None:
        """Pass on what happened to messages others wait for, and move routed dead letters; each
        may lead to more (a chain of dependents failing), handled in order until none is left."""
        links = self.links
        events = links.events
        while events:
            event = events.popleft()
            if event[0] == "route":
                self._route(event[1], event[2], event[3], event[4], now)
                continue
            _, queue, mid, outcome = event
            for dq, did in links.waiters.pop((queue, mid), ()):
                q = self.queues.get(dq)
                if q is not None:
                    q.dependency_done(did, (queue, mid), outcome, now, self.woke)

    def _route(self, source: str, target: str, dead: Message, reason: str, now: int) -> None:
        """A dead letter of `source` becomes a new ready message of its dead_letter_queue (kept in
        `source` when that queue is gone). Limits of the target (length, payload) do not refuse it:
        a dead letter must go somewhere. The target's message_ttl applies."""
        q = self.queues.get(target)
        if q is None:
            back = self.queues.get(source)
            if back is not None:
                back.keep_dead(dead, now)
            return
        cfg = q.config
        headers = dict(dead.get_extra("headers") or {})
        headers[DEAD_FROM] = f"{source}/{dead.id}"
        headers[DEAD_REASON] = reason
        extra: dict[str, Any] = {"headers": headers}
        error = dead.get_extra("last_error")
        if error is not None:
            extra["last_error"] = error
        priority = dead.priority
        if cfg.policy == "weighted" and priority not in cfg.weights:
            priority = cfg.default_priority
        if cfg.message_ttl_ms is not None:
            extra["expires_at"] = now + cfg.message_ttl_ms
        msg = Message(self._next_id(), dead.payload, priority, dead.group, READY, 0, None, None, now, extra)
        if cfg.message_ttl_ms is not None:
            heapq.heappush(q.expiries, (extra["expires_at"], msg.id))
        q.messages[msg.id] = msg
        q.totals["enqueued"] += 1
        q.ready.add(msg)
        self.woke.add(target)

    def drain_woken(self) -> set[str]:
        woke, self.woke = self.woke, set()
        return woke

    # ---- queue lifecycle ---------------------------------------------------------------------

    def _create(self, cmd: c.CreateQueue, now: int) -> dict[str, Any]:
        check_queue_name(cmd.name)
        if cmd.name in self.queues:
            raise Conflict(f"queue {cmd.name!r} already exists")
        config = QueueConfig().with_changes(dict(cmd.settings))
        self._check_dead_letter_queue(cmd.name, config)
        self.queues[cmd.name] = QueueState(cmd.name, config, cmd.secret, now, self.outbox(), self.links)
        return config.as_dict()

    def _update(self, cmd: c.UpdateQueue, now: int) -> dict[str, Any]:
        q = self._queue(cmd.name, now)
        new = q.config.with_changes(dict(cmd.changes))
        if new.dead_letter_queue != q.config.dead_letter_queue:
            self._check_dead_letter_queue(cmd.name, new)
        q.update(new)
        return new.as_dict()

    @staticmethod
    def _check_dead_letter_queue(name: str, config: QueueConfig) -> None:
        """The target need not exist yet (queues of a group are created one by one, and a restore
        brings them in any order): while it does not, dead letters stay in their own queue."""
        if config.dead_letter_queue == name:
            raise Invalid("dead_letter_queue must name another queue (a queue's own dead letters stay in it anyway)")

    def _delete(self, cmd: c.DeleteQueue, now: int) -> None:
        q = self.queues.pop(cmd.name, None)
        if q is None:
            raise NotFound(f"queue {cmd.name!r} not found")
        links = self.links
        for key in [k for k in links.waiters if k[0] == cmd.name]:  # its messages others wait for
            links.events.append(("done", key[0], key[1], "deleted"))

    def _queue(self, name: str, now: int | None = None) -> QueueState:
        q = self.queues.get(name)
        if q is None:
            raise NotFound(f"queue {name!r} not found")
        if now is not None:
            q.advance(now, self.woke)
        return q

    # ---- messages ----------------------------------------------------------------------------

    def _enqueue(self, cmd: c.Enqueue, now: int) -> list[tuple[int, bool]]:
        if not cmd.messages:
            raise Invalid("no messages to enqueue")
        return self._queue(cmd.queue, now).enqueue(cmd, now, self._next_id, self.woke)

    def _dequeue(self, cmd: c.Dequeue, now: int) -> list[Delivery]:
        return self._queue(cmd.queue, now).dequeue(cmd, now, self.seq)

    def _ack(self, cmd: c.Ack, now: int) -> list[EngineError | None]:
        """Per item: None when acked, or the EngineError that refused it."""
        q = self._queue(cmd.queue, now)
        out: list[EngineError | None] = []
        for item in cmd.items:
            try:
                q.ack(item, now, self.woke)
                out.append(None)
            except (Conflict, NotFound, Invalid) as err:
                out.append(err)
        return out

    def _nack(self, cmd: c.Nack, now: int) -> dict[str, Any]:
        return self._queue(cmd.queue, now).nack(cmd, now, self.woke)

    def _extend(self, cmd: c.Extend, now: int) -> int:
        return self._queue(cmd.queue, now).extend(cmd, now)

    def _release_cmd(self, cmd: c.Release, now: int) -> None:
        self._queue(cmd.queue, now).release(cmd, self.woke, now)

    def _set_priority(self, cmd: c.SetPriority, now: int) -> None:
        self._queue(cmd.queue, now).set_priority(cmd, self.woke)

    def _cancel(self, cmd: c.Cancel, now: int) -> str:
        return self._queue(cmd.queue, now).cancel(cmd, now)

    def _redrive(self, cmd: c.Redrive, now: int) -> dict[str, Any]:
        return self._queue(cmd.queue, now).redrive(cmd, now, self.woke)

    def _stop_redrive(self, cmd: c.StopRedrive, now: int) -> dict[str, Any]:
        return self._queue(cmd.queue, now).stop_redrive()

    def _tick(self, cmd: c.Tick, now: int) -> None:
        for q in self.queues.values():
            q.advance(now, self.woke)

    def outbox(self) -> ArchiveOutbox:
        """The archive outbox (engines from snapshots of earlier builds get one on first use)."""
        box = self.__dict__.get("archive")
        if box is None:
            box = self.archive = ArchiveOutbox()
        return box

    def _archive_done(self, cmd: c.ArchiveDone, now: int) -> int:
        return self.outbox().confirm(cmd.upto)

    def _restore(self, cmd: c.Restore, now: int) -> dict[str, Any]:
        restores = self.__dict__.setdefault("restores", {})  # engines from older snapshots lack it
        done = restores.get(cmd.restore_id, 0)
        if cmd.index < done:
            return {"applied": 0, "duplicate": True}
        if cmd.index > done:
            raise Invalid(f"restore {cmd.restore_id!r} expects chunk {done} next, not {cmd.index}")
        if done == 0 and (
            not cmd.records or not isinstance(cmd.records[0], dict) or cmd.records[0].get("kind") != "header"
        ):
            raise Invalid("a restore starts with the backup's header record")
        applied = apply_records(self, list(cmd.records), self.woke)
        restores[cmd.restore_id] = done + 1
        return {"applied": applied, "duplicate": False}

    # ---- reads (local, never through the log) ------------------------------------------------

    def export(self) -> Iterator[dict[str, Any]]:
        """The whole state as backup records (see rankq.engine.backup); hold the state still."""
        return export_records(self)

    def next_deadline(self) -> int | None:
        deadlines = [d for d in (q.next_deadline() for q in self.queues.values()) if d is not None]
        return min(deadlines) if deadlines else None

    def queue(self, name: str) -> QueueState:
        return self._queue(name)

    def message(self, queue: str, mid: int) -> MessageInfo:
        return self._queue(queue).info(mid)


_HANDLERS: dict[type, Callable[[Engine, Any, int], Any]] = {
    c.CreateQueue: Engine._create,
    c.UpdateQueue: Engine._update,
    c.DeleteQueue: Engine._delete,
    c.Enqueue: Engine._enqueue,
    c.Dequeue: Engine._dequeue,
    c.Ack: Engine._ack,
    c.Nack: Engine._nack,
    c.Extend: Engine._extend,
    c.Release: Engine._release_cmd,
    c.SetPriority: Engine._set_priority,
    c.Cancel: Engine._cancel,
    c.Redrive: Engine._redrive,
    c.StopRedrive: Engine._stop_redrive,
    c.Tick: Engine._tick,
    c.Restore: Engine._restore,
    c.ArchiveDone: Engine._archive_done,
}
