"""Backups: every record survives a JSON round trip and a restore through Restore commands."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, settings
from test_engine_properties import EngineMachine

from rankq.engine import Conflict, Engine, Invalid
from rankq.engine import commands as c
from rankq.engine.message import LEASED, READY, WAITING


def restore_view(engine: Engine) -> dict:
    """The state a restore must reproduce: leases are gone (leased comes back ready)."""
    out: dict = {}
    for name, q in engine.queues.items():
        out[name] = (
            q.config.as_dict(),
            q.secret,
            q.created_at,
            sorted(
                (
                    m.id,
                    READY if m.state == LEASED else m.state,
                    m.payload,
                    m.priority,
                    m.group,
                    m.deliveries,
                    None if m.state in (READY, LEASED) else m.due,
                    m.enqueued_at,
                    m.extra,
                )
                for m in q.messages.values()
            ),
            sorted((m.id, m.payload, m.deliveries, m.due, m.extra) for m in q.dead.values()),
            sorted(q.acked.items()),
            sorted(q.dedup.items()),
            sorted(q.cancelled.items()),
            q.redrive_status(),
            # messages whose expiry nothing would notice (none: a leased one is looked at when its lease ends)
            sorted(
                m.id
                for m in q.messages.values()
                if m.get_extra("expires_at") is not None
                and m.state != LEASED
                and (m.get_extra("expires_at"), m.id) not in q.expiries
            ),
        )
    # who waits for whom, counting only dependents still waiting (the index drops the others lazily)
    out["waiters"] = sorted(
        (dep, who)
        for dep, whos in engine.links.waiters.items()
        for who in whos
        if who[0] in engine.queues
        and (m := engine.queues[who[0]].messages.get(who[1])) is not None
        and m.state == WAITING
    )
    return out


def round_trip(engine: Engine, chunk: int = 7, now: int | None = None) -> Engine:
    lines = [json.dumps(r) for r in engine.export()]
    records = [json.loads(line) for line in lines]
    fresh = Engine()
    at = engine.now if now is None else now
    for n, i in enumerate(range(0, len(records), chunk)):
        fresh.apply(c.Restore("r1", n, tuple(records[i : i + chunk])), at)
        if n == 0:  # a chunk sent twice is applied once
            assert fresh.apply(c.Restore("r1", 0, tuple(records[i : i + chunk])), at) == {
                "applied": 0,
                "duplicate": True,
            }
    return fresh


def test_every_kind_of_state_comes_back_lease_free():
    e = Engine()
    t = 1_000_000
    e.apply(c.CreateQueue("jobs", {"policy": "weighted", "max_deliveries": 2, "fair_groups": True}, b"s" * 16), t)
    e.apply(c.CreateQueue("raw", {}, b"r" * 16), t)
    ids = [
        i
        for i, _ in e.apply(
            c.Enqueue(
                "jobs",
                (
                    c.NewMessage('{"a": 1}', priority=1, group="t1", headers={"h": "v"}, dedup_key="k1"),
                    c.NewMessage('"later"', priority=2, delay_ms=60_000),
                    c.NewMessage("[1, 2]", priority=3, group="t2"),
                    c.NewMessage('"to ack"', priority=1),
                    c.NewMessage('"to kill"', priority=1),
                ),
            ),
            t,
        )
    ]
    e.apply(c.Enqueue("raw", (c.NewMessage(b"\x00\xffbytes"),)), t)
    leased = e.apply(c.Dequeue("jobs", 3), t + 1)
    by_payload = {d.payload: d for d in leased}
    e.apply(
        c.Ack("jobs", (c.AckItem(by_payload['"to ack"'].id, by_payload['"to ack"'].lease_token, {"ok": 1}),)), t + 2
    )
    kill = by_payload.get('"to kill"') or by_payload['{"a": 1}']
    e.apply(c.Nack("jobs", kill.id, kill.lease_token, 0, "boom"), t + 3)
    again = [d for d in e.apply(c.Dequeue("jobs", 5), t + 4) if d.id == kill.id]
    e.apply(c.Nack("jobs", kill.id, again[0].lease_token, 0, "boom twice"), t + 5)
    before = restore_view(e)

    restored = round_trip(e)
    assert restore_view(restored) == before
    assert restored.queues["jobs"].counts()["leased"] == 0
    assert restored.queues["jobs"].counts()["dead"] == 1
    assert restored.queues["raw"].messages[max(restored.queues["raw"].messages)].payload == b"\x00\xffbytes"
    # Dedup keys hold, new ids never collide, and every restored message can be delivered and acked.
    assert restored.apply(c.Enqueue("jobs", (c.NewMessage('"x"', dedup_key="k1"),)), t + 6) == [(ids[0], True)]
    [(new_id, _)] = restored.apply(c.Enqueue("jobs", (c.NewMessage('"new"', priority=1),)), t + 6)
    assert new_id > max(ids)
    got = restored.apply(c.Dequeue("jobs", 100), t + 7)
    assert {d.id for d in got} >= {d.id for d in leased if d.id not in (by_payload['"to ack"'].id, kill.id)}
    assert all(
        r is None for r in restored.apply(c.Ack("jobs", tuple(c.AckItem(d.id, d.lease_token) for d in got)), t + 8)
    )
    # Delayed messages keep their time.
    assert restored.next_deadline() is not None


def test_restore_refuses_an_existing_queue_and_garbage():
    e = Engine()
    e.apply(c.CreateQueue("jobs", {}, b"s" * 16), 1)
    records = list(e.export())
    target = Engine()
    target.apply(c.CreateQueue("jobs", {}, b"t" * 16), 1)
    with pytest.raises(Conflict):
        target.apply(c.Restore("r", 0, tuple(records)), 2)
    header = records[0]
    with pytest.raises(Invalid):
        Engine().apply(c.Restore("r", 0, ({"kind": "header", "format": "other", "version": 1, "seq": 0},)), 1)
    with pytest.raises(Invalid):
        Engine().apply(c.Restore("r", 1, (header,)), 1)  # chunk 0 first
    for bad in (
        {"kind": "message", "queue": "nope", "id": 1},
        {"kind": "queue", "name": "q", "settings": {"max_deliveries": -1}, "secret": "", "created_at": 0},
        {"kind": "surprise"},
        "not an object",
    ):
        with pytest.raises(Invalid):
            Engine().apply(c.Restore("r", 0, (header, bad)), 1)


class BackupMachine(EngineMachine):
    """The engine property machine, ending each run with a backup and restore of its state."""

    def teardown(self):
        super().teardown()
        restored = round_trip(self.engine, chunk=5)
        assert restore_view(restored) == restore_view(self.engine)
        # New messages get ids no restored message or result has.
        q = restored.queues["q"]
        taken = set(q.messages) | set(q.dead) | set(q.acked) | {mid for mid, _ in q.dedup.values()}
        [(new_id, dup)] = restored.apply(c.Enqueue("q", (c.NewMessage('"after"'),)), self.engine.now)
        assert not dup and new_id not in taken and new_id > max(taken, default=0)


BackupMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestBackupRoundTrip = BackupMachine.TestCase
