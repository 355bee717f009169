"""Errors of the server layer (the engine's own live in rankq.engine.errors)."""

from __future__ import annotations

# Seconds a client is told to wait (HTTP `Retry-After`, gRPC trailing `retry-after`) when a queue is
# full (429) or no leader can commit (503): both usually clear within about a second.
RETRY_AFTER_SECONDS = 1


class Unavailable(Exception):
    """The group cannot commit writes right now (no leader yet, leadership lost, or timed out).

    `detail` is what clients read (HTTP 503 body, gRPC UNAVAILABLE message); a node that refuses a
    write for a reason of its own (shutting down, cut off from the group) says so there.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.detail = detail or f"no leader can commit writes right now ({reason}); retry shortly"


class ClusterConflict(Exception):
    """A membership or leadership request that conflicts with the group's state (HTTP 409)."""
