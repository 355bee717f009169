from __future__ import annotations

import pytest
from workerproc import Journal, WorkerProcess


@pytest.fixture(scope="module")
def grpc_server(tmp_path_factory):
    """A server with HTTP and gRPC, shared by a module."""
    from serverproc import ServerProcess

    srv = ServerProcess(str(tmp_path_factory.mktemp("grpc")), grpc=True).start()
    yield srv
    srv.stop()


@pytest.fixture
def journal(tmp_path) -> Journal:
    return Journal(str(tmp_path / "journal.jsonl"))


@pytest.fixture
def workers(tmp_path, journal):
    """Start `rankq worker` processes (killed at the end if still running)."""
    started: list[WorkerProcess] = []

    def make(url: str, queue: str, *args: str, target: str = "jobs:handle") -> WorkerProcess:
        w = WorkerProcess(url, queue, journal.path, str(tmp_path / "logs"), *args, target=target)
        started.append(w)
        return w.start()

    yield make
    for w in started:
        w.stop()
