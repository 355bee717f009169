"""What the client returns, the same whichever transport (HTTP or gRPC) carried it.

Payloads: a message enqueued as JSON comes back as the decoded JSON value; a message enqueued as
raw bytes comes back as `bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class EnqueueResult:
    id: int
    duplicate: bool = False

    @property
    def seq(self) -> int:
        """The same as `id` (kept for clients of the first API, which called it seq)."""
        return self.id


@dataclass(frozen=True)
class Message:
    """A leased message. Ack, nack or extend it with its `lease_token` before `lease_expires_at`."""

    queue: str
    id: int
    payload: Any
    priority: int
    group: str
    deliveries: int
    lease_token: str
    lease_expires_at: datetime
    enqueued_at: datetime
    headers: dict[str, str] | None = None

    @property
    def seq(self) -> int:
        return self.id


@dataclass(frozen=True)
class Dependency:
    """A message another one waits for: `id` in `queue` (None: the queue the new message goes to)."""

    id: int
    queue: str | None = None


@dataclass(frozen=True)
class BatchRef:
    """In `enqueue_batch`: the `index`-th (0-based) message of the same batch, which must come
    before the message that names it."""

    index: int


# What `depends_on` takes: a message id of the same queue, (queue, id), a Dependency, or a BatchRef.
DependsOn = int | tuple[str, int] | Dependency | BatchRef


@dataclass(frozen=True)
class NewMessage:
    """One message of a batch enqueue; same fields as `enqueue`'s keyword arguments."""

    payload: Any
    priority: int | None = None
    group: str | None = None
    delay: float | None = None
    deliver_at: datetime | None = None
    headers: dict[str, str] | None = None
    dedup_key: str | None = None
    ttl: float | None = None
    expires_at: datetime | None = None
    depends_on: list[DependsOn] | None = None


@dataclass(frozen=True)
class AckOutcome:
    id: int
    ok: bool
    status: int = 200
    detail: str | None = None


@dataclass(frozen=True)
class NackResult:
    id: int
    state: str  # ready, delayed or dead
    available_at: datetime | None = None


@dataclass(frozen=True)
class MessageStatus:
    id: int
    queue: str
    state: str  # ready, delayed, leased, dead or acked
    priority: int | None = None
    group: str | None = None
    deliveries: int = 0
    enqueued_at: datetime | None = None
    available_at: datetime | None = None
    lease_expires_at: datetime | None = None
    acked_at: datetime | None = None
    last_error: str | None = None
    result: Any = None
    headers: dict[str, str] | None = None
    dedup_key: str | None = None
    payload: Any = None
    depends_on: list[Dependency] | None = None  # queue always set
    expires_at: datetime | None = None
    dead_reason: str | None = None  # max_deliveries, rejected, expired or dependency_failed


@dataclass(frozen=True)
class QueueCounts:
    ready: int = 0
    delayed: int = 0
    leased: int = 0
    dead: int = 0
    acked_retained: int = 0
    backlog: int = 0  # ready + leased + delayed already due: what an autoscaler should count
    waiting: int = 0  # waiting for their dependencies to be acked

    @property
    def depth(self) -> int:
        return self.ready + self.delayed + self.leased + self.waiting


@dataclass(frozen=True)
class QueueInfo:
    name: str
    settings: dict[str, Any]  # wire units: durations in seconds (see rankq.schemas.QueueSettings)
    counts: QueueCounts
    totals: dict[str, int] = field(default_factory=dict)
    created_at: datetime | None = None


@dataclass(frozen=True)
class RedriveJob:
    """A paced redrive: `rate` messages per second, running in the group until done or stopped."""

    rate: int
    total: int
    moved: int
    remaining: int
    started_at: datetime
    state: str  # running, done or stopped


@dataclass(frozen=True)
class RedriveResult:
    redriven: list[int]
    not_found: list[int]
    job: RedriveJob | None = None  # set by a redrive with a rate (nothing is moved at once then)


def dependency_of(item: DependsOn) -> Dependency | BatchRef:
    """One `depends_on` item in its explicit form (both transports send these)."""
    if isinstance(item, (Dependency, BatchRef)):
        return item
    if isinstance(item, bool):
        raise TypeError("depends_on items are message ids, (queue, id) pairs, Dependency or BatchRef, not bool")
    if isinstance(item, int):
        return Dependency(item)
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return Dependency(int(item[1]), item[0])
    raise TypeError(f"depends_on items are message ids, (queue, id) pairs, Dependency or BatchRef, not {item!r}")
