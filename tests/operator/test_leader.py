"""Who gets the leader label, and the preStop drain's quorum rule."""

from __future__ import annotations

from rankq.node_cli import quorum_critical
from rankq.operator.leader import choose_leader, role_changes


def status(pod, leader, term, quorum=True):
    return {"self": pod, "leader": leader, "term": term, "has_quorum": quorum}


def test_leader_must_confirm_itself_in_the_newest_term() -> None:
    assert choose_leader({"q-0": status("q-0", "q-0", 3), "q-1": status("q-1", "q-0", 3)}) == "q-0"
    # Followers name q-0, but q-0 did not answer: nobody is labelled.
    assert choose_leader({"q-1": status("q-1", "q-0", 3), "q-2": status("q-2", "q-0", 3)}) is None
    # A deposed leader still believing in an old term loses to the newer term.
    answers = {"q-0": status("q-0", "q-0", 3), "q-1": status("q-1", "q-1", 4), "q-2": status("q-2", "q-1", 4)}
    assert choose_leader(answers) == "q-1"
    # A leader without quorum is not labelled.
    assert choose_leader({"q-0": status("q-0", "q-0", 5, quorum=False)}) is None
    assert choose_leader({}) is None


def pod(name, role=None, terminating=False):
    meta = {"name": name, "labels": {"rankq.io/role": role} if role else {}}
    if terminating:
        meta["deletionTimestamp"] = "2024-01-01T00:00:00Z"
    return {"metadata": meta}


def test_role_changes_demote_before_promoting_and_skip_what_is_right() -> None:
    pods = [pod("q-0", "leader"), pod("q-1", "follower"), pod("q-2")]
    assert role_changes(pods, "q-1") == [("q-0", "follower"), ("q-2", "follower"), ("q-1", "leader")]
    assert role_changes([pod("q-0", "leader"), pod("q-1", "follower")], "q-0") == []
    assert role_changes([pod("q-0", "leader")], None) == [("q-0", "follower")]
    assert role_changes([pod("q-0", "leader", terminating=True)], "q-0") == [("q-0", "follower")]


def members(*healthy):
    return {
        "members": [
            {"id": f"q-{i}", "role": "leader" if i == 0 else "follower", "healthy": h} for i, h in enumerate(healthy)
        ]
    }


def test_quorum_critical() -> None:
    assert not quorum_critical(members(True, True, True), "q-2")
    assert quorum_critical(members(True, False, True), "q-2")  # q-1 down: q-2 is needed
    assert not quorum_critical(members(True, False, True, True, True), "q-4")
    assert quorum_critical(members(True, False, False, True, True), "q-4")
