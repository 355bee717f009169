"""The archive outbox: which messages are archived, confirmation, the bound, determinism."""

from __future__ import annotations

import pickle

from rankq.engine import Engine
from rankq.engine import archive as archive_mod
from rankq.engine import commands as c


def _setup(archive: bool = True) -> Engine:
    e = Engine()
    e.apply(c.CreateQueue("q", {"archive": archive, "max_deliveries": 1}, b"k" * 16), 1_000)
    return e


def test_finished_messages_are_archived_with_what_a_report_needs():
    e = _setup()
    e.apply(
        c.Enqueue(
            "q",
            (
                c.NewMessage('{"a": 1}', priority=2, group="g", headers={"h": "v"}, dedup_key="d"),
                c.NewMessage('"dies"'),
                c.NewMessage('"cancelled"'),
            ),
        ),
        1_000,
    )
    got = {d.payload: d for d in e.apply(c.Dequeue("q", 2), 1_001)}
    e.apply(c.Ack("q", (c.AckItem(got['{"a": 1}'].id, got['{"a": 1}'].lease_token, {"ok": True}),)), 1_002)
    e.apply(c.Nack("q", got['"dies"'].id, got['"dies"'].lease_token, 0, "boom"), 1_003)
    [cancel_id] = [m.id for m in e.queues["q"].messages.values()]
    e.apply(c.Cancel("q", cancel_id), 1_004)
    recs = e.archive.pending(0, 10)
    assert [(r["state"], r["payload"]) for r in recs] == [
        ("acked", '{"a": 1}'),
        ("dead", '"dies"'),
        ("cancelled", '"cancelled"'),
    ]
    acked = recs[0]
    assert (
        acked["result"],
        acked["priority"],
        acked["group"],
        acked["headers"],
        acked["dedup_key"],
        acked["deliveries"],
        acked["enqueued_at"],
        acked["finished_at"],
    ) == ({"ok": True}, 2, "g", {"h": "v"}, "d", 1, 1_000, 1_002)
    assert recs[1]["last_error"] == "boom"
    assert [r["archive_seq"] for r in recs] == [1, 2, 3]

    assert e.apply(c.ArchiveDone(2), 1_005) == 2
    assert [r["archive_seq"] for r in e.archive.pending(0, 10)] == [3]
    assert e.archive.status()["confirmed"] == 2


def test_queues_without_archive_keep_nothing():
    e = _setup(archive=False)
    e.apply(c.Enqueue("q", (c.NewMessage('"x"'),)), 1_000)
    [d] = e.apply(c.Dequeue("q"), 1_001)
    e.apply(c.Ack("q", (c.AckItem(d.id, d.lease_token),)), 1_002)
    assert e.archive.pending(0, 10) == []
    e.apply(c.UpdateQueue("q", {"archive": True}), 1_003)  # live change
    e.apply(c.Enqueue("q", (c.NewMessage('"y"'),)), 1_004)
    [d] = e.apply(c.Dequeue("q"), 1_005)
    e.apply(c.Ack("q", (c.AckItem(d.id, d.lease_token),)), 1_006)
    assert [r["payload"] for r in e.archive.pending(0, 10)] == ['"y"']


def test_the_outbox_is_bounded_and_counts_what_it_dropped(monkeypatch):
    monkeypatch.setattr(archive_mod, "MAX_PENDING", 5)
    e = _setup()
    e.apply(c.Enqueue("q", tuple(c.NewMessage(f'"{i}"') for i in range(8))), 1_000)
    for d in e.apply(c.Dequeue("q", 8), 1_001):
        e.apply(c.Ack("q", (c.AckItem(d.id, d.lease_token),)), 1_002)
    st = e.archive.status()
    assert (st["pending"], st["dropped"], st["last"]) == (5, 3, 8)
    assert [r["payload"] for r in e.archive.pending(0, 10)] == ['"3"', '"4"', '"5"', '"6"', '"7"']


def test_replay_and_snapshot_keep_the_same_outbox():
    log = []
    e = _setup()
    log.append((c.Enqueue("q", (c.NewMessage('"a"'), c.NewMessage('"b"'))), 1_000))
    for cmd, at in log:
        e.apply(cmd, at)
    for d in e.apply(c.Dequeue("q", 2), 1_001):
        e.apply(c.Ack("q", (c.AckItem(d.id, d.lease_token, d.id),)), 1_002)
    copy = pickle.loads(pickle.dumps(e))
    assert copy.archive.pending(0, 10) == e.archive.pending(0, 10)
    assert copy.queues["q"].outbox is copy.archive  # still one outbox after a snapshot
