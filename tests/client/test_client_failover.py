"""The client's default retry budget outlasts a leader failover (real 3-node group, kill -9).

A failover usually takes about a second here; to make it last long enough to tell a short retry
budget from a sufficient one, the follower that does not serve the clients is paused (SIGSTOP, as
a long GC pause or an overloaded host would) for 2 s while the leader is killed: the other
follower then cannot be elected until it is back.
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from serverproc import Cluster, free_port, wait_for

from rankq import Client
from rankq.client.errors import TransportError

pytestmark = pytest.mark.timeout(180)

PRODUCERS = 4
PAUSE_SECONDS = 2.0


def test_keyed_enqueues_across_a_leader_kill_9_succeed_with_default_settings(tmp_path):
    group = Cluster(str(tmp_path / "g"), 3).start()
    try:
        leader = group.leader()
        serving, slow = [n for n in group.nodes if n is not leader]
        with Client(group.nodes[0].url) as admin:
            admin.create_queue("jobs")
        errors: list[BaseException] = []
        sent: list[str] = []
        stop = threading.Event()

        def produce(p: int, urls: list[str]) -> None:
            """Keyed enqueues, one at a time, through the kill; each client starts at the leader."""
            with Client(urls) as rq:
                i = 0
                while not stop.is_set():
                    key = f"p{p}-{i}"
                    try:
                        rq.enqueue("jobs", {"p": p, "i": i}, dedup_key=key)
                        sent.append(key)
                    except BaseException as err:
                        errors.append(err)
                        return
                    i += 1

        producers = [threading.Thread(target=produce, args=(p, [leader.url, serving.url])) for p in range(PRODUCERS)]
        for t in producers:
            t.start()
        wait_for(lambda: len(sent) >= 4 * PRODUCERS, 30, "every producer to be writing")
        slow.signal(signal.SIGSTOP)
        try:
            leader.kill9()
            killed_at = time.monotonic()
            time.sleep(PAUSE_SECONDS)  # the length of the fault, not a wait for a condition
        finally:
            slow.signal(signal.SIGCONT)
        new = group.leader(timeout=15)
        written = len(sent)
        wait_for(lambda: len(sent) > written + PRODUCERS or errors, 15, "writes after the failover")
        assert time.monotonic() - killed_at < 15
        stop.set()
        for t in producers:
            t.join(30)
        assert not errors, f"a keyed enqueue failed during the failover: {errors[0]!r}"
        with Client(new.url) as rq:
            # Each key exactly once: retries never duplicated a message.
            assert rq.get_queue("jobs").counts.ready == len(sent) == len(set(sent))
    finally:
        group.stop()


def test_the_retry_budget_bounds_how_long_a_keyed_call_keeps_trying():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with Client(url) as rq:
        assert rq.retry_budget >= 3.0, "the default must outlast a failover"
    with Client(url, retry_budget=0.8) as rq:
        start = time.monotonic()
        with pytest.raises(TransportError):
            rq.enqueue("jobs", 1, dedup_key="k")
        took = time.monotonic() - start
    assert 0.3 <= took < 5.0
    with Client(url, retries=0) as rq:
        start = time.monotonic()
        with pytest.raises(TransportError):
            rq.enqueue("jobs", 1, dedup_key="k")
        assert time.monotonic() - start < 2.0
