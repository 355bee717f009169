"""The history checker finds each kind of violation in small hand-made histories (and none in a clean one)."""

from __future__ import annotations

from history import FAIL, OK, UNKNOWN, Delivery, FinalState, History, canonical, check
from netns import on_ci

T0 = 1_700_000_000.0  # seconds; engine times below are ms


def enqueue(h: History, key: str, mid: int | None, outcome: str = OK, payload=None):
    op = h.enqueue_invoked("p0", key, payload or {"key": key}, "n0")
    op.t_invoke = T0
    h.complete(op, outcome, 201 if outcome == OK else 503, id=mid if outcome == OK else None)
    op.t_complete = T0 + 0.01
    return op


def deliver(
    h: History,
    mid: int,
    at_ms: int,
    vt_ms: int = 2000,
    consumer: str = "c0",
    token: str | None = None,
    key: str | None = None,
    payload=None,
) -> Delivery:
    d = Delivery(
        consumer=consumer,
        node="n0",
        id=mid,
        payload=canonical(payload or {"key": key or f"k{mid}"}),
        token=token or f"t{mid}-{at_ms}",
        expires_ms=at_ms + vt_ms,
        vt_ms=vt_ms,
        deliveries=1,
        t_invoke=at_ms / 1000 - 0.01,
        t_recv=at_ms / 1000 + 0.01,
    )
    h.deliveries.append(d)
    return d


def lease(h: History, kind: str, d: Delivery, at_s: float, outcome: str = OK):
    op = h.lease_invoked(kind, d.consumer, "n0", d)
    op.t_invoke = at_s
    h.complete(op, outcome, 200 if outcome == OK else 409)
    op.t_complete = at_s + 0.01
    return op


def props(violations) -> list[str]:
    return sorted(v.property for v in violations)


def clean_history():
    h = History()
    enqueue(h, "k1", 1)
    d = deliver(h, 1, int(T0 * 1000) + 100)
    lease(h, "ack", d, T0 + 0.2)
    return h, FinalState(status={1: "acked"}, drained=True)


def test_clean_history_has_no_violation():
    h, final = clean_history()
    assert check(h, final) == []


def test_redelivery_after_expiry_or_nack_is_fine():
    h = History()
    enqueue(h, "k1", 1)
    base = int(T0 * 1000)
    first = deliver(h, 1, base, vt_ms=2000, consumer="c0")
    second = deliver(h, 1, base + 2000, consumer="c1")  # exactly at expiry
    lease(h, "nack", second, T0 + 2.1, outcome=UNKNOWN)  # may have committed: releases the lease
    third = deliver(h, 1, base + 2500, consumer="c2")
    lease(h, "ack", third, T0 + 2.6)
    assert first.expires_ms == second.t_server_ms
    assert check(h, FinalState(status={1: "acked"}, drained=True)) == []


def test_lost_enqueue():
    h, final = clean_history()
    enqueue(h, "k2", 2)
    final.status[2] = "acked"  # even a status cannot stand in for a delivery (nor an ack)
    assert props(check(h, final)) == ["invented", "lost"]
    h, final = clean_history()
    enqueue(h, "k2", 2)
    final.dlq[2] = canonical({"key": "k2"})
    final.status[2] = None  # in the DLQ, but unknown to the leader
    assert props(check(h, final)) == ["lost"]


def test_dead_lettered_enqueue_is_not_lost():
    h, final = clean_history()
    enqueue(h, "k2", 2)
    final.dlq[2] = canonical({"key": "k2"})
    final.status[2] = "dead"
    assert check(h, final) == []


def test_unknown_enqueue_need_not_arrive():
    h, final = clean_history()
    enqueue(h, "k2", None, outcome=UNKNOWN)
    assert check(h, final) == []


def test_double_delivery_while_lease_live():
    h = History()
    enqueue(h, "k1", 1)
    base = int(T0 * 1000)
    first = deliver(h, 1, base, vt_ms=3000, consumer="c0")
    lease(h, "ack", first, T0 + 1.0, outcome=UNKNOWN)  # an ack that may not have committed releases nothing
    deliver(h, 1, base + 1500, consumer="c1")
    found = check(h, FinalState(status={1: "leased"}))
    assert props(found) == ["double"]
    assert "c1" in found[0].detail and "c0" in found[0].detail


def test_failed_nack_does_not_release():
    h = History()
    enqueue(h, "k1", 1)
    base = int(T0 * 1000)
    first = deliver(h, 1, base, vt_ms=3000)
    lease(h, "nack", first, T0 + 0.5, outcome=FAIL)
    deliver(h, 1, base + 1000, consumer="c1")
    assert props(check(h, FinalState())) == ["double"]


def test_ack_undone():
    h = History()
    enqueue(h, "k1", 1)
    base = int(T0 * 1000)
    first = deliver(h, 1, base, vt_ms=2000)
    lease(h, "ack", first, T0 + 0.5)
    deliver(h, 1, base + 5000, consumer="c1")  # long after the acknowledged ack
    assert props(check(h, FinalState(status={1: "acked"}))) == ["ack_undone"]
    # The ack is acknowledged but the message is ready again at the end.
    h = History()
    enqueue(h, "k1", 1)
    d = deliver(h, 1, base)
    lease(h, "ack", d, T0 + 0.5)
    assert props(check(h, FinalState(status={1: "ready"}, drained=True))) == ["ack_undone", "lost"]


def test_invented_messages():
    h, final = clean_history()
    deliver(h, 7, int(T0 * 1000), key="never-sent")
    final.dlq[8] = canonical({"key": "nor-this"})
    found = check(h, final)
    assert props(found) == ["invented", "invented"]
    # One dedup key that became two messages.
    h, final = clean_history()
    d = deliver(h, 2, int(T0 * 1000) + 50, key="k1")
    lease(h, "ack", d, T0 + 0.2)
    final.status[2] = "acked"
    assert props(check(h, final)) == ["invented"]
    # A payload that is not the one sent under its key.
    h, final = clean_history()
    deliver(h, 1, int(T0 * 1000) + 5000, payload={"key": "k1", "extra": 1})
    assert "invented" in props(check(h, final))


# ---- blind spots closed ---------------------------------------------------------------------------------


def test_acked_at_the_end_without_any_ack_is_caught():
    h = History()
    enqueue(h, "k1", 1)
    deliver(h, 1, int(T0 * 1000) + 100)  # delivered, but nobody acked it
    found = check(h, FinalState(status={1: "acked"}, drained=True))
    assert props(found) == ["invented"] and "no consumer" in found[0].detail
    # An ack that certainly failed does not count either; one whose outcome is unknown may have.
    h = History()
    enqueue(h, "k1", 1)
    d = deliver(h, 1, int(T0 * 1000) + 100)
    lease(h, "ack", d, T0 + 0.2, outcome=FAIL)
    assert props(check(h, FinalState(status={1: "acked"}, drained=True))) == ["invented"]
    h = History()
    enqueue(h, "k1", 1)
    d = deliver(h, 1, int(T0 * 1000) + 100)
    lease(h, "ack", d, T0 + 0.2, outcome=UNKNOWN)
    assert check(h, FinalState(status={1: "acked"}, drained=True)) == []


def test_dead_lettered_before_max_deliveries_is_caught():
    def dead_after(n_delivered: int, reported: int | None, unknown_dequeues: int = 0):
        h = History()
        enqueue(h, "k1", 1)
        base = int(T0 * 1000)
        for i in range(n_delivered):  # each lease expires, the next delivery follows
            deliver(h, 1, base + i * 2000, vt_ms=2000, consumer=f"c{i}")
        h.dequeues[OK] = n_delivered
        h.dequeues[UNKNOWN] = unknown_dequeues
        final = FinalState(dlq={1: canonical({"key": "k1"})}, status={1: "dead"}, drained=True)
        if reported is not None:
            final.dlq_deliveries[1] = reported
        return check(h, final, max_deliveries=4)

    assert dead_after(4, 4) == []
    assert props(dead_after(2, 2)) == ["lost"]  # the server says so itself
    assert props(dead_after(2, 4)) == ["lost"]  # it claims 4, but every delivery was recorded: 2
    assert dead_after(2, 4, unknown_dequeues=1) == []  # two may have gone to lost dequeue answers
    assert props(dead_after(0, 1, unknown_dequeues=1)) == ["lost"]
    # Without max_deliveries (0: retry forever, or not checked) nothing is claimed.
    h = History()
    enqueue(h, "k1", 1)
    assert check(h, FinalState(dlq={1: canonical({"key": "k1"})}, dlq_deliveries={1: 1}, status={1: "dead"})) == []


def test_lease_overlap_under_100_ms_is_caught():
    for overlap_ms in (1, 50, 99):
        h = History()
        enqueue(h, "k1", 1)
        base = int(T0 * 1000)
        deliver(h, 1, base, vt_ms=2000, consumer="c0")
        deliver(h, 1, base + 2000 - overlap_ms, consumer="c1")  # the first lease is live until base+2000
        assert props(check(h, FinalState(status={1: "leased"}))) == ["double"], overlap_ms


def test_a_nack_with_unknown_outcome_does_not_hide_a_double_delivery():
    base = int(T0 * 1000)
    # Unknown, then acknowledged on retry: the unknown attempt did nothing, and the retry came
    # after the second delivery, so that delivery happened while the lease was live.
    h = History()
    enqueue(h, "k1", 1)
    first = deliver(h, 1, base, vt_ms=5000, consumer="c0")
    nack1 = lease(h, "nack", first, T0 + 0.5, outcome=UNKNOWN)
    deliver(h, 1, base + 1500, consumer="c1")
    lease(h, "nack", first, T0 + 2.0)
    assert nack1.t_invoke * 1000 < base + 1500
    assert props(check(h, FinalState(status={1: "leased"}))) == ["double"]
    # Unknown, invoked after the second delivery was made: it cannot have released the lease.
    h = History()
    enqueue(h, "k1", 1)
    first = deliver(h, 1, base, vt_ms=5000, consumer="c0")
    second = deliver(h, 1, base + 1000, consumer="c1")
    second.t_recv = T0 + 1.5  # its answer arrived late, after the nack below was sent
    lease(h, "nack", first, T0 + 1.2, outcome=UNKNOWN)
    assert props(check(h, FinalState(status={1: "leased"}))) == ["double"]
    # Unknown, with a delay the second delivery came too early for.
    h = History()
    enqueue(h, "k1", 1)
    first = deliver(h, 1, base, vt_ms=5000, consumer="c0")
    op = lease(h, "nack", first, T0 + 0.5, outcome=UNKNOWN)
    op.delay_ms = 2000
    deliver(h, 1, base + 1000, consumer="c1")
    assert props(check(h, FinalState(status={1: "leased"}))) == ["double"]
    # Still fine: an unknown nack early enough (it may have committed) explains the redelivery.
    h = History()
    enqueue(h, "k1", 1)
    first = deliver(h, 1, base, vt_ms=5000, consumer="c0")
    op = lease(h, "nack", first, T0 + 0.5, outcome=UNKNOWN)
    op.delay_ms = 200
    deliver(h, 1, base + 1000, consumer="c1")
    assert check(h, FinalState(status={1: "leased"})) == []


def test_the_chaos_sample_must_run_on_ci():
    assert on_ci({"CI": "true"}) and on_ci({"CI": "1"}) and on_ci({"CI": "True"})
    assert not on_ci({}) and not on_ci({"CI": ""}) and not on_ci({"CI": "false"}) and not on_ci({"CI": "0"})
