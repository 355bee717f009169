"""The hot routes — enqueue one message, dequeue, ack one, ack many — answered without FastAPI's
routing and dependency machinery.

Why: one message per request is what most clients send, and per request FastAPI's routing,
dependency solving, Request objects and exception middleware cost more than the queue work
(`python -m bench.hotpath` compares with the build before these routes, and with null servers). The routes stay declared in FastAPI,
which documents them (OpenAPI) and answers everything this layer does not take on: another method
or content type, a body that does not parse or validate, a mounted root path. Those go on to
FastAPI untouched, so refusals are worded by the same handlers. What a hot route does is the same
function its FastAPI route calls (`http_messages.*_answer`); errors raised by it are answered by
the app's own exception handlers.

It sits inside the other middleware (token check, request metrics, leader headers, shutdown), so
those see a hot request exactly as they see any other.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import Receive

from .. import schemas as s
from .asgi import replay_body
from .http_common import note_request
from .http_messages import ack_answer, ack_batch_answer, dequeue_answer, enqueue_answer
from .service import QueueService

# answer(service, path parameters, parsed body, receive) -> the JSON text of the answer
Answer = Callable[[QueueService, tuple[str, ...], Any, Receive], Awaitable[str]]


def _enqueue(service: QueueService, params: tuple[str, ...], body: Any, receive: Receive) -> Awaitable[str]:
    return enqueue_answer(service, params[0], body)


def _dequeue(service: QueueService, params: tuple[str, ...], body: Any, receive: Receive) -> Awaitable[str]:
    return dequeue_answer(service, params[0], body, receive)


def _ack(service: QueueService, params: tuple[str, ...], body: Any, receive: Receive) -> Awaitable[str]:
    return ack_answer(service, params[0], int(params[1]), body)


def _ack_batch(service: QueueService, params: tuple[str, ...], body: Any, receive: Receive) -> Awaitable[str]:
    return ack_batch_answer(service, params[0], body)


@dataclass(frozen=True)
class HotRoute:
    template: str  # as the FastAPI route declares it
    regex: re.Pattern[str]  # Starlette's match for it: `{name}` is [^/]+, `{id:int}` [0-9]+
    model: type[BaseModel]  # the body's model
    optional_body: bool  # an empty body means the model's defaults
    status: int
    answer: Answer


HOT_ROUTES = [
    HotRoute(
        "/api/v1/queues/{name}/messages",
        re.compile(r"/api/v1/queues/([^/]+)/messages"),
        s.EnqueueRequest,
        False,
        201,
        _enqueue,
    ),
    HotRoute(
        "/api/v1/queues/{name}/dequeue",
        re.compile(r"/api/v1/queues/([^/]+)/dequeue"),
        s.DequeueRequest,
        True,
        200,
        _dequeue,
    ),
    HotRoute(
        "/api/v1/queues/{name}/messages/{id:int}/ack",
        re.compile(r"/api/v1/queues/([^/]+)/messages/([0-9]+)/ack"),
        s.AckRequest,
        False,
        200,
        _ack,
    ),
    HotRoute(
        "/api/v1/queues/{name}/ack",
        re.compile(r"/api/v1/queues/([^/]+)/ack"),
        s.AckBatchRequest,
        False,
        200,
        _ack_batch,
    ),
]
JSON_TYPE = b"application/json"


class HotRoutes:
    """ASGI middleware: answers the hot routes itself, hands every other request to `app`."""

    def __init__(self, app, service: QueueService, routes: list[BaseRoute], handlers: dict) -> None:
        self.app = app
        self.service = service
        self._routes = routes  # the messages router's routes (FastAPI's own, with their full paths)
        self._handlers = handlers  # the app's exception handlers, by exception type
        self._declared: dict[str, BaseRoute] | None = None

    def _declared_route(self, template: str) -> BaseRoute:
        """The FastAPI route of a hot route: request logs and metrics name the call by it."""
        if self._declared is None:
            self._declared = {
                getattr(r, "path", ""): r for r in self._routes if "POST" in (getattr(r, "methods", None) or ())
            }
        return self._declared[template]

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            return await self.app(scope, receive, send)
        path = scope["path"]
        for hot in HOT_ROUTES:
            match = hot.regex.fullmatch(path)
            if match is not None:
                break
        else:
            return await self.app(scope, receive, send)
        if not _json_content(scope["headers"]):
            return await self.app(scope, receive, send)
        body = await _read_body(receive)
        if body is None:  # the client left
            return
        try:
            parsed = hot.model() if hot.optional_body and not body else hot.model.model_validate(json.loads(body))
        except (ValueError, ValidationError, RecursionError):  # FastAPI words the refusal
            return await self.app(scope, replay_body(body, receive), send)
        scope["route"] = self._declared_route(hot.template)
        note_request(scope)
        try:
            text = await hot.answer(self.service, match.groups(), parsed, receive)
        except Exception as exc:
            handler = self._handler_of(exc)
            if handler is None:
                raise  # a bug: the outer error middleware answers 500, as for any route
            response = await handler(Request(scope, receive), exc)
            return await response(scope, receive, send)
        data = text.encode()
        await send(
            {
                "type": "http.response.start",
                "status": hot.status,
                "headers": [(b"content-length", str(len(data)).encode()), (b"content-type", JSON_TYPE)],
            }
        )
        await send({"type": "http.response.body", "body": data})

    def _handler_of(self, exc: Exception):
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            handler = self._handlers.get(cls)
            if handler is not None:
                return handler
        return None


def _json_content(headers) -> bool:
    """Whether the request says its body is JSON (`application/json`, parameters allowed)."""
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == JSON_TYPE
    return False


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
