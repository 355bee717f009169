"""A server started with an API token refuses API calls without it, over HTTP and gRPC."""

from __future__ import annotations

import httpx
import pytest

from rankq import Client, UnauthorizedError


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    from serverproc import ServerProcess

    root = tmp_path_factory.mktemp("auth")
    token_file = root / "token"
    token_file.write_text("s3cr3t-token\n")
    srv = ServerProcess(str(root / "node"), grpc=True, extra=["--api-token-file", str(token_file)]).start()
    yield srv
    srv.stop()


def test_http_requires_the_token_but_health_stays_open(secured):
    r = httpx.get(secured.url + "/api/v1/queues")
    assert r.status_code == 401 and "token" in r.json()["detail"]
    r = httpx.get(secured.url + "/api/v1/queues", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    r = httpx.get(secured.url + "/api/v1/queues", headers={"Authorization": "Bearer s3cr3t-token"})
    assert r.status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert httpx.get(secured.url + path).status_code == 200, path


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_clients_send_the_token(secured, scheme):
    url = secured.url if scheme == "http" else f"grpc://127.0.0.1:{secured.grpc_port}"
    with Client(url, token="s3cr3t-token") as rq:
        rq.create_queue(f"authq-{scheme}")
        rq.enqueue(f"authq-{scheme}", {"ok": 1})
        assert rq.get_queue(f"authq-{scheme}").counts.ready == 1
    with Client(url, token="nope", retries=0) as rq:
        with pytest.raises(UnauthorizedError):
            rq.list_queues()
    with Client(url, retries=0) as rq:
        with pytest.raises(UnauthorizedError):
            rq.enqueue(f"authq-{scheme}", {"ok": 2})
