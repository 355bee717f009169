"""A queued message and the read-only views of it that leave the engine.

`Message` is kept small on purpose: a queue holds millions of them. Rare fields (headers, dedup key,
last error) share one `extra` dict that is None for most messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

READY = 0
DELAYED = 1
LEASED = 2
DEAD = 3
WAITING = 4  # for its dependencies; `due` holds its deliver-at (or None)

STATE_NAMES = {READY: "ready", DELAYED: "delayed", LEASED: "leased", DEAD: "dead", WAITING: "waiting"}

# Why a message was dead-lettered (MessageInfo.dead_reason).
MAX_DELIVERIES = "max_deliveries"
REJECTED = "rejected"
EXPIRED = "expired"
DEPENDENCY_FAILED = "dependency_failed"

# Payloads are opaque to the engine: `str` holds JSON text (enqueued over HTTP), `bytes` holds raw
# bytes (enqueued over gRPC). The type is the content marker, so no extra field is needed.
Payload = str | bytes


class Message:
    __slots__ = (
        "id",
        "payload",
        "priority",
        "group",
        "state",
        "deliveries",
        "due",  # deliver-at while delayed, lease expiry while leased, purge time while dead
        "token",  # lease token while leased
        "enqueued_at",
        "extra",  # None or a dict with any of: headers, dedup_key, last_error, expires_at, depends_on,
        # waiting_for (dependencies not acked yet), dead_reason
    )

    # due and token are set whenever the state needs them (a lease has both, a delay has due).
    def __init__(
        self,
        id: int,
        payload: str | bytes,
        priority: int,
        group: str,
        state: int,
        deliveries: int,
        due: Any,
        token: Any,
        enqueued_at: int,
        extra: dict[str, Any] | None,
    ) -> None:
        self.id = id
        self.payload = payload
        self.priority = priority
        self.group = group
        self.state = state
        self.deliveries = deliveries
        self.due = due
        self.token = token
        self.enqueued_at = enqueued_at
        self.extra = extra

    def __reduce__(self) -> tuple[type[Message], tuple[Any, ...]]:
        # A positional tuple pickles several times smaller and faster than the slot-state dict.
        return (
            Message,
            (
                self.id,
                self.payload,
                self.priority,
                self.group,
                self.state,
                self.deliveries,
                self.due,
                self.token,
                self.enqueued_at,
                self.extra,
            ),
        )

    def get_extra(self, key: str, default: Any = None) -> Any:
        return default if self.extra is None else self.extra.get(key, default)

    def set_extra(self, key: str, value: Any) -> None:
        if value is None:
            if self.extra is not None:
                self.extra.pop(key, None)
                if not self.extra:
                    self.extra = None
            return
        if self.extra is None:
            self.extra = {}
        self.extra[key] = value


class Delivery(NamedTuple):
    """A message handed to a consumer with the lease that guards it (a named tuple: made per
    delivered message on the hot path)."""

    id: int
    payload: Payload
    priority: int
    group: str
    deliveries: int
    lease_token: str
    lease_expires_at: int
    enqueued_at: int
    headers: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """Status of one message as a client may read it."""

    id: int
    queue: str
    state: str  # ready, delayed, leased, waiting, dead, acked
    priority: int | None
    group: str | None
    deliveries: int
    enqueued_at: int | None
    available_at: int | None  # when a delayed message becomes ready
    lease_expires_at: int | None
    last_error: str | None
    result: Any
    headers: dict[str, str] | None
    dedup_key: str | None
    payload: Payload | None
    acked_at: int | None = None
    depends_on: tuple[tuple[str, int], ...] | None = None
    expires_at: int | None = None
    dead_reason: str | None = None  # max_deliveries, rejected, expired or dependency_failed


def info_of(queue: str, msg: Message) -> MessageInfo:
    return MessageInfo(
        id=msg.id,
        queue=queue,
        state=STATE_NAMES[msg.state],
        priority=msg.priority,
        group=msg.group,
        deliveries=msg.deliveries,
        enqueued_at=msg.enqueued_at,
        available_at=msg.due if msg.state == DELAYED else None,
        lease_expires_at=msg.due if msg.state == LEASED else None,
        last_error=msg.get_extra("last_error"),
        result=None,
        headers=msg.get_extra("headers"),
        dedup_key=msg.get_extra("dedup_key"),
        payload=msg.payload,
        depends_on=msg.get_extra("depends_on"),
        expires_at=msg.get_extra("expires_at"),
        dead_reason=msg.get_extra("dead_reason"),
    )
