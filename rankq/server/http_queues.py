"""HTTP routes of queues: create, list, read, change settings, delete."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response

from .. import schemas as s
from ..validation import check_settings
from .http_common import RequestHook, queue_info
from .http_errors import COMMON_ERRORS
from .service import QueueService


def build_queues_router(service: QueueService, log_request: RequestHook) -> APIRouter:
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(log_request)], tags=["queues"])

    @router.post("/queues", status_code=201, response_model=s.QueueInfo, responses=COMMON_ERRORS)
    async def create_queue(body: s.CreateQueue):
        """Create a queue with the given settings (unset ones take defaults)."""
        settings = s.QueueSettings.model_validate(body.model_dump(exclude={"name"}, exclude_unset=True)).to_engine()
        check_settings(body.name, None, settings)
        view = await service.create_queue(body.name, settings)
        return JSONResponse(queue_info(view), status_code=201)

    @router.get("/queues", response_model=s.QueueList)
    async def list_queues():
        return JSONResponse({"queues": [queue_info(v) for v in service.list_queues()]})

    @router.get("/queues/{name}", response_model=s.QueueInfo, responses=COMMON_ERRORS)
    async def get_queue(name: str):
        """Settings and counts (ready, delayed, leased, dead)."""
        return JSONResponse(queue_info(service.get_queue(name)))

    @router.patch("/queues/{name}", response_model=s.QueueInfo, responses=COMMON_ERRORS)
    async def update_queue(name: str, body: s.QueueSettings):
        """Change settings live; fields left out keep their values, `null` clears optional limits."""
        changes = body.to_engine()
        check_settings(name, service.get_queue(name).config, changes)
        return JSONResponse(queue_info(await service.update_queue(name, changes)))

    @router.delete("/queues/{name}", status_code=204, responses=COMMON_ERRORS)
    async def delete_queue(name: str):
        await service.delete_queue(name)
        return Response(status_code=204)

    return router
