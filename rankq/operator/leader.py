"""Who leads, as the members themselves report it, and the role labels that follow from it.

The operator is the authority for `rankq.io/role` (see docs/operator.md): every check it asks each
member for `/api/v1/cluster`, and labels `leader` only a pod that *itself* answers that it leads,
in the highest term any member reports, with a quorum behind it. Every other pod is `follower`.
When no pod qualifies, no pod carries `leader` and the client Service has no endpoints: clients
retry rather than write to a node that may have been deposed. Demotions are applied before the
promotion, so two pods never carry `leader` at once.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from . import specs
from .endpoints import Endpoints
from .group import OBSERVE_TIMEOUT, GroupClients
from .kube import Kube, KubeError, code
from .models import QueueResource


@dataclass
class Observation:
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)  # pod -> its /api/v1/cluster
    errors: dict[str, str] = field(default_factory=dict)
    leader: str | None = None

    @property
    def leader_status(self) -> dict[str, Any] | None:
        return self.answers.get(self.leader) if self.leader else None

    def member_ids(self) -> set[str] | None:
        status = self.leader_status
        return None if status is None else {m["id"] for m in status["members"]}


def choose_leader(answers: dict[str, dict[str, Any]]) -> str | None:
    """The pod that confirms its own leadership in the newest term, with a quorum; else None."""
    if not answers:
        return None
    newest = max(a.get("term", 0) for a in answers.values())
    for pod, status in answers.items():
        if (
            status.get("term") == newest
            and status.get("leader") == pod
            and status.get("self") == pod
            and status.get("has_quorum") is not False
        ):
            return pod
    return None


def role_changes(pods: list[dict[str, Any]], leader: str | None) -> list[tuple[str, str]]:
    """(pod, role) patches that make the labels match `leader`; demotions first."""
    demote: list[tuple[str, str]] = []
    promote: list[tuple[str, str]] = []
    for pod in pods:
        name = pod["metadata"]["name"]
        terminating = pod["metadata"].get("deletionTimestamp") is not None
        want = specs.LEADER if name == leader and not terminating else specs.FOLLOWER
        have = (pod["metadata"].get("labels") or {}).get(specs.ROLE_LABEL)
        if have != want:
            (promote if want == specs.LEADER else demote).append((name, want))
    return demote + promote


async def observe(group: GroupClients, endpoints: Endpoints, q: QueueResource, pods: list[str]) -> Observation:
    async def one(pod: str) -> tuple[str, dict | None, str | None]:
        try:
            return pod, await group.at(endpoints.http_url(q, pod), OBSERVE_TIMEOUT).cluster_status(), None
        except Exception as err:  # noqa: BLE001 - an unreachable member is an observation
            return pod, None, f"{type(err).__name__}: {err}"

    obs = Observation()
    for pod, status, error in await asyncio.gather(*(one(p) for p in pods)):
        if status is not None:
            obs.answers[pod] = status
        else:
            obs.errors[pod] = error or "no answer"
    obs.leader = choose_leader(obs.answers)
    return obs


async def apply_roles(
    kube: Kube, q: QueueResource, pods: list[dict[str, Any]], leader: str | None
) -> list[tuple[str, str]]:
    changes = role_changes(pods, leader)
    for name, role in changes:
        try:
            await kube.merge_patch("Pod", q.namespace, name, {"metadata": {"labels": {specs.ROLE_LABEL: role}}})
        except KubeError as err:
            if code(err) == 404:  # gone: nothing to demote or promote
                continue
            raise  # never promote while a demotion is unconfirmed
    return changes
