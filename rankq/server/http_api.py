"""The HTTP app: middleware, error handlers and the routers, assembled.

Each area of routes lives in a module of its own that exposes a router factory taking what its
routes need: `build_<area>_router(service, log_request, ...) -> APIRouter` (http_queues,
http_messages, http_dead_letters, http_cluster, http_backup, http_archive). A new area adds one
such module and one `include_router` line below. Handlers are thin: parse with the wire models,
call the QueueService, shape the answer. Errors map to statuses once, in http_errors.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from ..engine.config import INT64_MAX, INT64_MIN
from . import metrics
from .asgi import LeaderHeaders
from .auth import ApiAuth, Tokens
from .closing import AnswerOnShutdown
from .http_archive import build_archive_router
from .http_backup import build_backup_router
from .http_cluster import build_cluster_router
from .http_common import log_request
from .http_dashboard import add_dashboard
from .http_dead_letters import build_dead_letters_router
from .http_errors import add_error_handlers
from .http_health import add_health_routes
from .http_hot import HotRoutes
from .http_messages import build_messages_router
from .http_queues import build_queues_router
from .http_redrive import build_redrive_router
from .service import QueueService


class RankQApp(FastAPI):
    """FastAPI whose OpenAPI document states the exact int64 bounds.

    FastAPI's OpenAPI model keeps `minimum`/`maximum` as floats, which turns the int64 bounds into
    2^63 (one past the largest int64); the exact integers are put back so the schema says what is
    checked."""

    def openapi(self) -> dict[str, Any]:
        fresh = self.openapi_schema is None
        schema = super().openapi()
        if fresh:  # FastAPI caches the document: fixed once, in place
            _exact_int64_bounds(schema)
        return schema


def build_app(service: QueueService, tokens: Tokens | None = None, peer_ca: str | None = None) -> FastAPI:
    """The HTTP app; with `tokens`, /api/ calls need a token with the route's scope (auth.py).
    `peer_ca` verifies other members' HTTPS certificates when a call is forwarded to the leader."""
    app = RankQApp(
        title="RankQ",
        version="0.1.0",
        description="Replicated priority queues. Durations are seconds; timestamps are ISO 8601 UTC.",
        docs_url=None,
        redoc_url=None,  # served from packaged assets by the dashboard router
    )
    add_error_handlers(app)

    messages = build_messages_router(service, log_request)
    # innermost: the hot routes skip FastAPI's routing, not the middleware below
    app.add_middleware(HotRoutes, service=service, routes=messages.routes, handlers=app.exception_handlers)
    app.add_middleware(AnswerOnShutdown, service=service)  # inside LeaderHeaders: its answers name the leader
    app.add_middleware(LeaderHeaders, service=service)
    if tokens:
        app.add_middleware(ApiAuth, tokens=tokens)  # before any other: refused calls are not read at all
    app.add_middleware(metrics.RequestObserver, router=app.router)  # outermost, reads no body: refusals are counted too

    # The order of the routers is the order of the paths in the OpenAPI document.
    app.include_router(build_queues_router(service, log_request))
    app.include_router(messages)
    app.include_router(build_dead_letters_router(service, log_request))
    app.include_router(build_cluster_router(service, log_request, peer_ca))
    app.include_router(build_backup_router(service, log_request))
    app.include_router(build_archive_router(service, log_request))
    app.include_router(build_redrive_router(service, log_request))
    add_dashboard(app, service, log_request)
    add_health_routes(app, service)
    return app


def _exact_int64_bounds(node: Any) -> None:
    if isinstance(node, dict):
        for key in ("minimum", "maximum"):
            value = node.get(key)
            if type(value) is float and value in (float(INT64_MIN), float(INT64_MAX)):
                node[key] = INT64_MIN if value < 0 else INT64_MAX
        for child in node.values():
            _exact_int64_bounds(child)
    elif isinstance(node, list):
        for child in node:
            _exact_int64_bounds(child)
