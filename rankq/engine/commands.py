"""Commands: the only way the queue state changes.

Each command is a small immutable value that is written to the replicated log and applied on every
replica in the same order. Anything that could differ between replicas (the time, random jitter,
a queue's token secret) is decided by the proposer and carried inside the command, so applying a
command is a pure function of (state, command, time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .message import Payload


@dataclass(frozen=True, slots=True)
class CreateQueue:
    name: str
    settings: dict  # QueueConfig fields to set; the rest keep their defaults
    secret: bytes  # keys the lease tokens of this queue


@dataclass(frozen=True, slots=True)
class UpdateQueue:
    name: str
    changes: dict


@dataclass(frozen=True, slots=True)
class DeleteQueue:
    name: str


@dataclass(frozen=True, slots=True)
class NewMessage:
    payload: Payload
    priority: int | None = None
    group: str | None = None
    delay_ms: int | None = None  # relative to the command's time
    deliver_at_ms: int | None = None  # absolute; the later of the two wins
    headers: dict | None = None
    dedup_key: str | None = None


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


@dataclass(frozen=True, slots=True)
class AckItem:
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
    """Move dead letters back to the queue: the given ids, or all of them when ids is None."""

    queue: str
    ids: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    """Lets time pass: delayed messages become ready, leases expire, retention ends."""


Command = (
    CreateQueue
    | UpdateQueue
    | DeleteQueue
    | Enqueue
    | Dequeue
    | Ack
    | Nack
    | Extend
    | SetPriority
    | Cancel
    | Redrive
    | Tick
)
