"""HTTP routes of a queue's dead letters: list them a page at a time, move them back."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from .. import schemas as s
from .http_common import RequestHook, message_status
from .http_errors import COMMON_ERRORS
from .http_redrive import redrive_result
from .service import QueueService


def build_dead_letters_router(service: QueueService, log_request: RequestHook) -> APIRouter:
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(log_request)], tags=["dead letters"])

    @router.get("/queues/{name}/dlq", response_model=s.DeadLetterPage, responses=COMMON_ERRORS)
    async def list_dead(
        name: str,
        after: int | None = Query(None, description="list ids greater than this"),
        limit: int = Query(100, ge=1, le=1000),
    ):
        items = service.dead_letters(name, after, limit)
        next_after = items[-1].id if len(items) == limit else None
        return JSONResponse({"messages": [message_status(i) for i in items], "next_after": next_after})

    @router.post("/queues/{name}/dlq/redrive", response_model=s.RedriveResult, responses=COMMON_ERRORS)
    async def redrive(name: str, body: s.RedriveRequest | None = None):
        """Move dead letters back to the queue (all, or the given ids) with a fresh delivery count;
        with `rate`, start a paced redrive of that many messages per second (409 while one runs)."""
        body = body or s.RedriveRequest()
        return JSONResponse(redrive_result(await service.redrive(name, body.ids, body.rate)))

    return router
