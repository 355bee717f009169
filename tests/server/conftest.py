"""Fixtures for the server tests that share one server per module (HTTP and gRPC)."""

from __future__ import annotations

import grpc
import httpx
import pytest
from serverproc import ServerProcess

from rankq.server.proto import rankq_pb2_grpc as pb_grpc


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory, request):
    """A server with gRPC on, its data dir named after the test module."""
    srv = ServerProcess(str(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])), grpc=True).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def api(grpc_server):
    with httpx.Client(base_url=grpc_server.url + "/api/v1", timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def stub(grpc_server):
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_server.grpc_port}")
    yield pb_grpc.RankQStub(channel)
    channel.close()
