"""The hot routes (http_hot) answer exactly as the FastAPI routes they stand in for.

The same script of requests — good ones and every kind of bad one — runs against two fresh
single-node apps, one with the hot routes and one with them switched off (every request through
FastAPI); statuses, bodies and content types must match, once lease tokens and times are masked."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from test_http_in_process import in_process

from rankq.server import http_hot

pytestmark = pytest.mark.timeout(90)

DEEP = "[" * 70 + "]" * 70
MASKED = {"lease_token", "lease_expires_at", "enqueued_at", "available_at", "acked_at"}


def mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("*" if k in MASKED and v is not None else mask(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [mask(v) for v in value]
    return value


async def script(api: httpx.AsyncClient) -> list[tuple]:
    """Requests in order; later ones use ids and lease tokens from earlier answers."""
    seen: list[tuple] = []

    async def call(path: str, body: Any = None, raw: bytes | None = None, ctype: str | None = "application/json"):
        headers = {"content-type": ctype} if ctype else {}
        content = raw if raw is not None else (None if body is None else httpx.Request("POST", "/", json=body).content)
        r = await api.post(path, content=content, headers=headers)
        try:
            parsed: Any = r.json()
        except ValueError:
            parsed = r.text
        seen.append((path, r.status_code, r.headers.get("content-type"), mask(parsed)))
        return r

    await api.post("/queues", json={"name": "q", "visibility_timeout": 30})
    # enqueue: good ones
    await call("/queues/q/messages", {"payload": {"n": 1}})
    await call("/queues/q/messages", {"payload": "x", "priority": -3, "group": "g", "headers": {"a": "b"}})
    await call("/queues/q/messages", {"payload": 1, "dedup_key": "k"})
    await call("/queues/q/messages", {"payload": 2, "dedup_key": "k"})  # the duplicate
    await call("/queues/q/messages", {"payload": [1, 2], "delay": 0.5, "ttl": 60})
    await call("/queues/q/messages", {"payload": None}, ctype="application/json; charset=utf-8")
    # enqueue: bad ones
    await call("/queues/q/messages", {"payload": 1, "extra": True})
    await call("/queues/q/messages", {"payload": 1, "priority": "1"})
    await call("/queues/q/messages", {"priority": 1})
    await call("/queues/q/messages", raw=b'{"payload": NaN}')
    await call("/queues/q/messages", raw=b'{"payload": 1')
    await call("/queues/q/messages", raw=b"")
    await call("/queues/q/messages", raw=b'{"payload": ' + DEEP.encode() + b"}")
    await call("/queues/q/messages", raw=b'{"payload": 1}', ctype="text/plain")
    await call("/queues/q/messages", raw=b'{"payload": 1}', ctype=None)
    await call("/queues/q/messages", {"payload": 1, "headers": {"a": 1}})
    await call("/queues/q/messages", {"payload": 1, "depends_on": [{"id": 999999}]})
    await call("/queues/nope/messages", {"payload": 1})
    await call("/queues/q/messages", raw=b"[]")
    # dequeue
    r = await call("/queues/q/dequeue", raw=b"")
    first = r.json()["messages"][0]
    await call("/queues/q/dequeue", {})
    r = await call("/queues/q/dequeue", {"max": 2, "visibility_timeout": 10})
    two = r.json()["messages"]
    await call("/queues/q/dequeue", {"max": 0})
    await call("/queues/q/dequeue", {"max": 1, "wait": -1})
    await call("/queues/q/dequeue", raw=b"null")
    await call("/queues/nope/dequeue", {})
    await call("/queues/q/dequeue", {"max": 1, "wait": 0.05})  # a short long poll that finds nothing
    # ack one
    await call(f"/queues/q/messages/{first['id']}/ack", {"lease_token": first["lease_token"], "result": {"ok": 1}})
    await call(f"/queues/q/messages/{first['id']}/ack", {"lease_token": first["lease_token"]})  # again: 409
    await call(f"/queues/q/messages/{two[0]['id']}/ack", {"lease_token": "wrong"})
    await call("/queues/q/messages/424242/ack", {"lease_token": "t"})
    await call(f"/queues/q/messages/{two[0]['id']}/ack", {})
    await call(f"/queues/q/messages/{two[0]['id']}/ack", {"lease_token": ""})
    await call("/queues/q/messages/99999999999999999999/ack", {"lease_token": "t"})
    await call("/queues/nope/messages/1/ack", {"lease_token": "t"})
    # ack many
    items = [{"id": m["id"], "lease_token": m["lease_token"]} for m in two]
    await call("/queues/q/ack", {"items": [*items, {"id": 424242, "lease_token": "t"}]})
    await call("/queues/q/ack", {"items": []})
    await call("/queues/q/ack", {"items": [{"id": "1", "lease_token": "t"}]})
    await call("/queues/nope/ack", {"items": [{"id": 1, "lease_token": "t"}]})
    return seen


def run_script(tmp_path, hot: bool, monkeypatch, taken: list | None = None) -> list[tuple]:
    if not hot:
        monkeypatch.setattr(http_hot, "HOT_ROUTES", [])
    elif taken is not None:  # note each request the hot routes answer themselves
        note = http_hot.note_request
        monkeypatch.setattr(http_hot, "note_request", lambda scope: (taken.append(scope["path"]), note(scope)))

    async def main() -> list[tuple]:
        async with in_process(str(tmp_path)) as api:
            return await asyncio.wait_for(script(api), 40)

    try:
        return asyncio.run(main())
    finally:
        monkeypatch.undo()


def test_hot_routes_answer_as_the_fastapi_routes(tmp_path, monkeypatch):
    fastapi = run_script(tmp_path / "fastapi", False, monkeypatch)
    taken: list[str] = []
    hot = run_script(tmp_path / "hot", True, monkeypatch, taken)
    assert len(taken) >= 20  # the good requests (and those refused after parsing) took the hot path
    assert len(hot) == len(fastapi)
    for h, f in zip(hot, fastapi):
        assert h == f
    statuses = {s for _, s, _, _ in hot}
    assert {200, 201, 404, 409, 422} <= statuses  # the script reached every kind of answer


def test_hot_routes_are_the_declared_routes():
    """Each hot route is a POST route FastAPI declares (so the OpenAPI document describes it)."""
    from rankq.server.http_api import build_app

    class NoService:
        def __getattr__(self, name):
            return None

    app = build_app(NoService())  # type: ignore[arg-type]
    paths = app.openapi()["paths"]
    for hot in http_hot.HOT_ROUTES:
        template = hot.template.replace("{id:int}", "{id}")
        assert "post" in paths[template], template
