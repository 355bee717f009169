"""The HTTP app in-process: httpx.ASGITransport against `build_app` over a real single-node group
(Raft on a loopback port, no server process, no HTTP socket). Seconds for the whole file, so the
API's request/response rules can be checked quickly; tests/server covers the same app as a process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from serverproc import free_port

from rankq.replication import RaftNode, RaftSettings
from rankq.server.http_api import build_app
from rankq.server.service import QueueService

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def in_process(data_dir: str) -> AsyncIterator[httpx.AsyncClient]:
    node = RaftNode(RaftSettings(self_address=f"127.0.0.1:{free_port()}", data_dir=data_dir))
    service = QueueService(node)
    await service.start()
    try:
        deadline = time.monotonic() + 20
        while not service.is_ready():  # a lone node elects itself
            assert time.monotonic() < deadline, "the in-process node did not become leader"
            await asyncio.sleep(0.01)
        app = build_app(service)
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://rankq.test/api/v1") as api:
            yield api
        app.state.feed.close()
    finally:
        await service.stop()


def run(tmp_path, scenario: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with in_process(str(tmp_path)) as api:
            await asyncio.wait_for(scenario(api), 30)  # in a task of its own, with a deadline

    asyncio.run(main())


def test_enqueue_dequeue_ack_round_trip(tmp_path):
    async def scenario(api: httpx.AsyncClient) -> None:
        r = await api.post("/queues", json={"name": "jobs", "policy": "weighted", "visibility_timeout": 5})
        assert r.status_code == 201, r.text
        assert r.json()["settings"]["visibility_timeout"] == 5
        r = await api.post("/queues/jobs/messages", json={"payload": {"n": 1}, "priority": 1})
        assert r.status_code == 201, r.text
        mid = r.json()["id"]
        r = await api.post("/queues/jobs/dequeue", json={"max": 5})
        [msg] = r.json()["messages"]
        assert msg["id"] == mid and msg["payload"] == {"n": 1}
        r = await api.post(
            f"/queues/jobs/messages/{mid}/ack", json={"lease_token": msg["lease_token"], "result": {"ok": True}}
        )
        assert r.status_code == 200, r.text
        r = await api.get(f"/queues/jobs/messages/{mid}")
        assert r.json()["state"] == "acked" and r.json()["result"] == {"ok": True}

    run(tmp_path, scenario)


def test_defaults_of_a_new_queue_are_the_engines(tmp_path):
    from rankq.engine.config import SETTINGS

    async def scenario(api: httpx.AsyncClient) -> None:
        r = await api.post("/queues", json={"name": "plain"})
        settings = r.json()["settings"]
        for spec in SETTINGS.values():
            expected = spec.wire_value(spec.default)
            got = settings[spec.wire]
            if isinstance(expected, dict):
                got = {int(k): v for k, v in got.items()}
            assert got == expected, spec.wire

    run(tmp_path, scenario)


@pytest.mark.parametrize(
    "body",
    [
        {"name": "b", "visibility_timeout": 0},
        {"name": "b", "visibility_timeout": 43200.5},
        {"name": "b", "max_payload_bytes": 64 * 1024 * 1024 + 1},
        {"name": "b", "retention": -1},
        {"name": "b", "policy": "fifo"},
        {"name": "b", "max_deliveries": "3"},
        {"name": "b", "weights": {"1": 0}},
        {"name": "b", "unknown": 1},
    ],
)
def test_a_bad_setting_is_422_with_a_detail_and_creates_nothing(tmp_path, body):
    async def scenario(api: httpx.AsyncClient) -> None:
        r = await api.post("/queues", json=body)
        assert r.status_code == 422, r.text
        assert isinstance(r.json()["detail"], (str, list)) and r.json()["detail"]
        assert (await api.get("/queues/b")).status_code == 404

    run(tmp_path, scenario)


def test_not_json_payloads_are_refused(tmp_path):
    async def scenario(api: httpx.AsyncClient) -> None:
        await api.post("/queues", json={"name": "p"})
        r = await api.post(
            "/queues/p/messages", content=b'{"payload": NaN}', headers={"content-type": "application/json"}
        )
        assert r.status_code == 422, r.text
        r = await api.post("/queues/p/messages", content=b'{"payload": ', headers={"content-type": "application/json"})
        assert r.status_code in (400, 422), r.text
        assert (await api.get("/queues/p")).json()["counts"]["ready"] == 0

    run(tmp_path, scenario)


def test_unknown_queue_and_message_are_404(tmp_path):
    async def scenario(api: httpx.AsyncClient) -> None:
        assert (await api.get("/queues/nope")).status_code == 404
        await api.post("/queues", json={"name": "q"})
        r = await api.get("/queues/q/messages/12345")
        assert r.status_code == 404 and "detail" in r.json()

    run(tmp_path, scenario)
