"""What ties the queues of one engine together: dependencies between messages and dead letters
routed to another queue.

Why one shared object: a message of one queue may wait for a message of another, and a queue may
hand its dead letters to another. Queues report what happened to a message here (`finished`,
`route`); the engine passes the outcomes on once the command is done (`Engine._settle`), so a
queue never reaches into another queue halfway through its own change.

`waiters` is the per-engine index of dependents: (queue, id) of a message not finished yet ->
the (queue, id) of the messages waiting for it. An entry goes when its message finishes; an entry
whose dependent has moved on (cancelled, failed through another dependency) is skipped then.
"""

from __future__ import annotations

from collections import deque
from typing import Any

# What became of a dependency, as the text after "dependency q/12 ..." in the dependent's last_error.
ACKED = "acked"
OUTCOME_TEXT = {
    "dead-lettered": "was dead-lettered",
    "dropped": "was dropped (its queue keeps no dead letters)",
    "expired": "expired",
    "cancelled": "was cancelled",
    "deleted": "was deleted with its queue",
}

Key = tuple[str, int]


class Links:
    __slots__ = ("queues", "waiters", "events")

    def __init__(self, queues: dict[str, Any]) -> None:
        self.queues = queues  # the engine's own dict: queues come and go there
        self.waiters: dict[Key, list[Key]] = {}
        # ("done", queue, id, outcome) or ("route", from queue, to queue, message, reason), in order
        self.events: deque[tuple[Any, ...]] = deque()

    def wait(self, dependency: Key, dependent: Key) -> None:
        waiting = self.waiters.get(dependency)
        if waiting is None:
            self.waiters[dependency] = [dependent]
        else:
            waiting.append(dependent)

    def finished(self, queue: str, mid: int, outcome: str) -> None:
        """Message `mid` of `queue` is done with (acked, dead, cancelled...): tell its dependents."""
        if (queue, mid) in self.waiters:
            self.events.append(("done", queue, mid, outcome))

    def route(self, source: str, target: str, msg: Any, reason: str) -> None:
        self.events.append(("route", source, target, msg, reason))

    def status(self, queue: str, mid: int) -> str | None:
        """message_status of a message of any queue; None when the queue does not exist."""
        q = self.queues.get(queue)
        return None if q is None else message_status(q, mid)


def message_status(q: Any, mid: int) -> str | None:
    """ "live" (ready, delayed, leased or waiting), "acked", "dead", "cancelled", or None (gone or
    never there) for message `mid` of queue state `q`."""
    if mid in q.messages:
        return "live"
    if mid in q.acked:
        return ACKED
    if mid in q.dead:
        return "dead"
    if mid in q.cancelled:
        return "cancelled"
    return None
