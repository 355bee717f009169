"""The HTTP API (FastAPI) under /api/v1, plus /healthz, /readyz and /metrics.

Handlers are thin: parse with the wire models, call the QueueService, shape the answer. Errors from
the engine map to statuses in one table; a client mistake is always a 4xx with a JSON `detail`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import uuid

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import schemas as s
from ..engine import Conflict, EngineError, Full, Invalid, MessageInfo, NotFound, TooLarge
from ..engine import commands as c
from ..engine.config import INT64_MAX, INT64_MIN, MAX_JSON_DEPTH
from ..validation import check_depends_on, check_settings, json_text
from . import logs, metrics
from .asgi import LeaderHeaders
from .closing import AnswerOnShutdown
from .auth import ApiAuth, Tokens
from .errors import RETRY_AFTER_SECONDS, ClusterConflict, Unavailable
from .http_archive import build_archive_router
from .http_backup import build_backup_router
from .http_cluster import build_cluster_router
from .http_dashboard import add_dashboard
from .http_redrive import build_redrive_router, redrive_result
from .service import QueueService, QueueView

RETRY_AFTER = {"Retry-After": str(RETRY_AFTER_SECONDS)}
STATUS = {NotFound: 404, Conflict: 409, Invalid: 422, TooLarge: 413, Full: 429, ClusterConflict: 409}


def status_of(err: Exception) -> int:
    for cls, code in STATUS.items():
        if isinstance(err, cls):
            return code
    if isinstance(err, Unavailable):
        return 503
    return 500


# Module-level encoders: json.dumps with options builds a new encoder on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def payload_fields(payload) -> dict:
    """The wire form of a stored payload: JSON text stays JSON, bytes travel as base64."""
    if payload is None:
        return {}
    if isinstance(payload, bytes):
        return {"payload": None, "payload_base64": base64.b64encode(payload).decode()}
    return {"payload": json.loads(payload)}


def queue_info(view: QueueView) -> dict:
    return s.QueueInfo(
        name=view.name,
        settings=s.QueueSettings.from_engine(view.config),
        counts=s.QueueCounts(**view.counts),
        totals=view.totals,
        created_at=s.ts(view.created_at),
    ).model_dump(mode="json")


def message_status(info: MessageInfo) -> dict:
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


def new_message(m: s.EnqueueRequest, queue: str, index: int | None = None) -> c.NewMessage:
    """The engine's message for one enqueued item (`index`: its place in a batch, None alone)."""
    where = "payload" if index is None else f"messages.{index}.payload"
    depends_on = None
    if m.depends_on:
        deps = [d.batch_index if isinstance(d, s.DependsOnBatchItem) else (d.queue or queue, d.id) for d in m.depends_on]
        depends_on = check_depends_on("depends_on" if index is None else f"messages.{index}.depends_on", index, deps)
    return c.NewMessage(
        payload=json_text(where, m.payload),
        priority=m.priority,
        group=m.group,
        delay_ms=s.to_ms(m.delay),
        deliver_at_ms=s.timestamp_ms(m.deliver_at),
        headers=m.headers,
        dedup_key=m.dedup_key,
        ttl_ms=s.to_ms(m.ttl),
        expires_at_ms=s.timestamp_ms(m.expires_at),
        depends_on=depends_on,
    )


def delivered_json(deliveries) -> str:
    """Build the dequeue body by hand: the stored JSON payload text is spliced in, not re-parsed."""
    parts = []
    for d in deliveries:
        meta = {
            "id": d.id,
            "seq": d.id,
            "priority": d.priority,
            "group": d.group,
            "deliveries": d.deliveries,
            "lease_token": d.lease_token,
            "lease_expires_at": s.iso(d.lease_expires_at),
            "enqueued_at": s.iso(d.enqueued_at),
            "headers": d.headers,
        }
        if isinstance(d.payload, bytes):
            meta["payload"] = None
            meta["payload_base64"] = base64.b64encode(d.payload).decode()
            parts.append(_COMPACT.encode(meta))
        else:
            head = _COMPACT.encode(meta)
            parts.append(head[:-1] + ',"payload":' + d.payload + "}")
    return '{"messages":[' + ",".join(parts) + "]}"


async def until_disconnected(request: Request, call, release) -> list:
    """Run a long poll, cancelled when its client hangs up: the server does not notice a closed
    connection by itself, and a poll finishing for nobody would strand the messages it leased.
    The service releases what a cancelled dequeue got; `release` gives back what a poll that
    finished just as its client left had leased."""
    task = asyncio.ensure_future(call)

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
    if not watcher.done():
        watcher.cancel()
        return await task
    try:  # the client is gone: nobody reads this answer
        got = await task
    except (asyncio.CancelledError, Exception):
        return []
    for d in got:
        try:
            await release(d.id, d.lease_token)
        except Exception:  # its lease runs out instead
            pass
    return []


def raw(body: str, status: int = 200) -> Response:
    return Response(content=body, status_code=status, media_type="application/json")


async def log_request(request: Request) -> None:
    route = request.scope.get("route")
    client = request.client.host if request.client else "-"
    tid = logs.trace_id.get() or request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
    logs.trace_id.set(tid)
    logs.request_line(getattr(route, "path", request.url.path), request.method, str(request.url.path), client, tid)


def build_app(service: QueueService, tokens: Tokens | None = None, peer_ca: str | None = None) -> FastAPI:
    """The HTTP app; with `tokens`, /api/ calls need a token with the route's scope (auth.py).
    `peer_ca` verifies other members' HTTPS certificates when a call is forwarded to the leader."""
    app = FastAPI(
        title="RankQ",
        version="0.1.0",
        description="Replicated priority queues. Durations are seconds; timestamps are ISO 8601 UTC.",
        docs_url=None, redoc_url=None,  # served from packaged assets by the dashboard router
    )
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(log_request)])
    err = {"model": s.ErrorBody}
    common = {404: err, 409: err, 422: err, 503: err}
    full = {"model": s.ErrorBody, "description": "the queue is at its max_length",
            "headers": {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}}

    @app.exception_handler(EngineError)
    async def engine_error(request: Request, exc: EngineError):
        status = status_of(exc)
        return _error(request, status, exc.detail, RETRY_AFTER if status == 429 else None)

    @app.exception_handler(ClusterConflict)
    async def cluster_conflict(request: Request, exc: ClusterConflict):
        return _error(request, 409, str(exc))

    @app.exception_handler(Unavailable)
    async def unavailable(request: Request, exc: Unavailable):
        return _error(request, 503, exc.detail, RETRY_AFTER)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        parts = []
        for e in errors[:5]:
            loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
            parts.append(f"{loc}: {e.get('msg')}")
        detail = "invalid request: " + "; ".join(parts)
        return _error(request, 422, detail, extra={"errors": _jsonable_errors(errors)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 400:  # the only 400 FastAPI raises: a body json.loads could not take
            return _error(request, 422, f"request body is not JSON, or is nested deeper than {MAX_JSON_DEPTH} levels")
        if exc.status_code == 405:  # name every method of the path, not only those of its first route
            return _error(request, 405, str(exc.detail), {"Allow": ", ".join(allowed_methods(request.url.path))})
        return _error(request, exc.status_code, str(exc.detail), exc.headers)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        logs.error_line(_route(request), f"internal error: {exc!r}", 500, exc_info=exc)
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    app.add_middleware(AnswerOnShutdown, service=service)  # inside LeaderHeaders: its answers name the leader
    app.add_middleware(LeaderHeaders, service=service)
    if tokens:
        app.add_middleware(ApiAuth, tokens=tokens)  # before any other: refused calls are not read at all
    app.add_middleware(metrics.RequestObserver, router=app.router)  # outermost, reads no body: refusals are counted too
    methods_by_path: list[tuple[re.Pattern, set[str]]] = []

    def allowed_methods(path: str) -> list[str]:
        """The methods the OpenAPI document gives a concrete path (integer parameters match digits only)."""
        if not methods_by_path:
            for template, ops in app.openapi()["paths"].items():
                ints = {p["name"] for op in ops.values() for p in op.get("parameters", [])
                        if p["in"] == "path" and p.get("schema", {}).get("type") == "integer"}
                regex = re.sub(r"\{(\w+)\}", lambda m, ints=ints: "[0-9]+" if m.group(1) in ints else "[^/]+", template)
                methods_by_path.append((re.compile(regex + "$"), {m.upper() for m in ops}))
        return sorted({m for regex, ms in methods_by_path if regex.match(path) for m in ms})

    # ---- queues ----------------------------------------------------------------------------------

    @api.post("/queues", status_code=201, response_model=s.QueueInfo, responses=common, tags=["queues"])
    async def create_queue(body: s.CreateQueue):
        """Create a queue with the given settings (unset ones take defaults)."""
        settings = s.QueueSettings.model_validate(body.model_dump(exclude={"name"}, exclude_unset=True)).to_engine()
        check_settings(body.name, None, settings)
        view = await service.create_queue(body.name, settings)
        return JSONResponse(queue_info(view), status_code=201)

    @api.get("/queues", response_model=s.QueueList, tags=["queues"])
    async def list_queues():
        return JSONResponse({"queues": [queue_info(v) for v in service.list_queues()]})

    @api.get("/queues/{name}", response_model=s.QueueInfo, responses=common, tags=["queues"])
    async def get_queue(name: str):
        """Settings and counts (ready, delayed, leased, dead)."""
        return JSONResponse(queue_info(service.get_queue(name)))

    @api.patch("/queues/{name}", response_model=s.QueueInfo, responses=common, tags=["queues"])
    async def update_queue(name: str, body: s.QueueSettings):
        """Change settings live; fields left out keep their values, `null` clears optional limits."""
        changes = body.to_engine()
        check_settings(name, service.get_queue(name).config, changes)
        return JSONResponse(queue_info(await service.update_queue(name, changes)))

    @api.delete("/queues/{name}", status_code=204, responses=common, tags=["queues"])
    async def delete_queue(name: str):
        await service.delete_queue(name)
        return Response(status_code=204)

    # ---- messages --------------------------------------------------------------------------------

    @api.post("/queues/{name}/messages", status_code=201, response_model=s.EnqueueResult,
              responses={**common, 413: err, 429: full}, tags=["messages"])
    async def enqueue(name: str, body: s.EnqueueRequest):
        """Enqueue one message; 201 with its id (the original id when the dedup key was seen)."""
        [(mid, dup)] = await service.enqueue(name, [new_message(body, name)])
        return raw('{"id":%d,"seq":%d,"duplicate":%s}' % (mid, mid, "true" if dup else "false"), 201)

    @api.post("/queues/{name}/messages/batch", status_code=201, response_model=s.EnqueueBatchResult,
              responses={**common, 413: err, 429: full}, tags=["messages"])
    async def enqueue_batch(name: str, body: s.EnqueueBatchRequest):
        """Enqueue up to 1000 messages at once; all are accepted or none."""
        out = await service.enqueue(name, [new_message(m, name, i) for i, m in enumerate(body.messages)])
        items = ",".join('{"id":%d,"seq":%d,"duplicate":%s}' % (i, i, "true" if d else "false") for i, d in out)
        return raw('{"results":[' + items + "]}", 201)

    @api.post("/queues/{name}/dequeue", response_model=s.DequeueResult, responses=common, tags=["messages"])
    async def dequeue(name: str, request: Request, body: s.DequeueRequest | None = None):
        """Lease up to `max` messages. With `wait`, return as soon as one is ready (or [] when the wait ends)."""
        body = body or s.DequeueRequest()
        call = service.dequeue(name, body.max, body.wait, s.to_ms(body.visibility_timeout))
        if body.wait:
            got = await until_disconnected(request, call, lambda mid, token: service.release(name, mid, token))
        else:
            got = await call
        return raw(delivered_json(got))

    @api.post("/queues/{name}/messages/{id:int}/ack", response_model=s.AckResult, responses=common, tags=["leases"])
    async def ack(name: str, id: int, body: s.AckRequest):
        """Finish a leased message. A stale or wrong lease token gets 409."""
        [res] = await service.ack(name, [c.AckItem(id, body.lease_token, body.result)])
        if res is not None:
            raise res
        return raw('{"id":%d,"state":"acked"}' % id)

    @api.post("/queues/{name}/ack", response_model=s.AckBatchResult, responses=common, tags=["leases"])
    async def ack_batch(name: str, body: s.AckBatchRequest):
        """Ack many messages; each item succeeds or fails on its own."""
        out = await service.ack(name, [c.AckItem(i.id, i.lease_token, i.result) for i in body.items])
        results = [
            {"id": i.id, "ok": r is None, "status": 200 if r is None else status_of(r), "detail": None if r is None else r.detail}
            for i, r in zip(body.items, out)
        ]
        return JSONResponse({"results": results})

    @api.post("/queues/{name}/messages/{id:int}/nack", response_model=s.NackResult, responses=common, tags=["leases"])
    async def nack(name: str, id: int, body: s.NackRequest):
        """Give a message back: after `delay`, or after exponential backoff with jitter when unset."""
        res = await service.nack(name, id, body.lease_token, s.to_ms(body.delay), body.error, body.dead)
        return JSONResponse({"id": id, "state": res["state"], "available_at": s.iso(res["available_at"])})

    @api.post("/queues/{name}/messages/{id:int}/release", response_model=s.ReleaseResult, responses=common, tags=["leases"])
    async def release(name: str, id: int, body: s.ReleaseRequest):
        """Give a leased message back, ready at once, without counting the delivery (a consumer that stops before running it)."""
        await service.release(name, id, body.lease_token)
        return raw('{"id":%d,"state":"ready"}' % id)

    @api.post("/queues/{name}/messages/{id:int}/extend", response_model=s.ExtendResult, responses=common, tags=["leases"])
    async def extend(name: str, id: int, body: s.ExtendRequest):
        """Keep the lease for `visibility_timeout` more seconds from now."""
        due = await service.extend(name, id, body.lease_token, s.to_ms(body.visibility_timeout))
        return JSONResponse({"id": id, "lease_expires_at": s.iso(due)})

    @api.put("/queues/{name}/messages/{id:int}/priority", response_model=s.MessageStatus, responses=common, tags=["messages"])
    async def set_priority(name: str, id: int, body: s.PriorityRequest):
        """Change the priority of a ready or delayed message (409 while leased)."""
        return JSONResponse(message_status(await service.set_priority(name, id, body.priority)))

    @api.get("/queues/{name}/messages/{id:int}", response_model=s.MessageStatus, responses=common, tags=["messages"])
    async def get_message(name: str, id: int):
        """State of a message: ready, delayed, leased, dead or acked (with its result, while retained)."""
        return JSONResponse(message_status(service.get_message(name, id)))

    @api.delete("/queues/{name}/messages/{id:int}", response_model=s.CancelResult, responses=common, tags=["messages"])
    async def cancel(name: str, id: int):
        """Cancel a ready or delayed message, or delete a dead letter (409 while leased)."""
        was = await service.cancel(name, id)
        return JSONResponse({"id": id, "state": "cancelled", "was": was})

    # ---- dead letters ------------------------------------------------------------------------------

    @api.get("/queues/{name}/dlq", response_model=s.DeadLetterPage, responses=common, tags=["dead letters"])
    async def list_dead(name: str, after: int | None = Query(None, description="list ids greater than this"),
                        limit: int = Query(100, ge=1, le=1000)):
        items = service.dead_letters(name, after, limit)
        next_after = items[-1].id if len(items) == limit else None
        return JSONResponse({"messages": [message_status(i) for i in items], "next_after": next_after})

    @api.post("/queues/{name}/dlq/redrive", response_model=s.RedriveResult, responses=common, tags=["dead letters"])
    async def redrive(name: str, body: s.RedriveRequest | None = None):
        """Move dead letters back to the queue (all, or the given ids) with a fresh delivery count;
        with `rate`, start a paced redrive of that many messages per second (409 while one runs)."""
        body = body or s.RedriveRequest()
        return JSONResponse(redrive_result(await service.redrive(name, body.ids, body.rate)))

    app.include_router(api)
    app.include_router(build_cluster_router(service, log_request, peer_ca))
    app.include_router(build_backup_router(service, log_request))
    app.include_router(build_archive_router(service, log_request))
    app.include_router(build_redrive_router(service, log_request))
    add_dashboard(app, service, log_request)
    app.openapi = _exact_int64_bounds(app.openapi)

    # ---- health ----------------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"])
    async def healthz():
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz():
        """A leader is known, this node hears from it and has applied the log, and is not stopping."""
        if service.is_ready():
            leader = service.leader_info() or {}
            return {"status": "ready", "leader": leader.get("node_id") or leader.get("address"),
                    "leader_address": leader.get("address")}
        return JSONResponse({"detail": f"not ready: {service.not_ready_reason()}"}, status_code=503)

    @app.get("/metrics", tags=["health"], response_class=Response,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus():
        body, ctype = metrics.render(service)
        return Response(content=body, media_type=ctype)

    return app


def _exact_int64_bounds(openapi):
    """FastAPI's OpenAPI model keeps `minimum`/`maximum` as floats, which turns the int64 bounds into
    2^63 (one past the largest int64); put the exact integers back so the schema says what is checked."""

    def fix(node) -> None:
        if isinstance(node, dict):
            for key in ("minimum", "maximum"):
                value = node.get(key)
                if type(value) is float and value in (float(INT64_MIN), float(INT64_MAX)):
                    node[key] = INT64_MIN if value < 0 else INT64_MAX
            for child in node.values():
                fix(child)
        elif isinstance(node, list):
            for child in node:
                fix(child)

    def exact():
        schema = openapi()
        fix(schema)  # cached by FastAPI after the first call; fixing twice changes nothing
        return schema

    return exact


def _route(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "path", request.url.path)


def _error(request: Request, status: int, detail: str, headers=None, extra=None) -> JSONResponse:
    logs.error_line(_route(request), detail, status)
    body = {"detail": detail}
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers)


def _jsonable_errors(errors) -> list[dict]:
    out = []
    for e in errors[:20]:
        out.append({"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg")), "type": str(e.get("type"))})
    return out
