"""What a handler raises to choose an outcome other than ack (return) or retry with backoff (any
other exception)."""

from __future__ import annotations


class Retry(Exception):
    """Give the message back for another try after `delay` seconds (None: the queue's backoff)."""

    def __init__(self, delay: float | None = None, reason: str | None = None) -> None:
        super().__init__(reason or (f"retry in {delay:g}s" if delay is not None else "retry"))
        self.delay = delay
        self.reason = reason


class Reject(Exception):
    """Dead-letter the message now: no retry can fix it (bad input, unknown kind)."""

    def __init__(self, reason: str = "rejected") -> None:
        super().__init__(reason)
        self.reason = reason
