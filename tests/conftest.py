from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from serverproc import ServerProcess  # noqa: E402


@pytest.fixture
def server_factory(tmp_path):
    """Start real server processes in temporary data dirs; all are stopped at the end."""
    started: list[ServerProcess] = []

    def make(name: str = "node", **kw) -> ServerProcess:
        srv = ServerProcess(str(tmp_path / name), **kw)
        started.append(srv)
        return srv.start()

    yield make
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    """One server for a whole test module (tests use distinct queue names)."""
    srv = ServerProcess(str(tmp_path_factory.mktemp("shared"))).start()
    yield srv
    srv.stop()
