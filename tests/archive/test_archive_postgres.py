"""Finished messages reach PostgreSQL exactly once, through a database outage and a leader kill."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from serverproc import Cluster, wait_for

from rankq import Client, NewMessage
from rankq.server.archive import row_of

pytestmark = pytest.mark.timeout(300)

TOTAL = 50_000


def test_rows_hold_what_sql_users_need():
    rec = {
        "archive_seq": 7,
        "queue": "q",
        "id": 42,
        "state": "acked",
        "payload": '{"a": "\\u0000"}',
        "headers": {"h": "v"},
        "dedup_key": None,
        "last_error": None,
        "priority": 1,
        "group": "g",
        "deliveries": 2,
        "enqueued_at": 1_000,
        "finished_at": 2_000,
        "result": {"ok": True},
    }
    row = row_of("grp", rec)
    assert row[:4] == ("grp", "q", 42, "acked")
    assert row[4] is None and row[5] == '{"a": "\\u0000"}'  # jsonb cannot hold \u0000: kept as text
    assert row[13] == '{"ok": true}' and row[16] == 7
    assert row_of("grp", {**rec, "payload": b"\x00raw"})[6] == b"\x00raw"


def _urls(group: Cluster) -> str:
    return ",".join(n.url for n in group.nodes)


def _archive_status(group: Cluster) -> dict:
    leader = group.leader()
    return httpx.get(leader.url + "/api/v1/archive", timeout=5).json()


def test_every_finished_message_is_archived_once_through_outage_and_failover(tmp_path, postgres):
    group = Cluster(str(tmp_path / "g"), 3)
    for node in group.nodes:
        node.extra += ["--archive-dsn", postgres.dsn, "--archive-group", "orders"]
    group.start()
    try:
        with Client(_urls(group)) as rq:
            rq.create_queue("jobs", archive=True, max_deliveries=0, visibility_timeout=3)
            rq.create_queue("plain")  # archive off: nothing of it reaches the database
            for start in range(0, TOTAL, 1000):
                rq.enqueue_batch(
                    "jobs",
                    [NewMessage({"n": i}, priority=1 + i % 3, dedup_key=f"k{i}") for i in range(start, start + 1000)],
                )
            rq.enqueue("plain", "not archived")
            [m] = rq.dequeue("plain")
            rq.ack(m)

        acked: set[int] = set()
        stop = threading.Event()
        failures: list[Exception] = []

        def consumer() -> None:
            with Client(_urls(group), timeout=5) as c:
                while not stop.is_set():
                    try:
                        batch = c.dequeue("jobs", max=250, wait=1)
                        if not batch:
                            continue
                        for outcome in c.ack_batch([(m, {"done": True}) for m in batch]):
                            if outcome.ok:
                                acked.add(outcome.id)
                    except Exception as err:  # noqa: BLE001 - failover: leased messages come back
                        failures.append(err)
                        time.sleep(0.2)

        threads = [threading.Thread(target=consumer, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        wait_for(lambda: len(acked) > TOTAL // 5, 60, "a fifth acked")
        postgres.stop()  # the store goes away: the queue goes on
        wait_for(lambda: len(acked) > TOTAL // 2, 60, "half acked while PostgreSQL is down")
        assert _archive_status(group)["errors"] > 0
        postgres.start()
        wait_for(lambda: len(acked) > TOTAL * 0.6, 60, "more acked after PostgreSQL is back")
        old_leader = group.leader()
        old_leader.kill9()
        wait_for(lambda: len(acked) > TOTAL * 0.8, 90, "acks under the new leader")
        old_leader.start_async()

        def all_finished() -> bool:
            # The group's count, not the consumers' own: an ack committed just before the leader
            # died may have answered the consumer with an error (its retry then finds it done).
            with Client(_urls(group), timeout=5) as c:
                return c.get_queue("jobs").counts.acked_retained == TOTAL

        wait_for(all_finished, 120, "every message acked")
        stop.set()
        for t in threads:
            t.join(15)

        wait_for(lambda: _archive_status(group)["pending"] == 0, 60, "the outbox to drain")
        rows = postgres.query(
            "SELECT queue, message_id, state, result, payload, deliveries >= 1 "
            "FROM rankq_messages WHERE group_name = 'orders'"
        )
        ids = [r[1] for r in rows]
        assert len(ids) == len(set(ids)) == TOTAL, "each finished message exactly once"
        assert acked <= set(ids), "every ack a consumer saw succeed is archived"
        assert {(r[0], r[2], str(r[3])) for r in rows} == {("jobs", "acked", "{'done': True}")}
        assert all(r[5] for r in rows) and {r[4]["n"] for r in rows} == set(range(TOTAL))
        status = _archive_status(group)
        assert status["dropped"] == 0 and status["enabled"] is True
        assert postgres.query("SELECT max(version) FROM rankq_schema") == [(1,)]
    finally:
        group.stop()
