"""What the HTTP routers share: the request-log dependency and the wire shapes of queues and messages."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from .. import schemas as s
from ..engine import MessageInfo
from . import logs
from .service import QueueView

RequestHook = Callable[[Request], Awaitable[None]]  # what the router factories take as `log_request`


async def log_request(request: Request) -> None:
    """Every /api/ router depends on this: the request line with its trace id."""
    note_request(request.scope)


def note_request(scope: MutableMapping[str, Any]) -> None:
    """The request line of an /api/ call, with its trace id (FastAPI routes and the hot routes)."""
    route = scope.get("route")
    client = scope.get("client")
    path = scope["path"].replace("?", "%3F").replace("#", "%23").replace("\\", "%5C")  # as request.url.path
    tid = logs.trace_id.get()
    if not tid:
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                tid = value.decode("latin-1")
                break
        tid = tid or uuid.uuid4().hex[:16]
        logs.trace_id.set(tid)
    logs.request_line(getattr(route, "path", path), scope["method"], path, client[0] if client else "-", tid)


def raw(body: str, status: int = 200) -> Response:
    """A JSON body built by hand (the hot paths skip the encoder)."""
    return Response(content=body, status_code=status, media_type="application/json")


def payload_fields(payload: str | bytes | None) -> dict[str, Any]:
    """The wire form of a stored payload: JSON text stays JSON, bytes travel as base64."""
    if payload is None:
        return {}
    if isinstance(payload, bytes):
        return {"payload": None, "payload_base64": base64.b64encode(payload).decode()}
    return {"payload": json.loads(payload)}


def queue_info(view: QueueView) -> dict[str, Any]:
    return s.QueueInfo(
        name=view.name,
        settings=s.QueueSettings.from_engine(view.config),
        counts=s.QueueCounts(**view.counts),
        totals=view.totals,
        created_at=s.ts(view.created_at),
    ).model_dump(mode="json")


def message_status(info: MessageInfo) -> dict[str, Any]:
    out = {
        "id": info.id,
        "seq": info.id,
        "queue": info.queue,
        "state": info.state,
        "priority": info.priority,
        "group": info.group,
        "deliveries": info.deliveries,
        "enqueued_at": s.iso(info.enqueued_at),
        "available_at": s.iso(info.available_at),
        "lease_expires_at": s.iso(info.lease_expires_at),
        "acked_at": s.iso(info.acked_at),
        "last_error": info.last_error,
        "result": info.result,
        "headers": info.headers,
        "dedup_key": info.dedup_key,
        "payload": None,
        "payload_base64": None,
        "depends_on": None if info.depends_on is None else [{"queue": q, "id": i} for q, i in info.depends_on],
        "expires_at": s.iso(info.expires_at),
        "dead_reason": info.dead_reason,
    }
    out.update(payload_fields(info.payload))
    return out
