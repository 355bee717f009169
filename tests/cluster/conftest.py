from __future__ import annotations

import pytest
from serverproc import Cluster


@pytest.fixture
def cluster(tmp_path):
    """Start Raft groups of real server processes; all are stopped at the end."""
    groups: list[Cluster] = []

    def make(size: int = 3, **kw) -> Cluster:
        c = Cluster(str(tmp_path / f"g{len(groups)}"), size, **kw)
        groups.append(c)
        return c.start()

    yield make
    for c in groups:
        c.stop()
