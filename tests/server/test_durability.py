"""What an acknowledged write promises: it survives kill -9 and restart on the same data dir."""

from __future__ import annotations

import os
import threading

import httpx
from serverproc import wait_for


def client(srv) -> httpx.Client:
    return httpx.Client(base_url=srv.url + "/api/v1", timeout=30)


def test_state_survives_kill_9(server_factory):
    srv = server_factory("durable")
    with client(srv) as api:
        assert (
            api.post("/queues", json={"name": "jobs", "visibility_timeout": 120, "policy": "weighted"}).status_code
            == 201
        )
        assert api.post("/queues", json={"name": "short", "max_deliveries": 1}).status_code == 201
        r = api.post(
            "/queues/jobs/messages/batch",
            json={"messages": [{"payload": {"n": i}, "priority": 1 + i % 5} for i in range(500)]},
        )
        assert r.status_code == 201
        dedup = api.post("/queues/jobs/messages", json={"payload": "once", "dedup_key": "order-7"}).json()["id"]
        delayed = api.post("/queues/jobs/messages", json={"payload": "later", "delay": 3600}).json()["id"]
        leased = api.post("/queues/jobs/dequeue", json={"max": 20}).json()["messages"]
        for m in leased[:10]:
            assert (
                api.post(
                    f"/queues/jobs/messages/{m['id']}/ack", json={"lease_token": m["lease_token"], "result": m["id"]}
                ).status_code
                == 200
            )
        still_leased = leased[10:]
        api.post("/queues/short/messages", json={"payload": "doomed"})
        [d] = api.post("/queues/short/dequeue", json={}).json()["messages"]
        assert (
            api.post(
                f"/queues/short/messages/{d['id']}/nack", json={"lease_token": d["lease_token"], "error": "bad"}
            ).json()["state"]
            == "dead"
        )
        before = {q: api.get(f"/queues/{q}").json()["counts"] for q in ("jobs", "short")}

    srv.kill9()
    srv.start()

    with client(srv) as api:
        after = {q: api.get(f"/queues/{q}").json()["counts"] for q in ("jobs", "short")}
        assert after == before
        assert api.get("/queues/jobs").json()["settings"]["policy"] == "weighted"
        # Results of acked messages, delays, dedup keys and dead letters all came back.
        assert api.get(f"/queues/jobs/messages/{leased[0]['id']}").json()["result"] == leased[0]["id"]
        assert api.get(f"/queues/jobs/messages/{delayed}").json()["state"] == "delayed"
        assert api.post("/queues/jobs/messages", json={"payload": "once", "dedup_key": "order-7"}).json() == {
            "id": dedup,
            "seq": dedup,
            "duplicate": True,
        }
        assert api.get("/queues/short/dlq").json()["messages"][0]["last_error"] == "bad"
        # Leases survive too: the holder of a lease from before the crash can still ack.
        m = still_leased[0]
        assert api.get(f"/queues/jobs/messages/{m['id']}").json()["state"] == "leased"
        assert (
            api.post(f"/queues/jobs/messages/{m['id']}/ack", json={"lease_token": m["lease_token"]}).status_code == 200
        )


def test_acknowledged_enqueues_survive_kill_9_under_load(server_factory):
    srv = server_factory("load")
    with client(srv) as api:
        api.post("/queues", json={"name": "load"})
    acked: list[int] = []
    stop = threading.Event()
    lock = threading.Lock()

    def producer(k: int) -> None:
        with client(srv) as api:
            i = 0
            while not stop.is_set():
                try:
                    r = api.post("/queues/load/messages", json={"payload": [k, i]})
                except httpx.HTTPError:
                    return  # the server died mid-request: that write was never acknowledged
                if r.status_code == 201:
                    with lock:
                        acked.append(r.json()["id"])
                i += 1

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: len(acked) >= 300, 30, "300 acknowledged enqueues")
    srv.kill9()
    stop.set()
    for t in threads:
        t.join(10)
    srv.start()
    with client(srv) as api:
        ready = api.get("/queues/load").json()["counts"]["ready"]
        assert ready >= len(acked)
        got = api.post("/queues/load/dequeue", json={"max": 1000}).json()["messages"]
        while len(got) < ready:
            more = api.post("/queues/load/dequeue", json={"max": 1000}).json()["messages"]
            assert more, "fewer messages than counted"
            got += more
        missing = set(acked) - {m["id"] for m in got}
        assert not missing, f"{len(missing)} acknowledged enqueues lost"


def test_snapshot_bounds_the_log_and_restores(server_factory):
    srv = server_factory("snap", extra=["--snapshot-entries", "50"])
    snapshot = os.path.join(srv.data_dir, "raft.snapshot")
    with client(srv) as api:
        api.post("/queues", json={"name": "s"})
        ids = [api.post("/queues/s/messages", json={"payload": i}).json()["id"] for i in range(200)]
    wait_for(lambda: os.path.exists(snapshot), 20, "a snapshot to be written")
    srv.kill9()
    srv.start()
    with client(srv) as api:
        assert api.get("/queues/s").json()["counts"]["ready"] == 200
        got = api.post("/queues/s/dequeue", json={"max": 1000}).json()["messages"]
        assert sorted(m["id"] for m in got) == ids
        assert api.post("/queues/s/messages", json={"payload": "after"}).status_code == 201


def test_a_large_log_is_compacted_by_size(server_factory):
    srv = server_factory("bysize", extra=["--snapshot-mib", "1"])
    snapshot = os.path.join(srv.data_dir, "raft.snapshot")
    with client(srv) as api:
        api.post("/queues", json={"name": "big"})
        for _ in range(15):  # 15 entries of ~100 KiB: far below the entry count, above 1 MiB
            body = {"messages": [{"payload": "x" * 1000}] * 100}
            assert api.post("/queues/big/messages/batch", json=body).status_code == 201
    wait_for(lambda: os.path.exists(snapshot), 20, "a snapshot triggered by log size")
    srv.kill9()
    srv.start()
    with client(srv) as api:
        assert api.get("/queues/big").json()["counts"]["ready"] == 1500
