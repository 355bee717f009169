"""One exception hierarchy for both transports, keyed by HTTP status.

gRPC errors carry the same status in the trailing metadata key `rankq-status`, so a caller sees the
same exception class whichever transport it uses.
"""

from __future__ import annotations


class RankQError(Exception):
    """Base of every error the client raises."""


class TransportError(RankQError):
    """The server could not be reached or the connection broke."""


class ApiError(RankQError):
    """The server answered with an error status."""

    status = 0

    def __init__(
        self, detail: str, status: int | None = None, leader: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status
        self.leader = leader
        self.retry_after = retry_after  # seconds the server asked to wait (429, 503), when it said

    def __str__(self) -> str:
        return f"{self.status}: {self.detail}"


class UnauthorizedError(ApiError):
    """The server requires an API token and none, or a wrong one, was sent."""

    status = 401


class ForbiddenError(ApiError):
    """The API token is valid but lacks the scope (produce, consume or admin) the call needs."""

    status = 403


class NotFoundError(ApiError):
    status = 404


class ConflictError(ApiError):
    """Already exists, wrong message state, or a stale or wrong lease token."""

    status = 409


class PayloadTooLargeError(ApiError):
    status = 413


class InvalidRequestError(ApiError):
    status = 422


class QueueFullError(ApiError):
    status = 429


class UnavailableError(ApiError):
    """No leader can commit right now; safe to retry after a short pause."""

    status = 503


class ServerError(ApiError):
    status = 500


BY_STATUS: dict[int, type[ApiError]] = {
    400: InvalidRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    409: ConflictError,
    413: PayloadTooLargeError,
    422: InvalidRequestError,
    429: QueueFullError,
    503: UnavailableError,
}


def error_for(status: int, detail: str, leader: str | None = None, retry_after: str | None = None) -> ApiError:
    """The exception for an error answer; `retry_after` is the server's Retry-After value, if any."""
    cls = BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ApiError
    try:
        wait = None if retry_after is None else float(retry_after)
    except ValueError:  # an HTTP date: not sent by RankQ; a proxy's is ignored
        wait = None
    return cls(detail, status=status, leader=leader, retry_after=wait)
