"""The queue engine: a deterministic state machine over all queues of a group.

`apply(command, now)` is the only mutator. Replicas that apply the same commands with the same
times end in the same state, which is what lets the replication layer keep copies in step.
Time never runs backwards inside the engine: a command stamped earlier than the last one seen
(clock skew between successive leaders) is applied at the later time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from . import commands as c
from .archive import ArchiveOutbox
from .backup import apply_records, export_records
from .config import QueueConfig, check_queue_name
from .errors import Conflict, EngineError, Invalid, NotFound
from .message import Delivery, MessageInfo
from .queue import QueueState


class Engine:
    def __init__(self) -> None:
        self.queues: dict[str, QueueState] = {}
        self.seq = 0  # logical clock: one tick per applied command and per message created
        self.now = 0  # latest command time seen, ms since the epoch
        self.woke: set[str] = set()  # queues that gained ready messages; drained by the caller
        self.restores: dict[str, int] = {}  # restore id -> chunks applied
        self.archive = ArchiveOutbox()  # finished messages of archived queues, until stored

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
        return handler(self, cmd, now)

    def drain_woken(self) -> set[str]:
        woke, self.woke = self.woke, set()
        return woke

    # ---- queue lifecycle ---------------------------------------------------------------------

    def _create(self, cmd: c.CreateQueue, now: int) -> dict[str, Any]:
        check_queue_name(cmd.name)
        if cmd.name in self.queues:
            raise Conflict(f"queue {cmd.name!r} already exists")
        config = QueueConfig().with_changes(dict(cmd.settings))
        self.queues[cmd.name] = QueueState(cmd.name, config, cmd.secret, now, self.outbox())
        return config.as_dict()

    def _update(self, cmd: c.UpdateQueue, now: int) -> dict[str, Any]:
        q = self._queue(cmd.name, now)
        new = q.config.with_changes(dict(cmd.changes))
        q.update(new)
        return new.as_dict()

    def _delete(self, cmd: c.DeleteQueue, now: int) -> None:
        if self.queues.pop(cmd.name, None) is None:
            raise NotFound(f"queue {cmd.name!r} not found")

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
                q.ack(item, now)
                out.append(None)
            except (Conflict, NotFound, Invalid) as err:
                out.append(err)
        return out

    def _nack(self, cmd: c.Nack, now: int) -> dict[str, Any]:
        return self._queue(cmd.queue, now).nack(cmd, now, self.woke)

    def _extend(self, cmd: c.Extend, now: int) -> int:
        return self._queue(cmd.queue, now).extend(cmd, now)

    def _release_cmd(self, cmd: c.Release, now: int) -> None:
        self._queue(cmd.queue, now).release(cmd, self.woke)

    def _set_priority(self, cmd: c.SetPriority, now: int) -> None:
        self._queue(cmd.queue, now).set_priority(cmd, self.woke)

    def _cancel(self, cmd: c.Cancel, now: int) -> str:
        return self._queue(cmd.queue, now).cancel(cmd, now)

    def _redrive(self, cmd: c.Redrive, now: int) -> dict[str, Any]:
        return self._queue(cmd.queue, now).redrive(cmd, self.woke)

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
        if done == 0 and (not cmd.records or not isinstance(cmd.records[0], dict)
                          or cmd.records[0].get("kind") != "header"):
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
