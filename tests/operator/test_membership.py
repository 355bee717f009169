"""Scaling and rolling-update step planners: one safe step at a time, in the right order."""

from __future__ import annotations

from rankq.operator.membership import plan_rollout, plan_scale


def names(n: int) -> set[str]:
    return {f"q-{i}" for i in range(n)}


def test_steady_state_is_done() -> None:
    assert plan_scale("q", 3, 3, names(3), "q-0", names(3), names(3)).kind == "done"


def test_no_leader_blocks_changes_but_not_a_steady_state() -> None:
    assert plan_scale("q", 3, 3, None, None, set(), set()).kind == "done"
    assert plan_scale("q", 5, 3, None, None, set(), set()).kind == "wait"


def test_scale_up_adds_the_member_then_grows_the_statefulset() -> None:
    a = plan_scale("q", 5, 3, names(3), "q-0", names(3), names(3))
    assert (a.kind, a.pod) == ("add_member", "q-3")
    a = plan_scale("q", 5, 3, names(4), "q-0", names(3), names(3))
    assert (a.kind, a.replicas) == ("set_replicas", 4)
    # Not caught up yet: no next step.
    assert plan_scale("q", 5, 4, names(4), "q-0", names(3), names(3)).kind == "wait"
    assert plan_scale("q", 5, 4, names(4), "q-0", names(4), names(4)).pod == "q-4"


def test_a_lone_node_grows_by_starting_the_pod_first() -> None:
    # One member cannot commit adding a second without it: the pod starts first, then is added.
    a = plan_scale("q", 3, 1, names(1), "q-0", names(1), names(1))
    assert (a.kind, a.replicas) == ("set_replicas", 2)
    a = plan_scale("q", 3, 2, names(1), "q-0", names(1), names(2))
    assert (a.kind, a.pod) == ("add_member", "q-1")
    # Two healthy of two can commit a third member's addition before its pod starts.
    a = plan_scale("q", 3, 2, names(2), "q-0", names(2), names(2))
    assert (a.kind, a.pod) == ("add_member", "q-2")
    # Three members with one down cannot commit a fourth without it.
    a = plan_scale("q", 5, 3, names(3), "q-0", {"q-0", "q-1"}, names(3))
    assert a.kind == "wait"


def test_a_pod_that_is_not_a_member_is_added() -> None:
    a = plan_scale("q", 3, 3, names(2), "q-0", names(2), names(3))
    assert (a.kind, a.pod) == ("add_member", "q-2")


def test_scale_down_stops_the_pod_then_removes_the_member() -> None:
    a = plan_scale("q", 3, 5, names(5), "q-0", names(5), names(5))
    assert (a.kind, a.replicas) == ("set_replicas", 4)
    # q-4 is still shutting down: never remove a running member (it would disrupt elections).
    a = plan_scale("q", 3, 4, names(5), "q-0", names(5), names(5))
    assert (a.kind, a.pod) == ("wait", "q-4")
    a = plan_scale("q", 3, 4, names(5), "q-0", names(4), names(4))
    assert (a.kind, a.pod) == ("remove_member", "q-4")
    a = plan_scale("q", 3, 4, names(4), "q-0", names(4), names(4))
    assert (a.kind, a.replicas) == ("set_replicas", 3)
    assert plan_scale("q", 3, 3, names(4), "q-0", names(3), names(3)).pod == "q-3"
    assert plan_scale("q", 3, 3, names(3), "q-0", names(3), names(3)).kind == "done"


def test_scale_down_moves_leadership_off_the_member_first() -> None:
    a = plan_scale("q", 3, 5, names(5), "q-4", names(5), names(5))
    assert (a.kind, a.pod) == ("transfer_leader", "q-4")


def test_interrupted_scale_down_removes_stray_members() -> None:
    a = plan_scale("q", 3, 3, names(4), "q-0", names(4), names(3))
    assert (a.kind, a.pod) == ("remove_member", "q-3")


def test_rollout_followers_first_leader_last_one_at_a_time() -> None:
    old = {"q-0": "r1", "q-1": "r1", "q-2": "r1"}
    all3 = names(3)
    a = plan_rollout(old, "r2", "q-0", all3, all3, set(), 3)
    assert (a.kind, a.pod) == ("delete_pod", "q-2")
    # While one is restarting nothing else happens.
    assert plan_rollout({"q-0": "r1", "q-1": "r1"}, "r2", "q-0", all3, all3, set(), 3).kind == "wait"
    assert plan_rollout(old, "r2", "q-0", all3, all3, {"q-2"}, 3).kind == "wait"
    # Back but not caught up: wait.
    mixed = {"q-0": "r1", "q-1": "r1", "q-2": "r2"}
    assert plan_rollout(mixed, "r2", "q-0", {"q-0", "q-1"}, all3, set(), 3).kind == "wait"
    a = plan_rollout(mixed, "r2", "q-0", all3, all3, set(), 3)
    assert (a.kind, a.pod) == ("delete_pod", "q-1")
    # Only the leader is old: hand leadership to an updated member first.
    a = plan_rollout({"q-0": "r1", "q-1": "r2", "q-2": "r2"}, "r2", "q-0", all3, all3, set(), 3)
    assert (a.kind, a.pod, a.to) == ("transfer_leader", "q-0", "q-1")
    a = plan_rollout({"q-0": "r1", "q-1": "r2", "q-2": "r2"}, "r2", "q-1", all3, all3, set(), 3)
    assert (a.kind, a.pod) == ("delete_pod", "q-0")
    assert plan_rollout(dict.fromkeys(all3, "r2"), "r2", "q-1", all3, all3, set(), 3).kind == "done"


def test_rollout_waits_without_a_leader() -> None:
    assert plan_rollout({"q-0": "r1"}, "r2", None, set(), {"q-0"}, set(), 1).kind == "wait"
