"""Majorities, for deciding whether a membership change can commit without the member it adds."""

from __future__ import annotations


def majority(members: int) -> int:
    return members // 2 + 1


def add_needs_new_member(members: int, reachable: int) -> bool:
    """Whether a group of `members`, `reachable` of them answering, needs the new member's vote.

    PySyncObj applies a configuration change as soon as it is appended, so the change itself, and
    everything after it (its own undoing too), needs a majority of the new configuration. When the
    members that answer now are not one, a member that never comes up stalls the group for good.
    """
    return reachable < majority(members + 1)
