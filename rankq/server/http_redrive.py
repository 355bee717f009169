"""HTTP routes of a queue's paced redrive: watch it and stop it.

A redrive with a `rate` (`POST /api/v1/queues/{name}/dlq/redrive`) starts a job that moves dead
letters back as the group's time passes; it lives in the replicated state, so it goes on across a
leader change. `GET /api/v1/queues/{name}/redrive` shows it (a finished or stopped job stays
readable until the next redrive starts) and `DELETE` stops it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from .. import schemas as s
from ..engine import NotFound
from .http_common import RequestHook
from .http_errors import error_responses
from .service import QueueService


def redrive_job(job: dict[str, Any]) -> dict[str, Any]:
    """The engine's job status on the wire (its start as ISO 8601)."""
    return {**job, "started_at": s.iso(job["started_at"])}


def redrive_result(result: dict[str, Any]) -> dict[str, Any]:
    """A redrive's answer: the ids moved now, or the paced job it started."""
    if result.get("job") is not None:
        return {"redriven": [], "not_found": [], "job": redrive_job(result["job"])}
    return {"redriven": result["redriven"], "not_found": result["not_found"]}


def build_redrive_router(service: QueueService, log_request: RequestHook) -> APIRouter:
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(log_request)], tags=["dead letters"])
    common = error_responses(404, 422, 503)

    @router.get("/queues/{name}/redrive", response_model=s.RedriveJob, responses=common)
    async def redrive_status(name: str):
        """The queue's paced redrive: rate, total, moved, remaining, state (404 when it never had one)."""
        job = service.redrive_status(name)
        if job is None:
            raise NotFound(f"queue {name!r} has no paced redrive")
        return JSONResponse(redrive_job(job))

    @router.delete("/queues/{name}/redrive", response_model=s.RedriveJob, responses=common)
    async def stop_redrive(name: str):
        """Stop the queue's paced redrive; what it moved stays moved. Answers the job's last status."""
        return JSONResponse(redrive_job(await service.stop_redrive(name)))

    return router
