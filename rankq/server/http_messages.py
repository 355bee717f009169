"""HTTP routes of messages and their leases: enqueue, dequeue (long poll), ack, nack, release,
extend, priority, status and cancel."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.types import Receive

from .. import schemas as s
from ..engine import Delivery
from ..engine import commands as c
from ..validation import check_depends_on, json_text
from .http_common import RequestHook, message_status, raw
from .http_errors import COMMON_ERRORS, QUEUE_FULL, error_responses, status_of
from .service import QueueService

# Module-level encoder: json.dumps with options builds a new encoder on every call.
_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
ENQUEUE_ERRORS = {**error_responses(404, 409, 422, 503, 413), 429: QUEUE_FULL}


def build_messages_router(service: QueueService, log_request: RequestHook) -> APIRouter:
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(log_request)])

    @router.post(
        "/queues/{name}/messages",
        status_code=201,
        response_model=s.EnqueueResult,
        responses=ENQUEUE_ERRORS,
        tags=["messages"],
    )
    async def enqueue(name: str, body: s.EnqueueRequest):
        """Enqueue one message; 201 with its id (the original id when the dedup key was seen)."""
        return raw(await enqueue_answer(service, name, body), 201)

    @router.post(
        "/queues/{name}/messages/batch",
        status_code=201,
        response_model=s.EnqueueBatchResult,
        responses=ENQUEUE_ERRORS,
        tags=["messages"],
    )
    async def enqueue_batch(name: str, body: s.EnqueueBatchRequest):
        """Enqueue up to 1000 messages at once; all are accepted or none."""
        out = await service.enqueue(name, [new_message(m, name, i) for i, m in enumerate(body.messages)])
        items = ",".join('{"id":%d,"seq":%d,"duplicate":%s}' % (i, i, "true" if d else "false") for i, d in out)
        return raw('{"results":[' + items + "]}", 201)

    @router.post("/queues/{name}/dequeue", response_model=s.DequeueResult, responses=COMMON_ERRORS, tags=["messages"])
    async def dequeue(name: str, request: Request, body: s.DequeueRequest | None = None):
        """Lease up to `max` messages. With `wait`, return as soon as one is ready (or [] when the wait ends)."""
        return raw(await dequeue_answer(service, name, body or s.DequeueRequest(), request.receive))

    @router.post(
        "/queues/{name}/messages/{id:int}/ack", response_model=s.AckResult, responses=COMMON_ERRORS, tags=["leases"]
    )
    async def ack(name: str, id: int, body: s.AckRequest):
        """Finish a leased message. A stale or wrong lease token gets 409."""
        return raw(await ack_answer(service, name, id, body))

    @router.post("/queues/{name}/ack", response_model=s.AckBatchResult, responses=COMMON_ERRORS, tags=["leases"])
    async def ack_batch(name: str, body: s.AckBatchRequest):
        """Ack many messages; each item succeeds or fails on its own."""
        return raw(await ack_batch_answer(service, name, body))

    @router.post(
        "/queues/{name}/messages/{id:int}/nack", response_model=s.NackResult, responses=COMMON_ERRORS, tags=["leases"]
    )
    async def nack(name: str, id: int, body: s.NackRequest):
        """Give a message back: after `delay`, or after exponential backoff with jitter when unset."""
        res = await service.nack(name, id, body.lease_token, s.to_ms(body.delay), body.error, body.dead)
        return JSONResponse({"id": id, "state": res["state"], "available_at": s.iso(res["available_at"])})

    @router.post(
        "/queues/{name}/messages/{id:int}/release",
        response_model=s.ReleaseResult,
        responses=COMMON_ERRORS,
        tags=["leases"],
    )
    async def release(name: str, id: int, body: s.ReleaseRequest):
        """Give a leased message back, ready at once, without counting the delivery (a consumer that stops before running it)."""
        await service.release(name, id, body.lease_token)
        return raw('{"id":%d,"state":"ready"}' % id)

    @router.post(
        "/queues/{name}/messages/{id:int}/extend",
        response_model=s.ExtendResult,
        responses=COMMON_ERRORS,
        tags=["leases"],
    )
    async def extend(name: str, id: int, body: s.ExtendRequest):
        """Keep the lease for `visibility_timeout` more seconds from now."""
        due = await service.extend(name, id, body.lease_token, s.to_ms(body.visibility_timeout))
        return JSONResponse({"id": id, "lease_expires_at": s.iso(due)})

    @router.put(
        "/queues/{name}/messages/{id:int}/priority",
        response_model=s.MessageStatus,
        responses=COMMON_ERRORS,
        tags=["messages"],
    )
    async def set_priority(name: str, id: int, body: s.PriorityRequest):
        """Change the priority of a ready or delayed message (409 while leased)."""
        return JSONResponse(message_status(await service.set_priority(name, id, body.priority)))

    @router.get(
        "/queues/{name}/messages/{id:int}", response_model=s.MessageStatus, responses=COMMON_ERRORS, tags=["messages"]
    )
    async def get_message(name: str, id: int):
        """State of a message: ready, delayed, leased, dead or acked (with its result, while retained)."""
        return JSONResponse(message_status(service.get_message(name, id)))

    @router.delete(
        "/queues/{name}/messages/{id:int}", response_model=s.CancelResult, responses=COMMON_ERRORS, tags=["messages"]
    )
    async def cancel(name: str, id: int):
        """Cancel a ready or delayed message, or delete a dead letter (409 while leased)."""
        was = await service.cancel(name, id)
        return JSONResponse({"id": id, "state": "cancelled", "was": was})

    return router


# ---- the hot routes' work, shared by the FastAPI routes above and by http_hot ----------------


async def enqueue_answer(service: QueueService, name: str, body: s.EnqueueRequest) -> str:
    """Enqueue one message; the 201 body."""
    [(mid, dup)] = await service.enqueue(name, [new_message(body, name)])
    return '{"id":%d,"seq":%d,"duplicate":%s}' % (mid, mid, "true" if dup else "false")


async def dequeue_answer(service: QueueService, name: str, body: s.DequeueRequest, receive: Receive) -> str:
    """Lease up to `body.max` messages (a long poll with `wait`, ended early if the client leaves)."""
    call = service.dequeue(name, body.max, body.wait, s.to_ms(body.visibility_timeout))
    if body.wait:
        got = await until_disconnected(receive, call, lambda mid, token: service.release(name, mid, token))
    else:
        got = await call
    return delivered_json(got)


async def ack_answer(service: QueueService, name: str, id: int, body: s.AckRequest) -> str:
    """Ack one leased message; a stale or wrong lease token raises (409)."""
    [res] = await service.ack(name, [c.AckItem(id, body.lease_token, body.result)])
    if res is not None:
        raise res
    return '{"id":%d,"state":"acked"}' % id


async def ack_batch_answer(service: QueueService, name: str, body: s.AckBatchRequest) -> str:
    """Ack many messages; each item's own outcome."""
    out = await service.ack(name, [c.AckItem(i.id, i.lease_token, i.result) for i in body.items])
    results = [
        {
            "id": i.id,
            "ok": r is None,
            "status": 200 if r is None else status_of(r),
            "detail": None if r is None else r.detail,
        }
        for i, r in zip(body.items, out)
    ]
    return _COMPACT.encode({"results": results})


def new_message(m: s.EnqueueRequest, queue: str, index: int | None = None) -> c.NewMessage:
    """The engine's message for one enqueued item (`index`: its place in a batch, None alone)."""
    where = "payload" if index is None else f"messages.{index}.payload"
    depends_on = None
    if m.depends_on:
        deps = [
            d.batch_index if isinstance(d, s.DependsOnBatchItem) else (d.queue or queue, d.id) for d in m.depends_on
        ]
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


def delivered_json(deliveries: Iterable[Delivery]) -> str:
    """Build the dequeue body by hand: the stored JSON payload text is spliced in, not re-parsed."""
    parts = []
    for d in deliveries:
        meta: dict[str, Any] = {
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


async def until_disconnected(
    receive: Receive, call: Awaitable[list[Delivery]], release: Callable[[int, str], Awaitable[Any]]
) -> list[Delivery]:
    """Run a long poll, cancelled when its client hangs up: the server does not notice a closed
    connection by itself, and a poll finishing for nobody would strand the messages it leased.
    The service releases what a cancelled dequeue got; `release` gives back what a poll that
    finished just as its client left had leased."""
    task = asyncio.ensure_future(call)

    async def gone() -> None:
        while (await receive())["type"] != "http.disconnect":
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
