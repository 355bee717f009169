"""HTTP route reporting the archive of finished messages (PostgreSQL): lag, pending, errors."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends


def build_archive_router(service, log_request) -> APIRouter:
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(log_request)], tags=["archive"])

    @router.get("/archive")
    async def archive_status() -> dict[str, Any]:
        """Whether this node archives, records waiting (pending), dropped because the outbox was
        full, the highest confirmed archive sequence number, the age of the oldest waiting record
        (lag_seconds) and the last error reaching the store. Ask the leader: it ships."""
        if service.archiver is None:
            with service.node.lock:
                box = service.node.engine.outbox().status()
            return {"enabled": False, **box}
        return service.archiver.status()

    return router
