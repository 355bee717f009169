"""The two corrections to PySyncObj, on a real single-node Raft member."""

from __future__ import annotations

import threading
import time

import pytest
from serverproc import free_port, wait_for

from rankq.engine import commands as c
from rankq.replication import RaftNode, RaftSettings


@pytest.fixture
def node(tmp_path):
    n = RaftNode(RaftSettings(f"127.0.0.1:{free_port()}", data_dir=str(tmp_path)))
    n.start()
    wait_for(n.is_ready, 10, "a single-node leader")
    done = threading.Event()
    n.propose(int(time.time() * 1000), [c.CreateQueue("q", {}, b"k" * 16)], lambda r, e: done.set())
    assert done.wait(5)
    for i in range(10):
        done.clear()
        n.propose(int(time.time() * 1000), [c.Enqueue("q", (c.NewMessage(str(i)),))], lambda r, e: done.set())
        assert done.wait(5)
    yield n
    n.stop()


def entries(n: RaftNode) -> list:
    log = n.syncobj._SyncObj__raftLog
    return [log[i] for i in range(len(log))]


def test_log_is_trimmed_to_a_snapshot_it_already_holds(node):
    with node.lock:
        before = entries(node)
        assert len(before) >= 12
        # A snapshot taken at the 6th entry, whose parent died before dropping the covered log.
        node.syncobj._align_log_to_snapshot((None, before[5], before[4], set()))
        after = entries(node)
    assert after[0] == before[4] and after[1] == before[5]
    assert after == before[4:], "entries after the snapshot must all be kept"


def test_log_is_left_alone_for_a_snapshot_it_does_not_hold(node):
    with node.lock:
        before = entries(node)
        foreign = (b"x", before[5][1], before[5][2] + 7)  # same index, another term
        node.syncobj._align_log_to_snapshot((None, foreign, before[4], set()))
        assert entries(node) == before


def test_overlapping_append_entries_keep_what_the_follower_holds(node):
    with node.lock:
        log = entries(node)
        term = log[-1][2]
        sync = node.syncobj
        # Everything already held, from the sender's own term: answered at our last entry, nothing cut.
        msg = {
            "type": "append_entries",
            "term": term,
            "prevLogIdx": log[2][1],
            "prevLogTerm": log[2][2],
            "entries": log[3:6],
            "commit_index": 0,
        }
        out = sync._trim_known_entries(msg)
        assert out["entries"] == [] and out["prevLogIdx"] == log[-1][1]
        # Partly new: only the new tail is passed on, after our last entry.
        new = (b"n", log[-1][1] + 1, term)
        out = sync._trim_known_entries({**msg, "entries": log[-3:] + [new]})
        assert out["entries"] == [new] and out["prevLogIdx"] == log[-1][1]
        # A real conflict (same index, other term) is left for PySyncObj to truncate.
        clash = (b"c", log[4][1], term + 1)
        out = sync._trim_known_entries({**msg, "entries": [log[3], clash]})
        assert out["entries"] == [log[3], clash] and out["prevLogIdx"] == log[2][1]


def test_a_snapshot_chunk_cannot_commit_a_followers_unverified_tail(node):
    """A deposed leader with entries the group never committed receives snapshot chunks from the
    new leader: they must not raise its commit index over those entries (a 201 for a lost write)."""
    from rankq.replication.syncobj import snapshot_chunk_without_commit

    sync = node.syncobj
    with node.lock:
        commit = sync._SyncObj__raftCommitIndex
    chunk = {"type": "append_entries", "term": 99, "commit_index": commit + 1000, "serialized": ("x", False, False)}
    rewritten = snapshot_chunk_without_commit(chunk, commit)
    assert rewritten["commit_index"] == commit and rewritten["serialized"] == chunk["serialized"]
    regular = {
        "type": "append_entries",
        "term": 99,
        "commit_index": commit + 5,
        "prevLogIdx": 1,
        "prevLogTerm": 1,
        "entries": [],
    }
    assert "prevLogIdx" in regular  # the regular path keeps PySyncObj's own rule (entries verified first)
