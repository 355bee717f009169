"""The HTTP API against a real server process on loopback."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter

import httpx
import pytest
from serverproc import wait_for


@pytest.fixture(scope="module")
def api(shared_server):
    with httpx.Client(base_url=shared_server.url + "/api/v1", timeout=30) as client:
        yield client


def make_queue(api, name, **settings):
    r = api.post("/queues", json={"name": name, **settings})
    assert r.status_code == 201, r.text
    return r.json()


def send(api, q, payload, **kw):
    r = api.post(f"/queues/{q}/messages", json={"payload": payload, **kw})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def take(api, q, **kw):
    r = api.post(f"/queues/{q}/dequeue", json=kw)
    assert r.status_code == 200, r.text
    return r.json()["messages"]


def test_queue_lifecycle_and_live_settings(api):
    info = make_queue(api, "life", policy="weighted", visibility_timeout=5)
    assert info["settings"]["policy"] == "weighted"
    assert info["settings"]["visibility_timeout"] == 5
    assert info["counts"] == {
        "ready": 0,
        "delayed": 0,
        "leased": 0,
        "dead": 0,
        "acked_retained": 0,
        "backlog": 0,
        "waiting": 0,
    }
    assert api.post("/queues", json={"name": "life"}).status_code == 409
    assert "life" in [q["name"] for q in api.get("/queues").json()["queues"]]
    r = api.patch("/queues/life", json={"max_length": 10, "fair_groups": True})
    assert r.status_code == 200 and r.json()["settings"]["max_length"] == 10
    assert r.json()["settings"]["policy"] == "weighted"  # untouched fields keep their values
    r = api.patch("/queues/life", json={"max_length": None})
    assert r.json()["settings"]["max_length"] is None
    assert api.delete("/queues/life").status_code == 204
    assert api.get("/queues/life").status_code == 404


def test_enqueue_dequeue_ack_with_result(api):
    make_queue(api, "basic")
    mid = send(api, "basic", {"job": 1}, priority=2, headers={"trace": "t1"})
    status = api.get(f"/queues/basic/messages/{mid}").json()
    assert status["state"] == "ready" and status["payload"] == {"job": 1} and status["headers"] == {"trace": "t1"}
    [m] = take(api, "basic", max=10)
    assert m["id"] == mid and m["payload"] == {"job": 1} and m["deliveries"] == 1
    assert api.get("/queues/basic").json()["counts"]["leased"] == 1
    r = api.post(f"/queues/basic/messages/{mid}/ack", json={"lease_token": m["lease_token"], "result": {"ok": True}})
    assert r.status_code == 200, r.text
    status = api.get(f"/queues/basic/messages/{mid}").json()
    assert status["state"] == "acked" and status["result"] == {"ok": True}


def test_stale_lease_token_is_rejected_after_redelivery(api):
    make_queue(api, "stale", visibility_timeout=0.3)
    mid = send(api, "stale", "x")
    [first] = take(api, "stale")
    # The lease expires and the message comes back: a long poll picks it up again.
    [second] = take(api, "stale", wait=5)
    assert second["id"] == mid and second["deliveries"] == 2
    r = api.post(f"/queues/stale/messages/{mid}/ack", json={"lease_token": first["lease_token"]})
    assert r.status_code == 409 and "stale" in r.json()["detail"]
    r = api.post(f"/queues/stale/messages/{mid}/ack", json={"lease_token": "0" * 24})
    assert r.status_code == 409
    assert api.post(f"/queues/stale/messages/{mid}/ack", json={"lease_token": second["lease_token"]}).status_code == 200


def test_nack_extend_and_dead_letter_redrive(api):
    make_queue(api, "dlq", max_deliveries=2)
    mid = send(api, "dlq", "job")
    [m] = take(api, "dlq")
    r = api.post(f"/queues/dlq/messages/{mid}/extend", json={"lease_token": m["lease_token"], "visibility_timeout": 60})
    assert r.status_code == 200 and r.json()["lease_expires_at"] > m["lease_expires_at"]
    r = api.post(f"/queues/dlq/messages/{mid}/nack", json={"lease_token": m["lease_token"], "delay": 0, "error": "e1"})
    assert r.json()["state"] == "ready"
    [m] = take(api, "dlq")
    r = api.post(f"/queues/dlq/messages/{mid}/nack", json={"lease_token": m["lease_token"], "error": "e2"})
    assert r.json()["state"] == "dead"
    page = api.get("/queues/dlq/dlq").json()
    assert [x["id"] for x in page["messages"]] == [mid] and page["messages"][0]["last_error"] == "e2"
    r = api.post("/queues/dlq/dlq/redrive", json={"ids": [mid, 424242]})
    assert r.json() == {"redriven": [mid], "not_found": [424242]}
    [m] = take(api, "dlq")
    assert m["id"] == mid and m["deliveries"] == 1


def test_nack_without_delay_backs_off(api):
    make_queue(api, "backoff", retry_base=2, max_deliveries=0)
    mid = send(api, "backoff", "job")
    [m] = take(api, "backoff")
    r = api.post(f"/queues/backoff/messages/{mid}/nack", json={"lease_token": m["lease_token"]})
    assert r.json()["state"] == "delayed"
    assert api.get(f"/queues/backoff/messages/{mid}").json()["state"] == "delayed"
    assert take(api, "backoff") == []


def test_batches_dedup_priority_change_and_cancel(api):
    make_queue(api, "batch")
    r = api.post(
        "/queues/batch/messages/batch",
        json={"messages": [{"payload": i, "priority": 5} for i in range(5)] + [{"payload": "d", "dedup_key": "k"}]},
    )
    assert r.status_code == 201
    ids = [x["id"] for x in r.json()["results"]]
    again = api.post("/queues/batch/messages", json={"payload": "d", "dedup_key": "k"}).json()
    assert again["id"] == ids[-1] and again["duplicate"] is True
    r = api.put(f"/queues/batch/messages/{ids[3]}/priority", json={"priority": 0})
    assert r.status_code == 200 and r.json()["priority"] == 0
    r = api.delete(f"/queues/batch/messages/{ids[4]}")
    assert r.status_code == 200 and r.json()["was"] == "ready"
    got = take(api, "batch", max=10)
    assert got[0]["id"] == ids[3]
    assert ids[4] not in [m["id"] for m in got]
    items = [{"id": m["id"], "lease_token": m["lease_token"]} for m in got]
    items.append({"id": got[0]["id"], "lease_token": got[0]["lease_token"]})  # a second ack of the same message
    r = api.post("/queues/batch/ack", json={"items": items})
    results = r.json()["results"]
    assert [x["ok"] for x in results] == [True] * len(got) + [False]
    assert results[-1]["status"] == 409


def test_long_poll_wakes_on_enqueue_and_ends_empty(api, shared_server):
    make_queue(api, "poll")
    t0 = time.monotonic()
    assert take(api, "poll", wait=0.5) == []
    assert 0.45 <= time.monotonic() - t0 < 10  # it waited, then ended (a loaded machine may be slow to answer)

    got: list = []
    waiting = threading.Event()

    def consumer():
        with httpx.Client(base_url=shared_server.url + "/api/v1", timeout=30) as c:
            waiting.set()
            got.extend(c.post("/queues/poll/dequeue", json={"wait": 20}).json()["messages"])
            got.append(time.monotonic())

    th = threading.Thread(target=consumer)
    th.start()
    waiting.wait(5)
    # Give the request time to reach the server and park (observable in the server's log).
    wait_for(lambda: shared_server.logs().count("/api/v1/queues/poll/dequeue") >= 2, 15, "long poll to arrive")
    sent_at = time.monotonic()
    mid = send(api, "poll", "wake up")
    th.join(30)
    assert got and got[0]["id"] == mid
    # Woken by the write, not by the end of its 20 s wait (the bound leaves room for a loaded machine).
    assert got[-1] - sent_at < 10, "long poll must return as soon as a message is ready"


def test_delayed_message_wakes_long_poll(api):
    make_queue(api, "delay")
    mid = send(api, "delay", "later", delay=0.4)
    assert api.get(f"/queues/delay/messages/{mid}").json()["state"] == "delayed"
    t0 = time.monotonic()
    [m] = take(api, "delay", wait=20)
    # Woken when the delay ends, not by the end of its 20 s wait (room for a loaded machine).
    assert m["id"] == mid and 0.3 <= time.monotonic() - t0 < 10


def test_weighted_shares_over_http(api):
    make_queue(api, "shares", policy="weighted")
    for p in (1, 2, 3, 4, 5):
        r = api.post("/queues/shares/messages/batch", json={"messages": [{"payload": p, "priority": p}] * 400})
        assert r.status_code == 201
    got = take(api, "shares", max=1000)
    assert Counter(m["priority"] for m in got) == {1: 300, 2: 250, 3: 200, 4: 150, 5: 100}


def test_client_mistakes_get_clear_4xx_and_lose_nothing(api):
    make_queue(api, "errs", max_length=2, max_payload_bytes=64, policy="weighted")
    send(api, "errs", "kept")
    cases = [
        (api.post("/queues/nope/messages", json={"payload": 1}), 404),
        (api.post("/queues/errs/messages", json={"payload": "x" * 100}), 413),
        (api.post("/queues/errs/messages", json={"payload": 1, "priority": 42}), 422),
        (api.post("/queues/errs/messages", json={"payload": 1, "bogus": 1}), 422),
        (api.post("/queues/errs/messages", json={"priority": 1}), 422),
        (api.post("/queues/errs/messages", content=b"{not json", headers={"content-type": "application/json"}), 422),
        (api.post("/queues/errs/messages", json={"payload": 1, "delay": -1}), 422),
        (api.post("/queues/errs/messages/batch", json={"messages": []}), 422),
        (api.post("/queues/errs/messages/batch", json={"messages": [{"payload": 1}] * 2}), 429),
        (api.post("/queues/errs/dequeue", json={"max": 0}), 422),
        (api.post("/queues/errs/dequeue", json={"wait": 99}), 422),
        (api.post("/queues/errs/messages/999999/ack", json={"lease_token": "x"}), 404),
        (api.get("/queues/errs/messages/notanumber"), 404),  # a message id is digits; this path names none
        (api.post("/queues", json={"name": "bad name!"}), 422),
        (api.post("/queues", json={"name": "q2", "policy": "lifo"}), 422),
        (api.post("/queues", json={"name": "q3", "policy": "weighted", "weights": {"1": 0}}), 422),
        (api.patch("/queues/errs", json={"visibility_timeout": 0}), 422),
    ]
    for r, status in cases:
        assert r.status_code == status, (r.request.url, r.text)
        body = r.json()
        assert isinstance(body["detail"], str) and body["detail"]
    counts = api.get("/queues/errs").json()["counts"]
    assert counts["ready"] == 1, "a refused request must not change the queue"
    send(api, "errs", "second")
    r = api.post("/queues/errs/messages", json={"payload": 3})
    assert r.status_code == 429 and "full" in r.json()["detail"]


def test_health_metrics_docs(api, shared_server):
    base = shared_server.url
    assert httpx.get(base + "/healthz").json() == {"status": "ok"}
    assert httpx.get(base + "/readyz").status_code == 200
    metrics = httpx.get(base + "/metrics").text
    assert "rankq_queue_messages" in metrics and "rankq_raft_leader 1.0" in metrics
    assert httpx.get(base + "/docs").status_code == 200
    paths = httpx.get(base + "/openapi.json").json()["paths"]
    assert "/api/v1/queues/{name}/dequeue" in paths


def test_request_and_error_log_lines(api, shared_server):
    api.get("/queues/no-such-queue")
    text = shared_server.logs()
    line = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \[INFO\] /api/v1/queues/\{name\}: Received GET request for /api/v1/queues/no-such-queue from IP: 127\.0\.0\.1"
    assert re.search(line, text)
    assert re.search(r"\[ERROR\] /api/v1/queues/\{name\}: queue 'no-such-queue' not found", text)


def test_json_log_format(server_factory):
    srv = server_factory("jsonlog", extra=["--log-format", "json"])
    httpx.get(srv.url + "/api/v1/queues")
    srv.stop()
    records = [json.loads(line) for line in srv.logs().splitlines() if line.startswith("{")]
    req = [r for r in records if r.get("method") == "GET" and r.get("route") == "/api/v1/queues"]
    assert req and req[0]["client_ip"] == "127.0.0.1" and req[0]["trace_id"]
