"""Membership, leadership and status of the Raft group, as the API layers need them."""

from __future__ import annotations

import asyncio
import time

from ..engine import Invalid, NotFound
from ..replication import ProbeError, RaftNode, parse_address
from ..replication.quorum import add_needs_new_member
from .errors import ClusterConflict, Unavailable


class ClusterOps:
    """Membership, leadership and status of the Raft group (mixed into QueueService)."""

    node: RaftNode
    member_info: dict
    proposal_timeout: float
    _loop: asyncio.AbstractEventLoop

    async def _register_loop(self) -> None:
        """Publish this node's client endpoints in the replicated member directory."""
        addr = self.node.settings.self_address
        while True:
            known = self.node.state_machine.directory.get(addr)
            if self.member_info and known != self.member_info and self.node.is_ready():
                fut = self._loop.create_future()

                def done(_res, reason, fut=fut):
                    self._loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(reason))

                self.node.state_machine.register_member(addr, self.member_info, callback=done)
                try:
                    await asyncio.wait_for(fut, 5)
                except TimeoutError:
                    pass
                continue
            await asyncio.sleep(0.2 if known != self.member_info else 5.0)

    async def _call(self, start) -> None:
        fut = self._loop.create_future()

        def done(error):
            self._loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(error))

        start(done)
        try:
            error = await asyncio.wait_for(fut, self.proposal_timeout)
        except TimeoutError:
            raise Unavailable("the change was not committed in time; check the cluster status") from None
        if error is not None:
            if getattr(error, "reason", "") == "request_denied":
                raise ClusterConflict(
                    "denied: another membership change is in progress, or the target is not caught up"
                )
            raise Unavailable(str(error))

    def resolve_member(self, ref: str) -> str:
        """A member's Raft address from its node id or address."""
        for addr in self.node.members():
            if addr == ref or self.node.state_machine.directory.get(addr, {}).get("node_id") == ref:
                return addr
        raise NotFound(f"no member {ref!r} in the group")

    async def add_member(self, address: str) -> dict:
        try:
            parse_address(address)
        except ValueError as err:
            raise Invalid(str(err)) from None
        if address in self.node.members():
            raise ClusterConflict(f"{address} is already a member")
        members = self.node.members()
        reachable = sum(1 for m in members if self.node.is_connected(m))
        if add_needs_new_member(len(members), reachable):
            # The change cannot commit without the new member, and once appended it holds: a
            # member that never answers would stall the group for good. Check it first.
            try:
                await asyncio.to_thread(self.node.probe_member, address)
            except ProbeError as err:
                raise ClusterConflict(
                    f"{err}; the group needs it to commit the change: start it first "
                    f"with the group's secret and full peer list"
                ) from None
        await self._call(lambda done: self.node.add_member(address, done))
        return self.cluster_status()

    async def remove_member(self, ref: str) -> dict:
        address = self.resolve_member(ref)
        if address == self.node.leader():
            raise ClusterConflict(f"{ref} is the leader: transfer leadership away first")
        await self._call(lambda done: self.node.remove_member(address, done))
        return self.cluster_status()

    async def transfer_leader(self, to: str | None, timeout: float = 5.0) -> dict:
        target = None if to is None else self.resolve_member(to)
        before = self.node.leader()
        await self._call(lambda done: self.node.transfer_leadership(target, done))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            leader = self.node.leader()
            if leader is not None and leader != before and (target is None or leader == target):
                return self.cluster_status()
            await asyncio.sleep(0.02)
        raise Unavailable("leadership did not move in time")

    def leader_info(self) -> dict | None:
        leader = self.node.leader()
        if leader is None:
            return None
        return {"address": leader, **self.node.state_machine.directory.get(leader, {})}

    def cluster_status(self) -> dict:
        node = self.node
        st = node.status()
        leader = node.leader()
        i_lead = leader == node.settings.self_address
        directory = node.state_machine.directory
        members = []
        for addr in node.members():
            info = directory.get(addr, {})
            match = st.get(f"match_idx_server_{addr}") if i_lead and addr != leader else None
            members.append(
                {
                    "id": info.get("node_id") or addr,
                    "address": addr,
                    "http_url": info.get("http_url"),
                    "grpc_target": info.get("grpc_target"),
                    "role": "leader" if addr == leader else "follower",
                    "self": addr == node.settings.self_address,
                    "healthy": node.is_connected(addr),
                    "match_index": st["commit_idx"] if addr == leader else match,
                    "lag": None if match is None else max(0, st["commit_idx"] - match),
                }
            )
        lead = directory.get(leader, {}) if leader else {}
        return {
            "leader": lead.get("node_id") or leader,
            "leader_address": leader,
            "term": st["raft_term"],
            "commit_index": st["commit_idx"],
            "last_applied": st["last_applied"],
            "has_quorum": st.get("has_quorum"),
            "self": directory.get(node.settings.self_address, {}).get("node_id") or node.settings.self_address,
            "members": members,
        }
