"""RankQ: replicated priority queues.

The public client API lives here: ``rankq.Client``, ``rankq.AsyncClient``, their result types and
errors (``rankq.RankQError`` and subclasses), and the worker runtime (``rankq.Worker``,
``rankq.Retry``, ``rankq.Reject``). They are imported on first use, so importing a
submodule such as ``rankq.engine`` or ``rankq.server`` does not load the client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_CLIENT_NAMES = (
    "AckOutcome",
    "ApiError",
    "AsyncClient",
    "BatchRef",
    "Client",
    "ConflictError",
    "Dependency",
    "ForbiddenError",
    "EnqueueResult",
    "InvalidRequestError",
    "Message",
    "MessageStatus",
    "NackResult",
    "NewMessage",
    "NotFoundError",
    "UnauthorizedError",
    "PayloadTooLargeError",
    "QueueCounts",
    "QueueFullError",
    "QueueInfo",
    "RankQError",
    "RedriveJob",
    "RedriveResult",
    "ServerError",
    "TransportError",
    "UnavailableError",
)

_WORKER_NAMES = ("Worker", "Retry", "Reject")

__all__ = ["__version__", *_CLIENT_NAMES, *_WORKER_NAMES]

if TYPE_CHECKING:
    from .client import (  # noqa: F401
        AckOutcome,
        ApiError,
        AsyncClient,
        BatchRef,
        Client,
        ConflictError,
        Dependency,
        EnqueueResult,
        ForbiddenError,
        InvalidRequestError,
        Message,
        MessageStatus,
        NackResult,
        NewMessage,
        NotFoundError,
        PayloadTooLargeError,
        QueueCounts,
        QueueFullError,
        QueueInfo,
        RankQError,
        RedriveJob,
        RedriveResult,
        ServerError,
        TransportError,
        UnauthorizedError,
        UnavailableError,
    )
    from .worker import Reject, Retry, Worker  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        from . import client

        value = getattr(client, name)
        globals()[name] = value
        return value
    if name in _WORKER_NAMES:
        from . import worker

        value = getattr(worker, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rankq' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_CLIENT_NAMES) | set(_WORKER_NAMES))
