"""Commands: the only way the queue state changes.

Each command is a small immutable value that is written to the replicated log and applied on every
replica in the same order. Anything that could differ between replicas (the time, random jitter,
a queue's token secret) is decided by the proposer and carried inside the command, so applying a
command is a pure function of (state, command, time).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, NamedTuple

from .message import Payload


@dataclass(frozen=True, slots=True)
class CreateQueue:
    name: str
    settings: dict[str, Any]  # QueueConfig fields to set; the rest keep their defaults
    secret: bytes  # keys the lease tokens of this queue


@dataclass(frozen=True, slots=True)
class UpdateQueue:
    name: str
    changes: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeleteQueue:
    name: str


class NewMessage(NamedTuple):
    """A message to enqueue (a named tuple: the hot path pickles millions of these)."""

    payload: Payload
    priority: int | None = None
    group: str | None = None
    delay_ms: int | None = None  # relative to the command's time
    deliver_at_ms: int | None = None  # absolute; the later of the two wins
    headers: dict[str, str] | None = None
    dedup_key: str | None = None
    ttl_ms: int | None = None  # relative to the command's time; the earlier of the two expiries wins
    expires_at_ms: int | None = None  # absolute; neither given: the queue's message_ttl_ms
    # (queue, id) of a message of this group, or the index of an earlier item of the same batch
    depends_on: tuple[tuple[str, int] | int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Enqueue:
    """One or many messages; a batch is accepted or refused as a whole."""

    queue: str
    messages: tuple[NewMessage, ...]


@dataclass(frozen=True, slots=True)
class Dequeue:
    queue: str
    max: int = 1
    visibility_timeout_ms: int | None = None


class AckItem(NamedTuple):
    id: int
    token: str
    result: Any = None


@dataclass(frozen=True, slots=True)
class Ack:
    """Ack one or many leased messages; each item succeeds or fails on its own."""

    queue: str
    items: tuple[AckItem, ...]


@dataclass(frozen=True, slots=True)
class Nack:
    queue: str
    id: int
    token: str
    delay_ms: int | None = None  # None: exponential backoff with jitter
    error: str | None = None
    jitter: float = 0.0  # in [0, 1), drawn by the proposer
    dead: bool = False  # dead-letter now (a consumer's reject), whatever deliveries are left


@dataclass(frozen=True, slots=True)
class Release:
    """Give a leased message back, ready at once, without counting the delivery (a worker that
    stops before running it, or a dequeue whose client went away)."""

    queue: str
    id: int
    token: str


@dataclass(frozen=True, slots=True)
class Extend:
    queue: str
    id: int
    token: str
    visibility_timeout_ms: int | None = None


@dataclass(frozen=True, slots=True)
class SetPriority:
    queue: str
    id: int
    priority: int


@dataclass(frozen=True, slots=True)
class Cancel:
    queue: str
    id: int


@dataclass(frozen=True, slots=True)
class Redrive:
    """Move dead letters back to the queue: the given ids, or all of them when ids is None.

    With a rate (messages per second) this starts a paced job that moves them as time passes."""

    queue: str
    ids: tuple[int, ...] | None = None
    rate: int | None = None


@dataclass(frozen=True, slots=True)
class StopRedrive:
    """Stop the queue's paced redrive job; what it moved stays moved."""

    queue: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Lets time pass: delayed messages become ready, leases expire, retention ends."""


@dataclass(frozen=True, slots=True)
class ArchiveDone:
    """The archive store holds every outbox record up to `upto`: drop them on every replica."""

    upto: int


@dataclass(frozen=True, slots=True)
class Restore:
    """Chunk `index` (from 0) of restore `restore_id`: backup records (rankq.engine.backup).

    Chunks carry their place so that a chunk sent again (its first answer was lost) is a no-op.
    """

    restore_id: str
    index: int
    records: tuple[dict[str, Any], ...]


Command = (
    CreateQueue
    | UpdateQueue
    | DeleteQueue
    | Enqueue
    | Dequeue
    | Ack
    | Nack
    | Extend
    | Release
    | SetPriority
    | Cancel
    | Redrive
    | StopRedrive
    | Tick
    | Restore
    | ArchiveDone
)


def _positional_reduce(cls: type) -> type:
    """Pickle as (class, field values): every command is pickled into the log, and the default
    for frozen slot dataclasses (a state dict, set back field by field) costs ~10x more."""
    names = tuple(f.name for f in dataclasses.fields(cls))

    def __reduce__(self: object) -> tuple[type, tuple[Any, ...]]:
        return (cls, tuple([getattr(self, n) for n in names]))

    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls


for _cls in (
    CreateQueue,
    UpdateQueue,
    DeleteQueue,
    Enqueue,
    Dequeue,
    Ack,
    Nack,
    Extend,
    Release,
    SetPriority,
    Cancel,
    Redrive,
    StopRedrive,
    Tick,
    Restore,
    ArchiveDone,
):
    _positional_reduce(_cls)
del _cls


def _enqueue_from_wire(queue: str, rows: list[tuple[Any, ...]]) -> Enqueue:
    return Enqueue(queue, tuple(map(NewMessage._make, rows)))


def _ack_from_wire(queue: str, rows: list[tuple[Any, ...]]) -> Ack:
    return Ack(queue, tuple(map(AckItem._make, rows)))


# The two commands that carry many items pickle them as plain tuples.
Enqueue.__reduce__ = lambda self: (_enqueue_from_wire, (self.queue, [tuple(m) for m in self.messages]))  # type: ignore[method-assign,assignment,attr-defined]
Ack.__reduce__ = lambda self: (_ack_from_wire, (self.queue, [tuple(i) for i in self.items]))  # type: ignore[method-assign,assignment,attr-defined]
