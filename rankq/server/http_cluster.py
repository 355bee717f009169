"""HTTP routes of the group itself: status, membership changes, leadership transfer."""

from __future__ import annotations

import httpx
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from .. import schemas as s
from .errors import Unavailable


def build_cluster_router(service, log_request, peer_ca: str | None = None) -> APIRouter:
    router = APIRouter(prefix="/api/v1/cluster", dependencies=[Depends(log_request)], tags=["cluster"])
    err = {"model": s.ErrorBody}

    @router.get("", response_model=s.ClusterStatus)
    async def cluster_status():
        """Leader, term, commit index, and each member's id, address, role, health and progress."""
        return service.cluster_status()

    @router.post("/members", response_model=s.ClusterStatus, responses={409: err, 422: err, 503: err})
    async def add_member(body: s.AddMember):
        """Add one member (start it first with the full peer list); wait for this before the next change."""
        return await service.add_member(body.address)

    @router.delete(
        "/members/{member}", response_model=s.ClusterStatus, responses={404: err, 409: err, 422: err, 503: err}
    )
    async def remove_member(member: str):
        """Remove one member by node id or Raft address (not the leader: transfer leadership first)."""
        return await service.remove_member(member)

    @router.post("/transfer-leader", response_model=s.ClusterStatus, responses={404: err, 409: err, 422: err, 503: err})
    async def transfer_leader(request: Request, body: s.TransferLeader | None = None):
        """Hand leadership to another member, e.g. before restarting the leader in a rolling update."""
        to = None if body is None else body.to
        if service.node.is_leader():
            return await service.transfer_leader(to)
        leader = service.leader_info()
        if not leader or not leader.get("http_url"):
            raise Unavailable("no leader known to forward the transfer to")
        async with httpx.AsyncClient(timeout=10, verify=_verify(peer_ca)) as client:
            auth = request.headers.get("authorization")
            r = await client.post(
                leader["http_url"] + "/api/v1/cluster/transfer-leader",
                json={"to": to},
                headers={"authorization": auth} if auth else None,
            )
        return JSONResponse(r.json(), status_code=r.status_code)

    return router


def _verify(ca: str | None):
    """TLS verification for calls to other members: their certificates chain to `ca`."""
    if ca is None:
        return True
    import ssl

    return ssl.create_default_context(cafile=ca)
