"""Fixtures for the client and CLI tests: one real server process per test module."""

from __future__ import annotations

import itertools
import os

import pytest
from serverproc import ServerProcess

_names = itertools.count(1)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A `rankq server` process on free loopback ports (HTTP only), ready when /readyz answers 200."""
    srv = ServerProcess(str(tmp_path_factory.mktemp("client-server"))).start(timeout=30)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    from rankq import Client

    with Client(server.url, timeout=10) as c:
        yield c


@pytest.fixture
def qname(request):
    """A queue name no other test uses."""
    base = request.node.name.split("[")[0].replace("test_", "")[:40].replace("_", "-")
    return f"{base}-{os.getpid()}-{next(_names)}"
