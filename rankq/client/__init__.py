"""The RankQ client: `Client` (blocking) and `AsyncClient`, over HTTP or gRPC, with one set of result
types and one exception hierarchy."""

from .client import AsyncClient, Client
from .errors import (
    ApiError,
    ConflictError,
    ForbiddenError,
    InvalidRequestError,
    NotFoundError,
    UnauthorizedError,
    PayloadTooLargeError,
    QueueFullError,
    RankQError,
    ServerError,
    TransportError,
    UnavailableError,
)
from .types import (
    AckOutcome,
    EnqueueResult,
    Message,
    MessageStatus,
    NackResult,
    NewMessage,
    QueueCounts,
    QueueInfo,
    RedriveResult,
)

__all__ = [
    "AckOutcome",
    "ApiError",
    "AsyncClient",
    "Client",
    "ConflictError",
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
    "RedriveResult",
    "ServerError",
    "TransportError",
    "UnavailableError",
]
