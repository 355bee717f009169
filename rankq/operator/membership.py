"""Scaling and rolling updates as pure step planners: observed state in, the one next action out.

Raft changes membership one member at a time, and every step must finish (the change committed,
the new member caught up) before the next. Reconcile calls `plan_scale` / `plan_rollout` every tick
and carries out at most one action, so an operator restart simply resumes from what it observes.

Scale up n -> n+1: pod n is added to the group's configuration through the leader, then the
ConfigMap's peer list and the StatefulSet grow to n+1 (pod n starts with the full list and is
caught up by the leader), then we wait for it to be a healthy member. When too few members answer
to commit the change without pod n (a lone node growing), pod n starts first and is added while
it answers: the API refuses an add the group could not commit. Scale down n -> n-1: if pod n-1
leads, leadership moves first; the StatefulSet shrinks (pod n-1 stops, its claim is deleted); once
it has stopped, it is removed from the group's configuration.

Rolling update (StatefulSet updateStrategy OnDelete): while some pod runs an old revision and the
whole group is healthy, delete the highest-ordinal old follower; the leader goes last, after its
leadership moved to an updated member. One pod at a time, never below quorum.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..replication.quorum import add_needs_new_member


@dataclass(frozen=True)
class Action:
    kind: str  # wait | set_replicas | add_member | remove_member | transfer_leader | delete_pod | done
    pod: str | None = None
    replicas: int | None = None
    to: str | None = None
    reason: str = ""


def ordinal(pod: str) -> int:
    """A pod's StatefulSet ordinal; members named otherwise sort last."""
    tail = pod.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 1 << 30


def plan_scale(
    name: str,
    target: int,
    sts_replicas: int,
    members: set[str] | None,
    leader: str | None,
    healthy: set[str],
    answering: set[str],
) -> Action:
    """One step towards `target` members.

    members: ids (pod names) in the group per the leader; None when no leader is known.
    healthy: members the leader is connected to. answering: pods whose HTTP API answered.
    """
    if members is None:
        if target == sts_replicas:
            return Action("done")
        return Action("wait", reason="no leader to change membership through")
    expected = {f"{name}-{i}" for i in range(sts_replicas)}
    keep = {f"{name}-{i}" for i in range(min(sts_replicas, target))}
    growing = f"{name}-{sts_replicas}" if target > sts_replicas else None
    # A pod that should be a member and is not (an interrupted step): add it.
    for pod in sorted(keep - members, key=ordinal):
        return Action("add_member", pod=pod, reason=f"add {pod} to the group")
    # Members beyond the StatefulSet (the second half of a scale-down step): once the pod has
    # stopped, remove it from the configuration.
    for pod in sorted(members - expected - {growing}, key=ordinal, reverse=True):
        if pod == leader:
            return Action("transfer_leader", pod=pod, reason=f"move leadership off {pod} before removing it")
        if pod in answering:
            return Action("wait", pod=pod, reason=f"waiting for {pod} to stop before removing it")
        return Action("remove_member", pod=pod, reason=f"remove {pod} from the group")
    if target < sts_replicas:
        # Stop the pod first, then remove the member: a removed member that still runs starts
        # elections of its own and (Raft without pre-vote) would depose the leader again and again.
        last = f"{name}-{sts_replicas - 1}"
        if expected - healthy:
            return Action(
                "wait", reason=f"waiting for {', '.join(sorted(expected - healthy, key=ordinal))} to catch up"
            )
        if last == leader:
            return Action("transfer_leader", pod=last, reason=f"move leadership off {last} before stopping it")
        return Action("set_replicas", replicas=sts_replicas - 1, reason=f"scale down to {sts_replicas - 1}")
    if expected - healthy:
        return Action("wait", reason=f"waiting for {', '.join(sorted(expected - healthy, key=ordinal))} to catch up")
    if growing is not None:
        # The member joins the configuration first, then its pod starts and is caught up by the
        # leader at once. (A pod started before it is a member runs elections of its own and, Raft
        # without pre-vote, disrupts the group's leader with ever higher terms.)
        if growing not in members:
            if add_needs_new_member(len(members), len(healthy & members)):
                # Too few members answer to commit the change without the new one (a lone
                # node, say): start its pod first (a non-member cannot reach the others), then
                # add it while it answers.
                return Action(
                    "set_replicas",
                    replicas=sts_replicas + 1,
                    reason=f"start {growing} before adding it: the group needs it to commit the change",
                )
            return Action("add_member", pod=growing, reason=f"add {growing} to the group")
        return Action("set_replicas", replicas=sts_replicas + 1, reason=f"scale up to {sts_replicas + 1}")
    return Action("done")


def plan_rollout(
    pods: dict[str, str | None],
    update_revision: str | None,
    leader: str | None,
    healthy: set[str],
    ready: set[str],
    terminating: set[str],
    replicas: int,
) -> Action:
    """One step of a rolling update.

    pods: pod name -> controller revision (None: not labelled yet); healthy: members the leader
    reports connected; ready: pods whose readiness is True.
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
    return Action(
        "transfer_leader",
        pod=leader,
        to=updated[0] if updated else None,
        reason=f"move leadership off {leader} before restarting it",
    )
