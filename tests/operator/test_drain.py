"""`rankq node drain` (the pods' preStop hook) against a real server, through rankq's client."""

from __future__ import annotations

import pytest
from serverproc import ServerProcess, free_port

from rankq.node_cli import drain

pytestmark = pytest.mark.timeout(120)


def test_drain_of_a_single_member_group_returns_at_once(tmp_path):
    srv = ServerProcess(str(tmp_path / "node")).start(timeout=60)
    try:
        said: list[str] = []
        assert drain(srv.url, timeout=10, echo=said.append) == 0
        assert said == ["drain: single-member group; nothing to hand over"]
    finally:
        srv.stop()


def test_drain_of_a_node_that_does_not_answer_does_not_wait():
    said: list[str] = []
    assert drain(f"http://127.0.0.1:{free_port()}", timeout=10, echo=said.append) == 0
    assert len(said) == 1 and said[0].startswith("drain: node not answering")
