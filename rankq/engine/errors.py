"""Errors a command can end in.

They are part of the deterministic outcome of a command: every replica raises the same one for the
same command, so the API layer can map them to HTTP statuses and gRPC codes without guessing.
"""

from __future__ import annotations


class EngineError(Exception):
    """A command was refused; the state is unchanged."""

    code = "invalid"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NotFound(EngineError):
    code = "not_found"


class Conflict(EngineError):
    """Already exists, wrong state, or a stale/wrong lease token."""

    code = "conflict"


class Invalid(EngineError):
    code = "invalid"


class TooLarge(EngineError):
    code = "too_large"


class Full(EngineError):
    """The queue is at its max length; nothing was added."""

    code = "full"
