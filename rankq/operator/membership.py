"""Scaling and rolling updates as pure step planners: observed state in, the one next action out.

Raft changes membership one member at a time, and every step must finish (the change committed,
the new member caught up) before the next. Reconcile calls `plan_scale` / `plan_rollout` every tick
and carries out at most one action, so an operator restart simply resumes from what it observes.

Scale up n -> n+1: the ConfigMap's peer list and the StatefulSet grow to n+1 (pod n starts with
the full list), then pod n is added to the group through the leader, then we wait for it to be a
healthy member. Scale down n -> n-1: if pod n-1 leads, leadership moves first; pod n-1 is removed
from the group; only then does the StatefulSet shrink (its claim is deleted with it).

Rolling update (StatefulSet updateStrategy OnDelete): while some pod runs an old revision and the
whole group is healthy, delete the highest-ordinal old follower; the leader goes last, after its
leadership moved to an updated member. One pod at a time, never below quorum.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Action:
    kind: str  # wait | set_replicas | add_member | remove_member | transfer_leader | delete_pod | done
    pod: str | None = None
    replicas: int | None = None
    to: str | None = None
    reason: str = ""


def ordinal(pod: str) -> int:
    return int(pod.rsplit("-", 1)[1])


def plan_scale(name: str, target: int, sts_replicas: int, members: set[str] | None, leader: str | None,
               healthy: set[str], answering: set[str]) -> Action:
    """One step towards `target` members.

    members: ids (pod names) in the group per the leader; None when no leader is known.
    healthy: members the leader is connected to. answering: pods whose HTTP API answered.
    """
    if members is None:
        if target == sts_replicas:
            return Action("done")
        return Action("wait", reason="no leader to change membership through")
    expected = {f"{name}-{i}" for i in range(sts_replicas)}
    # Finish a scale-up step: a started pod that is not a member yet.
    for pod in sorted(expected - members, key=ordinal):
        if pod in answering:
            return Action("add_member", pod=pod, reason=f"add {pod} to the group")
        return Action("wait", pod=pod, reason=f"waiting for {pod} to start")
    # Members beyond the StatefulSet (an interrupted scale-down): remove them.
    for pod in sorted(members - expected, key=ordinal, reverse=True):
        if pod == leader:
            return Action("transfer_leader", pod=pod, reason=f"move leadership off {pod} before removing it")
        return Action("remove_member", pod=pod, reason=f"remove {pod} from the group")
    if expected - healthy:
        return Action("wait", reason=f"waiting for {', '.join(sorted(expected - healthy, key=ordinal))} to catch up")
    if target > sts_replicas:
        return Action("set_replicas", replicas=sts_replicas + 1, reason=f"scale up to {sts_replicas + 1}")
    if target < sts_replicas:
        last = f"{name}-{sts_replicas - 1}"
        if last == leader:
            return Action("transfer_leader", pod=last, reason=f"move leadership off {last} before removing it")
        return Action("remove_member", pod=last, reason=f"remove {last} from the group")
    return Action("done")


def plan_rollout(pods: dict[str, str], update_revision: str | None, leader: str | None,
                 healthy: set[str], ready: set[str], terminating: set[str], replicas: int) -> Action:
    """One step of a rolling update.

    pods: pod name -> controller revision; healthy: members the leader reports connected;
    ready: pods whose readiness is True.
    """
    if not update_revision:
        return Action("done")
    old = [p for p, rev in pods.items() if rev != update_revision]
    if not old:
        return Action("done")
    if terminating or len(pods) < replicas:
        return Action("wait", reason="waiting for the last restarted member to come back")
    if leader is None:
        return Action("wait", reason="no leader")
    not_ok = sorted(set(pods) - (healthy & ready), key=ordinal)
    if not_ok:
        return Action("wait", reason=f"waiting for {', '.join(not_ok)} to be ready and caught up")
    followers = sorted((p for p in old if p != leader), key=ordinal, reverse=True)
    if followers:
        return Action("delete_pod", pod=followers[0], reason=f"restart {followers[0]} on the new revision")
    updated = sorted((p for p in pods if p not in old), key=ordinal)
    return Action("transfer_leader", pod=leader, to=updated[0] if updated else None,
                  reason=f"move leadership off {leader} before restarting it")
