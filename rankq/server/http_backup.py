"""HTTP routes for backup and restore of a whole group (admin).

`GET /api/v1/backup` streams a consistent backup from the leader (the node that has applied every
write it acknowledged). `POST /api/v1/restore` applies one chunk of a backup to a new, empty group
through the log, so every member ends with the same state.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from .. import schemas as s
from ..engine import commands as c
from .backup import stream_backup
from .errors import Unavailable


def build_backup_router(service, log_request) -> APIRouter:
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(log_request)], tags=["backup"])
    err = {"model": s.ErrorBody}

    @router.get("/backup", responses={200: {"content": {"application/gzip": {}}}, 503: err})
    async def backup():
        """A consistent backup of every queue, message, dead letter, retained result and dedup key:
        gzip'd JSON lines, last line `{"kind": "end"}`. Served by the leader only."""
        if not service.node.is_leader():
            leader = service.leader_info() or {}
            where = leader.get("http_url") or leader.get("address") or "unknown yet"
            raise Unavailable(f"backups are taken on the leader ({where})")
        return StreamingResponse(
            stream_backup(service.node),
            media_type="application/gzip",
            headers={"Content-Disposition": 'attachment; filename="rankq-backup.jsonl.gz"'},
        )

    @router.post("/restore", response_model=s.RestoreResult, responses={409: err, 422: err, 503: err})
    async def restore(body: s.RestoreChunk):
        """Apply one chunk of a backup. Restore into a new group: a queue that exists is a 409."""
        return await service.submit(c.Restore(body.restore_id, body.index, tuple(body.records)))

    return router
