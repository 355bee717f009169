"""Fixtures of the chaos suite: the privilege check, and a summary of every run at the end of the session."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from netns import NetnsUnavailable, check_available, on_ci, sweep  # noqa: E402

SUMMARIES = pytest.StashKey[list]()


@pytest.fixture(scope="session")
def netns_ready():
    """Namespaces, veth pairs and nftables work here; otherwise skip (fail when CI=true)."""
    try:
        check_available()
    except NetnsUnavailable as err:
        if on_ci(os.environ):
            pytest.fail(f"chaos suite cannot run on CI: {err}")
        pytest.skip(f"chaos suite skipped: {err}")
    sweep()


@pytest.fixture
def chaos_summaries(request) -> list:
    return request.config.stash.setdefault(SUMMARIES, [])


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    summaries = config.stash.get(SUMMARIES, [])
    if not summaries:
        return
    terminalreporter.section("chaos runs")
    for s in summaries:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(s["faults"]["by_kind"].items()))
        ops = s["operations"]
        terminalreporter.write_line(
            f"{s['name']}: {s['nodes']} nodes, {s['faults']['total']} faults ({faults}); "
            f"{ops['enqueued_acknowledged_ids']} acknowledged enqueues, {ops['deliveries']} deliveries, "
            f"acks {ops['acks']}; violations {s['violations']['total']} {s['violations']['by_property']}; "
            f"{s['duration_s']:.0f}s"
        )
