"""The queue rules, one behaviour per test, on the bare engine."""

from __future__ import annotations

from collections import Counter

import pytest

from rankq.engine import Conflict, Engine, Full, Invalid, NotFound, TooLarge
from rankq.engine import commands as c

T0 = 1_000_000


def make(settings=None, name="q") -> Engine:
    e = Engine()
    e.apply(c.CreateQueue(name, settings or {}, b"s" * 16), T0)
    return e


def put(e, *payloads, t=T0, **kw):
    return [i for i, _ in e.apply(c.Enqueue("q", tuple(c.NewMessage(p, **kw) for p in payloads)), t)]


def take(e, n=1, t=T0, **kw):
    return e.apply(c.Dequeue("q", n, **kw), t)


def test_strict_lowest_priority_first_fifo_within():
    e = make()
    a = put(e, '"a"', priority=5)
    b = put(e, '"b1"', '"b2"', priority=1)
    got = take(e, 3)
    assert [d.id for d in got] == [b[0], b[1], a[0]]


def test_weighted_shares_match_weights_and_low_classes_are_served():
    e = make({"policy": "weighted"})
    for p in (1, 2, 3, 4, 5):
        put(e, *['"x"'] * 3000, priority=p)
    got = take(e, 1000) + take(e, 1000)
    shares = Counter(d.priority for d in got)
    assert shares == {1: 600, 2: 500, 3: 400, 4: 300, 5: 200}


def test_weighted_rejects_unknown_class():
    e = make({"policy": "weighted"})
    with pytest.raises(Invalid):
        put(e, '"x"', priority=9)


def test_fair_groups_round_robin_and_inflight_cap():
    e = make({"fair_groups": True, "group_max_inflight": 1})
    put(e, '"a1"', '"a2"', '"a3"', group="a")
    put(e, '"b1"', group="b")
    got = take(e, 10)
    assert [d.group for d in got] == ["a", "b"]  # cap 1 per group
    e.apply(c.Ack("q", (c.AckItem(got[0].id, got[0].lease_token),)), T0)
    assert [d.group for d in take(e, 10)] == ["a"]


def test_lease_expiry_redelivers_with_count_and_old_token_is_refused():
    e = make({"visibility_timeout_ms": 1000})
    [mid] = put(e, '"x"')
    first = take(e)[0]
    assert first.deliveries == 1
    second = take(e, t=T0 + 1000)[0]  # lease expired exactly at T0+1000
    assert second.id == mid and second.deliveries == 2
    [res] = e.apply(c.Ack("q", (c.AckItem(mid, first.lease_token),)), T0 + 1001)
    assert isinstance(res, Conflict)
    [res] = e.apply(c.Ack("q", (c.AckItem(mid, second.lease_token, {"done": True}),)), T0 + 1001)
    assert res is None
    info = e.message("q", mid)
    assert info.state == "acked" and info.result == {"done": True}


def test_max_deliveries_dead_letters_with_last_error_and_redrive():
    e = make({"max_deliveries": 2})
    [mid] = put(e, '"x"')
    d = take(e)[0]
    assert e.apply(c.Nack("q", mid, d.lease_token, 0, "first"), T0)["state"] == "ready"
    d = take(e)[0]
    assert e.apply(c.Nack("q", mid, d.lease_token, 0, "second"), T0)["state"] == "dead"
    info = e.message("q", mid)
    assert info.state == "dead" and info.last_error == "second"
    assert e.queue("q").counts()["dead"] == 1
    assert e.apply(c.Redrive("q", (mid, 999)), T0) == {"redriven": [mid], "not_found": [999]}
    again = take(e)[0]
    assert again.id == mid and again.deliveries == 1


def test_nack_default_backoff_grows_with_deliveries():
    e = make({"retry_base_ms": 100, "retry_max_ms": 10_000, "max_deliveries": 0})
    [mid] = put(e, '"x"')
    t, delays = T0, []
    for _ in range(4):
        d = take(e, t=t)[0]
        res = e.apply(c.Nack("q", mid, d.lease_token, None, None, 0.0), t)
        delays.append(res["available_at"] - t)
        t = res["available_at"]
    assert delays == [50, 100, 200, 400]  # equal jitter with jitter=0 halves the backoff


def test_delay_and_deliver_at():
    e = make()
    [late] = put(e, '"late"', delay_ms=500)
    assert take(e) == []
    assert e.next_deadline() == T0 + 500
    e.apply(c.Tick(), T0 + 500)
    assert e.drain_woken() == {"q"}
    assert take(e, t=T0 + 500)[0].id == late


def test_dedup_within_window_only():
    e = make({"dedup_window_ms": 1000})
    first = e.apply(c.Enqueue("q", (c.NewMessage('"x"', dedup_key="k"),)), T0)
    assert e.apply(c.Enqueue("q", (c.NewMessage('"x"', dedup_key="k"),)), T0 + 999) == [(first[0][0], True)]
    later = e.apply(c.Enqueue("q", (c.NewMessage('"x"', dedup_key="k"),)), T0 + 1000)
    assert later[0][1] is False and later[0][0] != first[0][0]


def test_max_length_refuses_whole_batch_and_loses_nothing():
    e = make({"max_length": 3})
    put(e, '"1"', '"2"')
    with pytest.raises(Full):
        put(e, '"3"', '"4"')
    assert e.queue("q").depth() == 2
    put(e, '"3"')


def test_payload_limit():
    e = make({"max_payload_bytes": 10})
    with pytest.raises(TooLarge):
        put(e, '"' + "x" * 20 + '"')
    put(e, b"0123456789")


def test_priority_change_and_cancel_refuse_leased():
    e = make()
    [a, b] = put(e, '"a"', '"b"', priority=3)
    e.apply(c.SetPriority("q", b, 0), T0)
    d = take(e)[0]
    assert d.id == b
    with pytest.raises(Conflict):
        e.apply(c.SetPriority("q", b, 1), T0)
    with pytest.raises(Conflict):
        e.apply(c.Cancel("q", b), T0)
    assert e.apply(c.Cancel("q", a), T0) == "ready"
    with pytest.raises(NotFound):
        e.message("q", a)


def test_retention_ends_acked_status():
    e = make({"retention_ms": 1000})
    [mid] = put(e, '"x"')
    d = take(e)[0]
    e.apply(c.Ack("q", (c.AckItem(mid, d.lease_token, 1),)), T0)
    assert e.message("q", mid).state == "acked"
    e.apply(c.Tick(), T0 + 1000)
    with pytest.raises(NotFound):
        e.message("q", mid)


def test_time_never_runs_backwards():
    e = make({"visibility_timeout_ms": 1000})
    put(e, '"x"')
    d = take(e, t=T0 + 5000)[0]
    assert d.lease_expires_at == T0 + 6000
    # A command stamped earlier (clock skew of a new leader) is applied at the later time.
    assert e.apply(c.Extend("q", d.id, d.lease_token, 1000), T0) == T0 + 6000


def test_live_switch_to_fair_groups_keeps_messages():
    e = make()
    put(e, '"a"', '"a"', group="a")
    put(e, '"b"', group="b")
    e.apply(c.UpdateQueue("q", {"fair_groups": True}), T0)
    assert [d.group for d in take(e, 3)] == ["a", "b", "a"]


def test_bad_settings_and_names_are_refused():
    e = Engine()
    with pytest.raises(Invalid):
        e.apply(c.CreateQueue("bad name", {}, b"s"), T0)
    with pytest.raises(Invalid):
        e.apply(c.CreateQueue("q", {"policy": "lifo"}, b"s"), T0)
    with pytest.raises(Invalid):
        e.apply(c.CreateQueue("q", {"bogus": 1}, b"s"), T0)
    e.apply(c.CreateQueue("q", {}, b"s"), T0)
    with pytest.raises(Conflict):
        e.apply(c.CreateQueue("q", {}, b"s"), T0)


def test_release_makes_ready_at_once_without_counting_the_delivery():
    e = make({"max_deliveries": 1})
    [mid] = put(e, '"a"', '"b"')[:1]
    [d] = take(e)
    assert d.id == mid and d.deliveries == 1
    e.apply(c.Release("q", mid, d.lease_token), T0 + 10)
    info = e.message("q", mid)
    assert info.state == "ready" and info.deliveries == 0
    [again] = take(e, t=T0 + 20)  # FIFO position kept; max_deliveries=1 and still delivered
    assert again.id == mid and again.deliveries == 1 and again.lease_token != d.lease_token
    assert e.queue("q").totals["released"] == 1


def test_release_refuses_a_stale_token_and_changes_nothing():
    e = make()
    [mid] = put(e, '"a"')
    [d] = take(e, visibility_timeout_ms=100)
    e.apply(c.Tick(), T0 + 200)  # lease expired: back to ready
    with pytest.raises(Conflict):
        e.apply(c.Release("q", mid, d.lease_token), T0 + 210)
    assert e.message("q", mid).deliveries == 1
    with pytest.raises(NotFound):
        e.apply(c.Release("q", 999, "x"), T0 + 220)


def test_nack_dead_rejects_at_once_with_deliveries_left():
    e = make({"max_deliveries": 5})
    [mid] = put(e, '"a"')
    [d] = take(e)
    res = e.apply(c.Nack("q", mid, d.lease_token, None, "bad input", 0.0, True), T0 + 1)
    assert res["state"] == "dead"
    info = e.message("q", mid)
    assert info.state == "dead" and info.last_error == "bad input" and info.deliveries == 1


def test_backlog_is_ready_leased_and_due_delayed():
    e = make()
    put(e, '"r1"', '"r2"', '"r3"')
    put(e, '"soon"', delay_ms=100)
    put(e, '"later"', delay_ms=10_000)
    take(e)
    q = e.queue("q")
    assert q.backlog(T0) == 3  # 2 ready + 1 leased
    assert q.backlog(T0 + 100) == 4  # the delayed one is due, even before a tick moved it
    assert q.backlog(T0 + 20_000) == 5
