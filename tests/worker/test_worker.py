"""`rankq worker` processes against a real server: exactly-once handling, drain on SIGTERM,
redelivery after SIGKILL, heartbeats, retries and dead letters. Handlers journal what they ran."""

from __future__ import annotations

import signal
import time

import httpx
import pytest
from serverproc import wait_for

from rankq import Client


def fill(rq: Client, queue: str, n: int, **payload) -> list[int]:
    ids: list[int] = []
    for start in range(0, n, 1000):
        batch = [{"n": i, **payload} for i in range(start, min(n, start + 1000))]
        ids += [r.id for r in rq.enqueue_batch(queue, batch)]
    return ids


def drained(rq: Client, queue: str) -> bool:
    c = rq.get_queue(queue).counts
    return c.ready == c.delayed == c.leased == 0


def run_exactly_once(server_url, rq, workers, journal, queue, n, n_workers, concurrency, timeout):
    rq.create_queue(queue, visibility_timeout=10)
    ids = fill(rq, queue, n)
    procs = [
        workers(server_url, queue, "--concurrency", str(concurrency), "--poll-wait", "1") for _ in range(n_workers)
    ]
    wait_for(lambda: rq.get_queue(queue).totals["acked"] == n, timeout, f"{n} acks")
    assert drained(rq, queue)
    done = journal.counts("done")
    assert set(done) == set(range(n)) and max(done.values()) == 1, "every message handled exactly once"
    assert len(journal.events("start")) == n
    assert {p.metric("rankq_worker_processed_total") for p in procs} and sum(
        p.metric("rankq_worker_processed_total") for p in procs
    ) == n
    assert all(p.metric("rankq_worker_inflight") == 0 for p in procs)
    for i in (ids[0], ids[-1]):
        assert rq.get_message(queue, i).state == "acked"
    for p in procs:
        p.signal(signal.SIGTERM)
    assert [p.wait(20) for p in procs] == [0] * n_workers


def test_four_workers_by_eight_handle_each_message_once(shared_server, workers, journal):
    with Client(shared_server.url) as rq:
        run_exactly_once(shared_server.url, rq, workers, journal, "once", 2000, 4, 8, 120)


@pytest.mark.slow  # 16 s on a quiet machine, over 100 s on a busy one
@pytest.mark.timeout(900)
def test_ten_thousand_messages_four_workers_by_eight_each_handled_once(shared_server, workers, journal):
    with Client(shared_server.url) as rq:
        run_exactly_once(shared_server.url, rq, workers, journal, "once-10k", 10_000, 4, 8, 600)


def test_sigterm_mid_flight_loses_nothing_and_runs_nothing_twice(shared_server, workers, journal):
    queue, n = "drain", 300
    with Client(shared_server.url) as rq:
        rq.create_queue(queue, visibility_timeout=10)
        fill(rq, queue, n, sleep=0.1)
        first = [
            workers(shared_server.url, queue, "--concurrency", "8", "--poll-wait", "2", "--drain-timeout", "15")
            for _ in range(2)
        ]
        wait_for(lambda: len(journal.events("done")) >= 40, 60, "some messages handled")
        started = time.monotonic()
        for p in first:
            p.signal(signal.SIGTERM)
        assert [p.wait(20) for p in first] == [0, 0]
        assert time.monotonic() - started < 15, "drained within the drain timeout"
        for p in first:
            assert "draining" in p.logs()
        # Nothing the stopped workers had is still leased: it was finished or given back.
        assert rq.get_queue(queue).counts.leased == 0
        after = workers(shared_server.url, queue, "--concurrency", "8", "--poll-wait", "1")
        wait_for(lambda: rq.get_queue(queue).totals["acked"] == n, 60, "all acked")
        done, starts = journal.counts("done"), journal.counts("start")
        assert set(done) == set(range(n)) and max(done.values()) == 1
        assert max(starts.values()) == 1, "no message ran twice"
        assert all(e["deliveries"] == 1 for e in journal.events("start")), "released ones kept their count"
        after.signal(signal.SIGTERM)
        assert after.wait(20) == 0


def test_drain_timeout_releases_unfinished_keeping_the_delivery_count(shared_server, workers, journal):
    queue = "drain-release"
    with Client(shared_server.url) as rq:
        rq.create_queue(queue, visibility_timeout=30)
        [long_id] = fill(rq, queue, 1, sleep=60)
        w = workers(shared_server.url, queue, "--concurrency", "2", "--poll-wait", "1", "--drain-timeout", "1")
        wait_for(lambda: journal.events("start"), 20, "the long handler started")
        assert rq.get_message(queue, long_id).state == "leased"
        started = time.monotonic()
        w.signal(signal.SIGTERM)
        assert w.wait(20) == 0
        assert time.monotonic() - started < 10
        status = rq.get_message(queue, long_id)
        assert status.state == "ready" and status.deliveries == 0, "released without counting the delivery"
        assert "releasing 1 unfinished" in w.logs()
        assert rq.get_queue(queue).totals["released"] == 1


def test_second_signal_releases_at_once(shared_server, workers, journal):
    queue = "drain-now"
    with Client(shared_server.url) as rq:
        rq.create_queue(queue, visibility_timeout=30)
        [mid] = fill(rq, queue, 1, sleep=60)
        w = workers(shared_server.url, queue, "--poll-wait", "1", "--drain-timeout", "120")
        wait_for(lambda: journal.events("start"), 20, "the handler started")
        w.signal(signal.SIGTERM)
        wait_for(lambda: "draining" in w.logs(), 10, "the drain to begin")
        probe = f"http://127.0.0.1:{w.metrics_port}"
        assert httpx.get(probe + "/readyz").status_code == 503, "not ready while draining"
        assert httpx.get(probe + "/healthz").status_code == 200
        started = time.monotonic()
        w.signal(signal.SIGINT)
        assert w.wait(20) == 0
        assert time.monotonic() - started < 10, "a second signal does not wait for the drain timeout"
        assert rq.get_message(queue, mid).state == "ready"


def test_sigkill_messages_come_back_after_the_visibility_timeout(shared_server, workers, journal):
    queue, n = "killed", 40
    with Client(shared_server.url) as rq:
        rq.create_queue(queue, visibility_timeout=2)
        fill(rq, queue, n, sleep=0.5)
        victim = workers(shared_server.url, queue, "--concurrency", "8", "--poll-wait", "1")
        wait_for(lambda: len(journal.events("start")) >= 8, 20, "the victim to be busy")
        victim.signal(signal.SIGKILL)
        victim.wait(10)
        killed_at = time.time()
        orphans = {e["n"] for e in journal.events("start")} - set(journal.counts("done"))
        assert orphans, "the kill interrupted running handlers"
        rescuer = workers(shared_server.url, queue, "--concurrency", "8", "--poll-wait", "1")
        wait_for(lambda: rq.get_queue(queue).totals["acked"] == n, 60, "all acked")
        done = journal.counts("done")
        assert set(done) == set(range(n)) and max(done.values()) == 1
        reruns = [e for e in journal.events("start") if e["n"] in orphans and e["pid"] == rescuer.proc.pid]
        assert {e["n"] for e in reruns} == orphans
        assert all(e["deliveries"] == 2 for e in reruns), "redelivered, the lost delivery counted"
        assert all(e["t"] >= killed_at - 0.5 for e in reruns)
        assert rq.get_queue(queue).totals["expired"] >= len(orphans)


def test_handler_three_times_slower_than_the_lease_completes_once(shared_server, workers, journal):
    queue = "slow"
    with Client(shared_server.url) as rq:
        rq.create_queue(queue, visibility_timeout=1)
        [mid] = fill(rq, queue, 1, sleep=3)
        # Two workers: were the lease to lapse, the idle one would take the message and run it again.
        a = workers(shared_server.url, queue, "--poll-wait", "1")
        b = workers(shared_server.url, queue, "--poll-wait", "1")
        wait_for(lambda: rq.get_queue(queue).totals["acked"] == 1, 30, "the ack")
        assert journal.counts("start") == {0: 1} and journal.counts("done") == {0: 1}
        status = rq.get_message(queue, mid)
        assert status.state == "acked" and status.deliveries == 1 and status.result == {"n": 0}
        assert a.metric("rankq_worker_lease_extensions_total") + b.metric("rankq_worker_lease_extensions_total") >= 2
        assert a.metric("rankq_worker_lease_lost_total") == b.metric("rankq_worker_lease_lost_total") == 0
        assert a.metric("rankq_worker_handler_seconds_count") + b.metric("rankq_worker_handler_seconds_count") == 1


def test_failing_handler_is_retried_with_backoff_then_dead_lettered(shared_server, workers, journal):
    queue = "failing"
    with Client(shared_server.url) as rq:
        rq.create_queue(queue, max_deliveries=4, retry_base=0.4, retry_max=10)
        [mid] = fill(rq, queue, 1, fail=True)
        w = workers(shared_server.url, queue, "--poll-wait", "1")
        wait_for(lambda: rq.get_message(queue, mid).state == "dead", 30, "the dead letter")
        runs = journal.events("start")
        assert [e["deliveries"] for e in runs] == [1, 2, 3, 4]
        gaps = [b["t"] - a["t"] for a, b in zip(runs, runs[1:])]
        # equal-jitter backoff: base * 2^(d-1) * [0.5, 1] → at least 0.2, 0.4, 0.8 s
        for gap, least in zip(gaps, (0.2, 0.4, 0.8)):
            assert gap >= least * 0.95, gaps
        [dead] = rq.dead_letters(queue)
        assert dead.id == mid and dead.deliveries == 4 and "RuntimeError: boom 0" in dead.last_error
        failures = [line for line in w.logs().splitlines() if f"message {mid} failed" in line]
        assert len(failures) == 4 and "(delivery 4)" in failures[-1] and "boom 0" in failures[-1]
        assert w.metric("rankq_worker_failed_total") == 4


def test_prefetched_messages_are_released_at_once_on_drain(shared_server, workers, journal):
    queue = "prefetch"
    with Client(shared_server.url) as rq:
        rq.create_queue(queue, visibility_timeout=30)
        ids = fill(rq, queue, 4, sleep=2)
        w = workers(
            shared_server.url,
            queue,
            "--concurrency",
            "1",
            "--prefetch",
            "3",
            "--poll-wait",
            "1",
            "--drain-timeout",
            "20",
        )
        wait_for(
            lambda: journal.events("start") and rq.get_queue(queue).counts.leased == 4,
            20,
            "one running, three prefetched",
        )
        assert len(journal.events("start")) == 1, "prefetched messages wait for a slot"
        w.signal(signal.SIGTERM)
        assert w.wait(20) == 0
        assert journal.counts("done") == {0: 1}
        states = [rq.get_message(queue, i) for i in ids]
        assert states[0].state == "acked"
        assert [(s.state, s.deliveries) for s in states[1:]] == [("ready", 0)] * 3
        assert "releasing 3 prefetched" in w.logs()


def test_lost_lease_is_not_acked_and_is_counted(shared_server, workers, journal):
    """A worker frozen past its lease (SIGSTOP, as in a long GC or VM pause) finds the lease gone
    when it resumes: it must not ack, and says so; the message is finished by the other worker."""
    queue = "lost"
    with Client(shared_server.url) as rq:
        rq.create_queue(queue, visibility_timeout=1)
        [mid] = fill(rq, queue, 1, sleep=3)
        frozen = workers(shared_server.url, queue, "--poll-wait", "1")
        wait_for(lambda: journal.events("start"), 20, "the first run")
        frozen.signal(signal.SIGSTOP)
        try:
            other = workers(shared_server.url, queue, "--poll-wait", "1")
            # (the frozen worker's pending long poll may take one delivery it never sees)
            wait_for(lambda: any(e["pid"] == other.proc.pid for e in journal.events("start")), 30, "the redelivery")
        finally:
            frozen.signal(signal.SIGCONT)
        wait_for(lambda: "lease of message %d lost" % mid in frozen.logs(), 30, "the loss to be noticed")
        wait_for(lambda: rq.get_message(queue, mid).state == "acked", 30, "the other worker's ack")
        wait_for(lambda: frozen.metric("rankq_worker_inflight") == 0, 30, "the frozen run to end")
        # (≥ 1: the delivery its pending poll took while it was frozen is found lost as well)
        assert frozen.metric("rankq_worker_lease_lost_total") >= 1
        assert frozen.metric("rankq_worker_processed_total") == 0, "a lost lease is never acked"
        assert other.metric("rankq_worker_processed_total") == 1
        assert rq.get_message(queue, mid).deliveries >= 2
