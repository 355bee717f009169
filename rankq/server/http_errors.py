"""How the HTTP API answers errors: one status per error type, the handlers that send them, and the
error responses the routers declare in the OpenAPI document.

A client mistake is always a 4xx with a JSON `detail`; only a bug is a 500.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import schemas as s
from ..engine import Conflict, EngineError, Full, Invalid, NotFound, TooLarge
from ..engine.config import MAX_JSON_DEPTH
from . import logs
from .errors import RETRY_AFTER_SECONDS, ClusterConflict, Unavailable

RETRY_AFTER = {"Retry-After": str(RETRY_AFTER_SECONDS)}
STATUS: dict[type[Exception], int] = {
    NotFound: 404,
    Conflict: 409,
    Invalid: 422,
    TooLarge: 413,
    Full: 429,
    ClusterConflict: 409,
}

# An error answer in the OpenAPI document; routers list theirs with error_responses(...).
ERROR: dict[str, Any] = {"model": s.ErrorBody}
Responses = dict[int | str, dict[str, Any]]


def error_responses(*statuses: int) -> Responses:
    return dict.fromkeys(statuses, ERROR)


COMMON_ERRORS = error_responses(404, 409, 422, 503)  # what any call naming a queue can get
# A 429 (the queue is at its max_length) names when to retry.
QUEUE_FULL: dict[str, Any] = {
    "model": s.ErrorBody,
    "description": "the queue is at its max_length",
    "headers": {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}},
}


def status_of(err: Exception) -> int:
    for cls, code in STATUS.items():
        if isinstance(err, cls):
            return code
    if isinstance(err, Unavailable):
        return 503
    return 500


def add_error_handlers(app: FastAPI) -> None:
    app.exception_handler(EngineError)(engine_error)
    app.exception_handler(ClusterConflict)(cluster_conflict)
    app.exception_handler(Unavailable)(unavailable)
    app.exception_handler(RequestValidationError)(invalid_request)
    app.exception_handler(StarletteHTTPException)(http_error)
    app.exception_handler(Exception)(internal)


async def engine_error(request: Request, exc: EngineError) -> JSONResponse:
    status = status_of(exc)
    return _error(request, status, exc.detail, RETRY_AFTER if status == 429 else None)


async def cluster_conflict(request: Request, exc: ClusterConflict) -> JSONResponse:
    return _error(request, 409, str(exc))


async def unavailable(request: Request, exc: Unavailable) -> JSONResponse:
    return _error(request, 503, exc.detail, RETRY_AFTER)


async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    parts = []
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg')}")
    detail = "invalid request: " + "; ".join(parts)
    return _error(request, 422, detail, extra={"errors": _jsonable_errors(errors)})


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:  # the only 400 FastAPI raises: a body json.loads could not take
        return _error(request, 422, f"request body is not JSON, or is nested deeper than {MAX_JSON_DEPTH} levels")
    if exc.status_code == 405:  # name every method of the path, not only those of its first route
        allow = ", ".join(allowed_methods(request.app, request.url.path))
        return _error(request, 405, str(exc.detail), {"Allow": allow})
    return _error(request, exc.status_code, str(exc.detail), exc.headers)


async def internal(request: Request, exc: Exception) -> JSONResponse:
    logs.error_line(_route(request), f"internal error: {exc!r}", 500, exc_info=exc)
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the OpenAPI document gives a concrete path (integer parameters match digits only)."""
    found: set[str] = set()
    for template, ops in app.openapi()["paths"].items():
        ints = {
            p["name"]
            for op in ops.values()
            for p in op.get("parameters", [])
            if p["in"] == "path" and p.get("schema", {}).get("type") == "integer"
        }
        if re.match(_template_regex(template, ints), path):
            found.update(m.upper() for m in ops)
    return sorted(found)


def _template_regex(template: str, ints: set[str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: "[0-9]+" if m.group(1) in ints else "[^/]+", template) + "$"


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", request.url.path)


def _error(
    request: Request,
    status: int,
    detail: str,
    headers: Mapping[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    logs.error_line(_route(request), detail, status)
    body: dict[str, Any] = {"detail": detail}
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers)


def _jsonable_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for e in errors[:20]:
        out.append({"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))})
    return out
