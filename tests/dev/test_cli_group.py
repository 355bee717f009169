"""`rankq cluster status` against a real 3-node group: a follower's view is replaced by the leader's."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from serverproc import Cluster, wait_for

from rankq.cli import main

pytestmark = pytest.mark.timeout(120)


def test_status_through_a_follower_shows_every_followers_progress(tmp_path):
    group = Cluster(str(tmp_path / "g"), 3).start()
    try:
        leader = group.leader()
        follower = group.followers()[0]
        runner = CliRunner(env={"RANKQ_URL": None, "COLUMNS": "120"})

        def status() -> dict:
            result = runner.invoke(
                main, ["--url", follower.url, "-o", "json", "cluster", "status"], catch_exceptions=False
            )
            assert result.exit_code == 0, result.stderr
            return json.loads(result.stdout)

        # Followers' match index is known once the leader heard back from them.
        got = wait_for(
            lambda: (s := status()) and all(m["match_index"] is not None for m in s["members"]) and s,
            30,
            "every member's progress in the status",
        )
        assert got["self"] == leader.node_id
        assert {m["role"] for m in got["members"]} == {"leader", "follower"}

        table = runner.invoke(main, ["--url", follower.url, "cluster", "status"], catch_exceptions=False).stdout
        rows = [line.split() for line in table.splitlines() if line.split()[:1] and line.split()[0].startswith("n")]
        assert len(rows) == 3 and all(row[4] != "-" for row in rows), table  # the match column
    finally:
        group.stop()
