"""The optional parts of RankQ and the one message a user sees when one is not installed.

`pip install rankq` is the client (HTTP), the worker runtime and the CLI's client commands; the
server, the operator and the client's gRPC transport are extras (see pyproject.toml). A command that
needs an extra imports it inside `require`, which turns the ImportError of a missing third-party
module into `MissingExtra`, naming the extra to install; an ImportError inside RankQ itself (a bug)
is not hidden.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# extra -> what it adds (for the message)
EXTRAS = {
    "grpc": "the gRPC transport (grpc:// and grpcs:// URLs)",
    "server": "the queue server (rankq server, rankq dev cluster)",
    "operator": "the Kubernetes operator (rankq operator)",
}


class MissingExtra(ImportError):
    """A part of RankQ whose dependencies are not installed."""

    def __init__(self, extra: str, module: str | None) -> None:
        self.extra = extra
        super().__init__(
            f"{EXTRAS[extra]} needs the {extra!r} extra: pip install 'rankq[{extra}]'"
            + (f" (module {module!r} is missing)" if module else "")
        )


@contextmanager
def require(extra: str) -> Iterator[None]:
    """Imports inside this block belong to `extra`: a missing dependency raises MissingExtra."""
    try:
        yield
    except ImportError as err:
        if isinstance(err, MissingExtra) or (err.name or "").split(".")[0] == "rankq":
            raise
        raise MissingExtra(extra, err.name) from err
