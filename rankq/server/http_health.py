"""/healthz, /readyz and /metrics: outside /api/, without a token or a request log line."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from . import metrics
from .service import QueueService


def add_health_routes(app: FastAPI, service: QueueService) -> None:
    # On the app itself, not an included router: the request observer names routes refused before
    # routing by scanning the app's own routes.

    @app.get("/healthz", tags=["health"])
    async def healthz():
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz():
        """A leader is known, this node hears from it and has applied the log, and is not stopping."""
        if service.is_ready():
            leader = service.leader_info() or {}
            return {
                "status": "ready",
                "leader": leader.get("node_id") or leader.get("address"),
                "leader_address": leader.get("address"),
            }
        return JSONResponse({"detail": f"not ready: {service.not_ready_reason()}"}, status_code=503)

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def prometheus():
        body, ctype = metrics.render(service)
        return Response(content=body, media_type=ctype)
