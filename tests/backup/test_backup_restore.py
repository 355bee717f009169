"""Backup of a running 3-node group under write load, restored into a new group."""

from __future__ import annotations

import gzip
import json
import threading
import time

import pytest
from serverproc import Cluster, wait_for

from rankq import Client
from rankq.client import ConflictError

pytestmark = pytest.mark.timeout(240)


def urls(group: Cluster) -> str:
    return ",".join(n.url for n in group.nodes)


def test_backup_under_load_restores_every_acknowledged_message_once(tmp_path):
    source = Cluster(str(tmp_path / "source"), 3).start()
    target = None
    try:
        acked: dict[int, tuple[float, str]] = {}  # id -> (when acknowledged, payload)
        with Client(urls(source)) as rq:
            rq.create_queue("jobs", policy="weighted", max_deliveries=2, fair_groups=True)
            rq.create_queue("results", retention=3600)
            for i in range(300):
                sent = rq.enqueue(
                    "jobs", {"n": i}, priority=1 + i % 5, group=f"t{i % 3}", dedup_key=f"k{i}", headers={"i": str(i)}
                )
                acked[sent.id] = (time.monotonic(), json.dumps({"n": i}))
            leased = rq.dequeue("jobs", max=20)  # leased at backup time: must come back ready
            dead = rq.dequeue("jobs", max=1)[0]
            rq.nack(dead, error="first")
            dead = wait_for(lambda: [m for m in rq.dequeue("jobs", max=50) if m.id == dead.id], 10, "redelivery")[0]
            rq.nack(dead, error="second: dead now")
            res = rq.enqueue("results", "r")
            [m] = rq.dequeue("results")
            rq.ack(m, result={"answer": 42})

        stop = threading.Event()
        errors: list[Exception] = []

        def writer() -> None:
            with Client(urls(source)) as w:
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        sent = w.enqueue("jobs", {"w": n}, priority=3, dedup_key=f"w{n}")
                        acked[sent.id] = (time.monotonic(), json.dumps({"w": n}))
                    except Exception as err:  # noqa: BLE001 - counted, then asserted empty
                        errors.append(err)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        wait_for(lambda: len(acked) > 400, 30, "writes under way")
        started = time.monotonic()
        path = str(tmp_path / "group.jsonl.gz")
        with Client(urls(source)) as rq:
            summary = rq.backup(path)
        wait_for(lambda: len(acked) > summary.messages + 50, 30, "writes after the backup")
        stop.set()
        thread.join(20)
        assert not errors, errors[:3]
        before = {mid for mid, (at, _) in acked.items() if at < started}

        with gzip.open(path, "rt") as fh:
            records = [json.loads(line) for line in fh]
        assert records[0]["kind"] == "header" and records[-1] == {"kind": "end"}
        assert summary.queues == 2

        target = Cluster(str(tmp_path / "target"), 3).start()
        with Client(urls(target)) as rq:
            restored = rq.restore(path)
            assert restored.records == summary.records
            # A second restore of the same file is refused whole: the queues exist.
            with pytest.raises(ConflictError):
                rq.restore(path)
            got: dict[int, str] = {}
            while True:
                batch = rq.dequeue("jobs", max=1000)
                if not batch:
                    break
                for m in batch:
                    assert m.id not in got, f"message {m.id} delivered twice"
                    got[m.id] = json.dumps(m.payload)
                rq.ack_batch(batch)
            dlq = rq.dead_letters("jobs")
            status = rq.get_message("results", res.id)
            info = rq.get_queue("jobs")
            again = rq.enqueue("jobs", {"n": 0}, priority=1, dedup_key="k0")
        assert before <= set(got) | {d.id for d in dlq}, "an acknowledged message is missing"
        assert set(got) <= set(acked)
        assert all(got[mid] == acked[mid][1] for mid in got)
        assert {m.id for m in leased} <= set(got)  # leases did not survive: delivered again
        assert [d.id for d in dlq] == [dead.id] and dlq[0].last_error == "second: dead now"
        assert (status.state, status.result) == ("acked", {"answer": 42})
        assert info.settings["policy"] == "weighted" and info.settings["fair_groups"] is True
        assert again.duplicate  # dedup keys came along

        # Every member of the new group holds the same state.
        def member_counts() -> set:
            out = set()
            for n in target.nodes:
                with Client(n.url) as one:
                    c = one.get_queue("jobs").counts
                    out.add((c.ready, c.leased, c.dead))
            return out

        wait_for(lambda: len(member_counts()) == 1, 10, "members to agree")
    finally:
        source.stop()
        if target is not None:
            target.stop()


def test_backup_is_refused_by_a_follower_and_a_cut_file_is_refused(tmp_path):
    group = Cluster(str(tmp_path / "g"), 3).start()
    try:
        follower = group.followers()[0]
        with Client(follower.url, retries=0) as rq:
            from rankq.client import UnavailableError

            with pytest.raises(UnavailableError, match="leader"):
                rq.backup(str(tmp_path / "nope.gz"))
        path = str(tmp_path / "full.gz")
        with Client(urls(group)) as rq:
            rq.create_queue("q")
            rq.enqueue("q", "x")
            rq.backup(path)
        with gzip.open(path, "rt") as fh:
            lines = fh.readlines()
        cut = str(tmp_path / "cut.gz")
        with gzip.open(cut, "wt") as fh:
            fh.writelines(lines[:-1])
        from rankq.client.backup import BackupFileError

        with Client(urls(group)) as rq, pytest.raises(BackupFileError, match="incomplete"):
            rq.restore(cut)
    finally:
        group.stop()
