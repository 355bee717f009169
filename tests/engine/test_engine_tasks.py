"""Task semantics on the bare engine: message expiry, rate limits, in-flight caps, weighted groups,
dependencies, dead-letter routing and paced redrive. Time is the commands' only clock here."""

from __future__ import annotations

import json
import pickle
from collections import Counter

import pytest

from rankq.engine import Conflict, Engine, Invalid, NotFound
from rankq.engine import commands as c
from rankq.engine.config import MAX_DEPENDENCIES

T0 = 1_000_000


def make(settings=None, name="q", e=None) -> Engine:
    e = e or Engine()
    e.apply(c.CreateQueue(name, settings or {}, b"s" * 16), T0)
    return e


def put(e, *payloads, t=T0, q="q", **kw):
    return [i for i, _ in e.apply(c.Enqueue(q, tuple(c.NewMessage(p, **kw) for p in payloads)), t)]


def take(e, n=1, t=T0, q="q", **kw):
    return e.apply(c.Dequeue(q, n, **kw), t)


def ack(e, d, t=T0, q="q"):
    [res] = e.apply(c.Ack(q, (c.AckItem(d.id, d.lease_token),)), t)
    assert res is None


def state(e, mid, q="q"):
    return e.message(q, mid).state


# ---- expiry -----------------------------------------------------------------------------------------


def test_ttl_expires_a_ready_message_to_the_dead_letters_with_reason_expired():
    e = make()
    [mid] = put(e, '"x"', ttl_ms=5000)
    info = e.message("q", mid)
    assert info.expires_at == T0 + 5000 and info.state == "ready"
    assert e.next_deadline() == T0 + 5000
    e.apply(c.Tick(), T0 + 4999)
    assert state(e, mid) == "ready"
    e.apply(c.Tick(), T0 + 5000)
    info = e.message("q", mid)
    assert info.state == "dead" and info.dead_reason == "expired"
    assert take(e, t=T0 + 5000) == []


def test_earlier_of_ttl_and_expires_at_wins_and_queue_default_applies_otherwise():
    e = make({"message_ttl_ms": 60_000})
    [a] = put(e, '"a"', ttl_ms=10_000, expires_at_ms=T0 + 3000)
    [b] = put(e, '"b"', ttl_ms=2000, expires_at_ms=T0 + 3000)
    [d] = put(e, '"d"')
    assert e.message("q", a).expires_at == T0 + 3000
    assert e.message("q", b).expires_at == T0 + 2000
    assert e.message("q", d).expires_at == T0 + 60_000


def test_an_expiry_at_or_before_the_command_time_is_invalid():
    e = make()
    with pytest.raises(Invalid):
        put(e, '"x"', expires_at_ms=T0)
    with pytest.raises(Invalid):
        put(e, '"x"', ttl_ms=0)
    assert e.queue("q").depth() == 0


def test_expired_delayed_message_is_dropped_when_dead_letters_are_off():
    e = make({"dead_letter": False})
    [mid] = put(e, '"x"', delay_ms=10_000, ttl_ms=3000)
    e.apply(c.Tick(), T0 + 3000)
    with pytest.raises(NotFound):
        e.message("q", mid)
    assert e.queue("q").counts()["delayed"] == 0


def test_a_leased_message_expires_when_its_lease_ends_without_an_ack():
    e = make({"visibility_timeout_ms": 10_000})
    [mid] = put(e, '"x"', ttl_ms=1000)
    [d] = take(e)
    e.apply(c.Tick(), T0 + 5000)  # past its expiry, but leased: the consumer may still ack
    assert state(e, mid) == "leased"
    e.apply(c.Tick(), T0 + 10_000)
    assert e.message("q", mid).dead_reason == "expired"
    # an ack in time wins
    [m2] = put(e, '"y"', ttl_ms=1000, t=T0 + 10_000)
    [d2] = take(e, t=T0 + 10_000)
    ack(e, d2, t=T0 + 12_000)
    assert state(e, m2) == "acked"
    # a nack after the expiry dead-letters it as expired
    [m3] = put(e, '"z"', ttl_ms=1000, t=T0 + 20_000)
    [d3] = take(e, t=T0 + 20_000)
    assert e.apply(c.Nack("q", m3, d3.lease_token, 0), T0 + 21_000)["state"] == "dead"
    assert e.message("q", m3).dead_reason == "expired"


def test_dead_reasons_for_exhausted_and_rejected():
    e = make({"max_deliveries": 1})
    a, b = put(e, '"a"', '"b"')
    da, db = take(e, 2)
    e.apply(c.Nack("q", a, da.lease_token, 0), T0)
    e.apply(c.Nack("q", b, db.lease_token, 0, dead=True), T0)
    assert e.message("q", a).dead_reason == "max_deliveries"
    assert e.message("q", b).dead_reason == "rejected"


def test_redriven_expired_message_gets_a_fresh_chance():
    e = make()
    [mid] = put(e, '"x"', ttl_ms=1000)
    e.apply(c.Tick(), T0 + 1000)
    e.apply(c.Redrive("q"), T0 + 1000)
    info = e.message("q", mid)
    assert info.state == "ready" and info.expires_at is None and info.dead_reason is None


# ---- rate limits and in-flight caps -----------------------------------------------------------------


def test_rate_limit_bucket_starts_full_then_refills_at_the_rate():
    e = make({"rate_limit": 10, "rate_burst": 5})
    put(e, *['"x"'] * 100)
    assert len(take(e, 100)) == 5  # the burst
    assert take(e, 100) == []
    assert len(take(e, 100, t=T0 + 100)) == 1  # 10/s: one token per 100 ms
    assert len(take(e, 100, t=T0 + 350)) == 2  # 250 ms more: 2.5 tokens, half a token left
    assert len(take(e, 100, t=T0 + 400)) == 1  # the half plus 50 ms


def test_rate_limit_delivered_rate_matches_configured_over_simulated_time():
    e = make({"rate_limit": 37})
    put(e, *['"x"'] * 1000)
    got = 0
    for ms in range(0, 10_000, 7):  # consumers polling every 7 ms for 10 s
        got += len(take(e, 10, t=T0 + ms))
    # 37 at once, then 37 per second for the 9.996 s that followed
    assert got == 37 + (9996 * 37) // 1000


def test_rate_limited_queue_names_its_next_token_and_wakes_then():
    e = make({"rate_limit": 2})
    put(e, *['"x"'] * 5)
    e.drain_woken()
    assert len(take(e, 5)) == 2
    assert e.next_deadline() == T0 + 500
    e.apply(c.Tick(), T0 + 499)
    assert e.drain_woken() == set()
    e.apply(c.Tick(), T0 + 500)
    assert e.drain_woken() == {"q"}
    assert len(take(e, 5, t=T0 + 500)) == 1


def test_group_rate_limit_holds_one_group_and_serves_the_others():
    e = make({"fair_groups": True, "group_rate_limit": 2})
    put(e, *['"a"'] * 10, group="a")
    put(e, *['"b"'] * 10, group="b")
    got = take(e, 10)
    assert Counter(d.group for d in got) == {"a": 2, "b": 2}
    assert take(e, 10, t=T0 + 499) == []
    assert Counter(d.group for d in take(e, 10, t=T0 + 500)) == {"a": 1, "b": 1}


def test_max_inflight_caps_leased_messages_and_an_ack_wakes_the_queue():
    e = make({"max_inflight": 3})
    put(e, *['"x"'] * 10)
    first = take(e, 10)
    assert len(first) == 3 and take(e, 10) == []
    e.drain_woken()
    ack(e, first[0])
    assert e.drain_woken() == {"q"}
    assert len(take(e, 10)) == 1


def test_group_weights_share_deliveries_in_proportion():
    e = make({"fair_groups": True, "group_weights": {"big": 3, "mid": 2}})
    for g in ("big", "mid", "small"):
        put(e, *['"x"'] * 600, group=g)
    got = take(e, 600)
    assert Counter(d.group for d in got) == {"big": 300, "mid": 200, "small": 100}
    # smooth: no group waits long for its turn
    first = [d.group for d in got[:6]]
    assert Counter(first) == {"big": 3, "mid": 2, "small": 1}


def test_group_weights_with_a_group_cap_skip_the_capped_group():
    e = make({"fair_groups": True, "group_weights": {"a": 5}, "group_max_inflight": 2})
    put(e, *['"a"'] * 10, group="a")
    put(e, *['"b"'] * 10, group="b")
    assert Counter(d.group for d in take(e, 10)) == {"a": 2, "b": 2}


def test_peek_follows_group_weights():
    e = make({"fair_groups": True, "group_weights": {"a": 2}})
    put(e, *['"a"'] * 4, group="a")
    put(e, *['"b"'] * 4, group="b")
    peeked = [m.group for m in e.queue("q").peek(6)]
    assert peeked == [d.group for d in take(e, 6)]


# ---- dependencies -------------------------------------------------------------------------------------


def test_dependency_chain_in_one_batch_runs_in_order():
    e = make()
    out = e.apply(
        c.Enqueue(
            "q",
            (
                c.NewMessage('"build"'),
                c.NewMessage('"test"', depends_on=(0,)),
                c.NewMessage('"ship"', depends_on=(1, 0)),
            ),
        ),
        T0,
    )
    build, test, ship = (i for i, _ in out)
    assert e.queue("q").counts()["waiting"] == 2
    assert e.message("q", ship).depends_on == (("q", test), ("q", build))
    assert e.queue("q").backlog(T0) == 1
    for expected in (build, test, ship):
        [d] = take(e, 5)
        assert d.id == expected
        ack(e, d)
    assert e.queue("q").counts()["waiting"] == 0


def test_cross_queue_dependency_and_a_delay_that_outlasts_the_wait():
    e = make()
    make(name="other", e=e)
    [dep] = put(e, '"first"', q="other")
    [mid] = put(e, '"second"', depends_on=(("other", dep),), delay_ms=10_000)
    assert state(e, mid) == "waiting"
    [d] = take(e, q="other")
    ack(e, d, q="other", t=T0 + 1000)
    assert state(e, mid) == "delayed"  # its deliver-at still lies ahead
    assert take(e, t=T0 + 9999) == []
    assert take(e, t=T0 + 10_000)[0].id == mid


def test_dependency_already_acked_counts_as_done():
    e = make()
    [dep] = put(e, '"a"')
    ack(e, take(e)[0])
    [mid] = put(e, '"b"', depends_on=(("q", dep),))
    assert state(e, mid) == "ready"


def test_unknown_dependency_or_queue_is_not_found_and_nothing_is_enqueued():
    e = make()
    with pytest.raises(NotFound, match="q/12345"):
        e.apply(c.Enqueue("q", (c.NewMessage('"a"'), c.NewMessage('"b"', depends_on=(("q", 12345),)))), T0)
    with pytest.raises(NotFound, match="nope"):
        put(e, '"b"', depends_on=(("nope", 1),))
    assert e.queue("q").depth() == 0


@pytest.mark.parametrize("deps", [(1,), (2,), (-1,), (("q",),), ("q",), (True,), (("q", "1"),), (("q", 2**63),)])
def test_bad_dependency_references_are_invalid(deps):
    e = make()
    with pytest.raises(Invalid):  # the second item of a batch of two: only index 0 is earlier
        e.apply(c.Enqueue("q", (c.NewMessage('"a"'), c.NewMessage('"b"', depends_on=deps))), T0)
    with pytest.raises(Invalid):
        put(e, '"first"', depends_on=(0,))  # the first item has no earlier one


def test_too_many_dependencies_are_invalid():
    e = make()
    ids = put(e, *['"x"'] * (MAX_DEPENDENCIES + 1))
    put(e, '"ok"', depends_on=tuple(("q", i) for i in ids[:MAX_DEPENDENCIES]))
    with pytest.raises(Invalid):
        put(e, '"no"', depends_on=tuple(("q", i) for i in ids))


def test_dead_lettered_dependency_fails_the_chain_with_a_reason():
    e = make({"max_deliveries": 1})
    out = e.apply(
        c.Enqueue(
            "q", (c.NewMessage('"a"'), c.NewMessage('"b"', depends_on=(0,)), c.NewMessage('"c"', depends_on=(1,)))
        ),
        T0,
    )
    a, b, cc = (i for i, _ in out)
    [d] = take(e)
    e.apply(c.Nack("q", a, d.lease_token, 0, "boom"), T0)
    for mid, dep in ((b, a), (cc, b)):
        info = e.message("q", mid)
        assert info.state == "dead" and info.dead_reason == "dependency_failed"
        assert info.last_error == f"dependency q/{dep} was dead-lettered"
    assert e.queue("q").counts()["waiting"] == 0


def test_cancelled_dependency_cancels_dependents_when_the_queue_says_so():
    e = make({"dependency_failure": "cancel"})
    [a] = put(e, '"a"')
    [b] = put(e, '"b"', depends_on=(("q", a),))
    [c2] = put(e, '"c"', depends_on=(("q", b),))
    assert e.apply(c.Cancel("q", a), T0) == "ready"
    for mid in (b, c2):
        with pytest.raises(NotFound):
            e.message("q", mid)
    # a dependency on a cancelled message fails the new one at once
    [d] = put(e, '"d"', depends_on=(("q", a),))
    with pytest.raises(NotFound):
        e.message("q", d)


def test_dependency_on_a_dead_letter_dead_letters_the_new_message_at_once():
    e = make({"max_deliveries": 1})
    [a] = put(e, '"a"')
    d = take(e)[0]
    e.apply(c.Nack("q", a, d.lease_token, 0, dead=True), T0)
    [b] = put(e, '"b"', depends_on=(("q", a),))
    assert e.message("q", b).dead_reason == "dependency_failed"


def test_expired_dependency_fails_its_dependents():
    e = make()
    make(name="other", e=e)
    [a] = put(e, '"a"', ttl_ms=1000, q="other")
    [b] = put(e, '"b"', depends_on=(("other", a),))
    e.apply(c.Tick(), T0 + 1000)
    assert e.message("q", b).last_error == f"dependency other/{a} expired"


def test_waiting_message_can_expire_be_cancelled_and_reprioritised():
    e = make()
    [a] = put(e, '"a"')
    [b] = put(e, '"b"', depends_on=(("q", a),), ttl_ms=1000)
    [w] = put(e, '"w"', depends_on=(("q", a),))
    e.apply(c.SetPriority("q", w, 0), T0)
    assert e.message("q", w).priority == 0
    assert e.apply(c.Cancel("q", w), T0) == "waiting"
    e.apply(c.Tick(), T0 + 1000)
    assert e.message("q", b).dead_reason == "expired"
    assert e.queue("q").counts()["waiting"] == 0
    ack(e, take(e, t=T0 + 1000)[0], t=T0 + 1000)  # a's ack finds no one waiting any more


def test_deleting_a_queue_fails_the_dependents_of_its_messages():
    e = make()
    make(name="other", e=e)
    [a] = put(e, '"a"', q="other")
    [b] = put(e, '"b"', depends_on=(("other", a),))
    e.apply(c.DeleteQueue("other"), T0)
    assert e.message("q", b).last_error == f"dependency other/{a} was deleted with its queue"


def test_duplicate_ignores_depends_on_and_a_batch_reference_to_a_duplicate_means_the_original():
    e = make()
    [a] = put(e, '"a"', dedup_key="k")
    out = e.apply(
        c.Enqueue(
            "q", (c.NewMessage('"a"', dedup_key="k", depends_on=(("q", 999999),)), c.NewMessage('"b"', depends_on=(0,)))
        ),
        T0,
    )
    assert out[0] == (a, True)
    assert e.message("q", out[1][0]).depends_on == (("q", a),)


# ---- dead-letter routing and paced redrive ----------------------------------------------------------


def test_dead_letters_route_to_the_dead_letter_queue_as_new_messages():
    e = make(name="dlq")
    make({"dead_letter_queue": "dlq", "max_deliveries": 1}, e=e)
    [a] = put(e, '"a"', headers={"k": "v"})
    d = take(e)[0]
    e.apply(c.Nack("q", a, d.lease_token, 0, "boom"), T0)
    assert e.queue("q").counts()["dead"] == 0
    [got] = take(e, q="dlq")
    assert got.payload == '"a"' and got.id != a
    assert got.headers == {"k": "v", "x-rankq-dead-from": f"q/{a}", "x-rankq-dead-reason": "max_deliveries"}


def test_dead_letter_queue_is_another_queue_and_dead_letters_stay_while_it_is_missing():
    e = make({"max_deliveries": 1})
    with pytest.raises(Invalid):
        e.apply(c.UpdateQueue("q", {"dead_letter_queue": "q"}), T0)
    e.apply(c.UpdateQueue("q", {"dead_letter_queue": "later"}), T0)
    [a] = put(e, '"a"')
    e.apply(c.Nack("q", a, take(e)[0].lease_token, 0), T0)
    assert state(e, a) == "dead"
    make({"message_ttl_ms": 5000}, name="later", e=e)
    [b] = put(e, '"b"')
    e.apply(c.Nack("q", b, take(e)[0].lease_token, 0), T0)
    [routed] = e.queue("later").messages.values()
    assert routed.get_extra("expires_at") == T0 + 5000  # the target's message_ttl applies
    e.apply(c.Tick(), T0 + 5000)
    assert e.queue("later").counts()["dead"] == 1


def _with_dead(n, settings=None):
    e = make({"max_deliveries": 1, **(settings or {})})
    ids = put(e, *[f'"{i}"' for i in range(n)])
    for d in take(e, n):
        e.apply(c.Nack("q", d.id, d.lease_token, 0), T0)
    assert e.queue("q").counts()["dead"] == n
    return e, ids


def test_paced_redrive_moves_at_the_rate_and_reports_progress():
    e, ids = _with_dead(10)
    res = e.apply(c.Redrive("q", rate=4), T0)
    assert res == {"job": {"rate": 4, "total": 10, "moved": 0, "remaining": 10, "started_at": T0, "state": "running"}}
    assert e.next_deadline() == T0 + 250
    e.apply(c.Tick(), T0 + 1000)
    assert e.queue("q").redrive_status()["moved"] == 4
    assert e.queue("q").counts()["ready"] == 4
    with pytest.raises(Conflict):
        e.apply(c.Redrive("q", rate=1), T0 + 1000)
    e.apply(c.Tick(), T0 + 2500)
    status = e.queue("q").redrive_status()
    assert status["state"] == "done" and status["moved"] == 10 and status["remaining"] == 0
    assert [d.id for d in take(e, 10, t=T0 + 2500)] == ids


def test_stop_redrive_keeps_what_moved_and_the_status_stays_readable():
    e, ids = _with_dead(10)
    with pytest.raises(NotFound):
        e.apply(c.StopRedrive("q"), T0)
    e.apply(c.Redrive("q", ids=tuple(ids[:6]), rate=2), T0)
    e.apply(c.Tick(), T0 + 1500)
    status = e.apply(c.StopRedrive("q"), T0 + 1500)
    assert status["state"] == "stopped" and status["moved"] == 3 and status["remaining"] == 3
    e.apply(c.Tick(), T0 + 10_000)
    assert e.queue("q").counts() == {**e.queue("q").counts(), "dead": 7, "ready": 3}
    assert e.queue("q").redrive_status()["state"] == "stopped"
    # a new job may start once the old one stopped
    assert e.apply(c.Redrive("q", rate=1000), T0 + 10_000)["job"]["total"] == 7


def test_redrive_job_survives_snapshot_and_backup():
    e, _ = _with_dead(6)
    e.apply(c.Redrive("q", rate=2), T0)
    e.apply(c.Tick(), T0 + 1000)
    copy = pickle.loads(pickle.dumps(e))
    fresh = Engine()
    records = [json.loads(json.dumps(r)) for r in e.export()]
    fresh.apply(c.Restore("r", 0, tuple(records)), e.now)
    for other in (e, copy, fresh):
        other.apply(c.Tick(), T0 + 2000)
        assert other.queue("q").redrive_status() == {
            "rate": 2,
            "total": 6,
            "moved": 4,
            "remaining": 2,
            "started_at": T0,
            "state": "running",
        }


def test_waiting_messages_survive_backup_and_still_wait():
    e = make()
    make(name="other", e=e)
    [a] = put(e, '"a"', q="other", ttl_ms=100_000)
    [done] = put(e, '"done"')
    ack(e, take(e)[0])
    [b] = put(e, '"b"', depends_on=(("other", a), ("q", done)))
    fresh = Engine()
    records = [json.loads(json.dumps(r)) for r in e.export()]
    fresh.apply(c.Restore("r", 0, tuple(records)), e.now)
    assert fresh.message("q", b).state == "waiting"
    assert fresh.message("q", b).depends_on == (("other", a), ("q", done))
    assert fresh.message("other", a).expires_at == T0 + 100_000
    ack(fresh, take(fresh, q="other")[0], q="other")
    assert fresh.message("q", b).state == "ready"


def test_a_snapshot_of_an_earlier_build_loads_and_gains_the_new_state():
    e = make({"fair_groups": True})
    put(e, '"a1"', '"a2"', group="a")
    put(e, '"b1"', group="b")
    # take away what builds before these features did not have
    del e.__dict__["links"]
    for q in e.queues.values():
        for name in (
            "links",
            "n_waiting",
            "expiries",
            "bucket",
            "group_buckets",
            "throttled_until",
            "cancelled",
            "cancelled_purge",
            "redrive_job",
        ):
            del q.__dict__[name]
        for level in q.ready.levels.values():
            del level.group_cw
    old = pickle.loads(pickle.dumps(e))
    assert old.links.queues is old.queues and old.queue("q").links is old.links
    old.apply(c.UpdateQueue("q", {"group_weights": {"b": 2}, "rate_limit": 5}), T0)
    [dep] = put(old, '"dep"', group="b")
    [mid] = put(old, '"after"', depends_on=(("q", dep),), ttl_ms=60_000)
    assert old.message("q", mid).state == "waiting"
    got = take(old, 10)
    assert len(got) == 4  # the waiting one is not deliverable
    for d in got:
        ack(old, d)
    assert old.message("q", mid).state == "ready"
