"""Property tests of the engine: random command sequences against a simple model of the rules.

Two queues: `q`, where most rules act, and `d`, which holds messages `q`'s may depend on and takes
`q`'s dead letters when `q` routes them there. Beside the per-rule checks against the model (the
token bucket, what a new message with dependencies becomes, the redrive pace), each run ends by
replaying its log on a fresh engine and by round-tripping the state through a snapshot.
"""

from __future__ import annotations

import pickle
from fractions import Fraction
from math import floor

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rankq.engine import Conflict, Engine, EngineError, NotFound
from rankq.engine import commands as c
from rankq.engine.message import DEAD, DELAYED, LEASED, READY, WAITING

GROUPS = ["a", "b", "c"]
DEAD_FROM = "x-rankq-dead-from"


def snapshot(engine: Engine) -> dict:
    """A canonical picture of the whole state, for comparing replicas."""
    out: dict = {
        "seq": engine.seq,
        "now": engine.now,
        "waiters": sorted((k, tuple(v)) for k, v in engine.links.waiters.items()),
    }
    for name, q in engine.queues.items():
        out[name] = (
            q.config.as_dict(),
            sorted(
                (m.id, m.state, m.priority, m.group, m.deliveries, m.due, m.token, repr(m.extra))
                for m in q.messages.values()
            ),
            sorted((m.id, m.deliveries, m.due, repr(m.extra)) for m in q.dead.values()),
            sorted(q.acked.items()),
            q.counts(),
            sorted(q.cancelled.items()),
            q.bucket,
            sorted(q.group_buckets.items()),
            q.throttled_until,
            repr(q.redrive_job),
            sorted(q.expiries),
            q.next_deadline(),
        )
    return out


class EngineMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.engine = Engine()
        self.log: list[tuple[object, int]] = []
        self.now = 1_000
        self.fair = False
        self.cap = None
        self.apply(c.CreateQueue("d", {}, b"d" * 16))
        self.apply(
            c.CreateQueue("q", {"max_deliveries": 3, "visibility_timeout_ms": 1000, "retry_base_ms": 100}, b"k" * 16)
        )
        self.leases: dict[int, str] = {}  # id -> token we hold
        self.old_tokens: dict[int, str] = {}
        self.known: set[int] = set()  # every id ever enqueued
        self.finished: set[int] = set()  # acked or cancelled
        self.d_known: set[int] = set()  # ids enqueued to d (dependencies of q's messages)
        self.routed: set[int] = set()  # ids of q's dead letters that d received (and we acked there)
        self.redriven: set[int] = set()  # ids that came back from the dead letters (their dependencies may be dead)
        self.bucket: tuple[Fraction, int] | None = None  # the model of q's token bucket: (tokens, at)

    def apply(self, cmd):
        self.log.append((cmd, self.now))
        return self.engine.apply(cmd, self.now)

    @property
    def q(self):
        return self.engine.queues["q"]

    @rule(
        n=st.integers(1, 5),
        prio=st.integers(0, 3),
        group=st.sampled_from(GROUPS),
        delay=st.one_of(st.none(), st.integers(1, 3000)),
    )
    def enqueue(self, n, prio, group, delay):
        msgs = tuple(c.NewMessage('"x"', priority=prio, group=group, delay_ms=delay) for _ in range(n))
        out = self.apply(c.Enqueue("q", msgs))
        assert len(out) == n and len({i for i, _ in out}) == n
        self.known.update(i for i, _ in out)

    @rule(key=st.sampled_from(["k1", "k2"]))
    def enqueue_dedup(self, key):
        first = self.apply(c.Enqueue("q", (c.NewMessage('"d"', dedup_key=key),)))[0]
        again = self.apply(c.Enqueue("q", (c.NewMessage('"d"', dedup_key=key),)))[0]
        assert again == (first[0], True)
        self.known.add(first[0])

    @rule(n=st.integers(1, 4))
    def dequeue(self, n):
        q = self.q
        cfg = q.config
        ready_before = [m for m in q.messages.values() if m.state == READY]
        inflight_before = dict(q.inflight_by_group)
        leased_before = q.n_leased
        peeked = [m.id for m in q.peek(n)]
        tokens = None
        if cfg.rate_limit is not None:  # the token bucket, as the contract words it
            size = cfg.rate_burst or cfg.rate_limit
            level = (
                Fraction(size)
                if self.bucket is None
                else min(Fraction(size), self.bucket[0] + Fraction((self.now - self.bucket[1]) * cfg.rate_limit, 1000))
            )
            tokens = floor(level)
        got = self.apply(c.Dequeue("q", n))
        assert len(got) <= n
        if tokens is not None:
            self.bucket = (level - len(got), self.now)
        room = None if cfg.max_inflight is None else max(0, cfg.max_inflight - leased_before)
        if cfg.max_inflight is not None and got:
            assert q.n_leased <= cfg.max_inflight
        expected = min(x for x in (n, len(ready_before), tokens, room) if x is not None)
        if tokens is not None and tokens < min(n, len(ready_before)):
            event("dequeue held back by the rate limit")
        if room is not None and room < min(n, len(ready_before)):
            event("dequeue held back by max_inflight")
        if not self.fair:
            assert len(got) == expected, "a dequeue got fewer (or more) than the ready messages, tokens and slots allow"
        else:
            assert len(got) <= expected
        if not (self.fair and cfg.group_rate_limit is not None):
            # the order is peek's; a limit only cuts it short
            assert [d.id for d in got] == peeked[: len(got)]
        if self.fair and self.cap is not None:
            # A group at its cap gets nothing new, and no group is pushed past the cap.
            for g in {d.group for d in got}:
                assert inflight_before.get(g, 0) < self.cap
                assert q.inflight_by_group[g] <= self.cap
        if not self.fair and q.config.policy == "strict" and got:
            # Strict policy: the first one out has the lowest priority among the ready ones, and
            # is the oldest of that priority.
            best = min(m.priority for m in ready_before)
            assert got[0].priority == best
            assert got[0].id == min(m.id for m in ready_before if m.priority == best)
        for d in got:
            assert self.q.messages[d.id].state == LEASED
            if d.id in self.leases:
                self.old_tokens[d.id] = self.leases[d.id]
            self.leases[d.id] = d.lease_token

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def ack(self, data):
        mid = data.draw(st.sampled_from(sorted(self.leases)))
        token = self.leases.pop(mid)
        self.old_tokens[mid] = token  # from now on this token must never work again
        [res] = self.apply(c.Ack("q", (c.AckItem(mid, token, {"r": mid}),)))
        msg = self.q.messages.get(mid)
        if res is None:
            assert msg is None and self.q.acked[mid][2] == {"r": mid}
            self.finished.add(mid)
        else:
            # Only a lease that expired (or was already replaced) may be refused.
            assert isinstance(res, (Conflict, NotFound))

    @precondition(lambda self: self.old_tokens)
    @rule(data=st.data())
    def stale_token_is_refused(self, data):
        mid = data.draw(st.sampled_from(sorted(self.old_tokens)))
        token = self.old_tokens.pop(mid)
        if self.leases.get(mid) == token:
            return
        [res] = self.apply(c.Ack("q", (c.AckItem(mid, token),)))
        assert isinstance(res, (Conflict, NotFound)), "a stale lease token must never ack"

    @precondition(lambda self: self.leases)
    @rule(data=st.data(), delay=st.one_of(st.none(), st.integers(0, 500)))
    def nack(self, data, delay):
        mid = data.draw(st.sampled_from(sorted(self.leases)))
        token = self.leases.pop(mid)
        self.old_tokens[mid] = token
        try:
            res = self.apply(c.Nack("q", mid, token, delay, "boom", 0.5))
        except EngineError:
            return
        assert res["state"] in ("ready", "delayed", "dead")

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def release(self, data):
        mid = data.draw(st.sampled_from(sorted(self.leases)))
        token = self.leases.pop(mid)
        self.old_tokens[mid] = token
        msg = self.q.messages.get(mid)
        before = None if msg is None or msg.token != token else msg.deliveries
        try:
            self.apply(c.Release("q", mid, token))
        except EngineError:
            assert before is None, "a live lease must be releasable"
            return
        after = self.q.messages.get(mid)
        if after is None:  # it expired while leased
            assert msg.get_extra("expires_at") <= self.now
            return
        assert after.state == READY and after.deliveries == before - 1, "a release does not count a delivery"

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def reject(self, data):
        mid = data.draw(st.sampled_from(sorted(self.leases)))
        token = self.leases.pop(mid)
        self.old_tokens[mid] = token
        try:
            res = self.apply(c.Nack("q", mid, token, None, "bad input", 0.5, True))
        except EngineError:
            return
        assert res["state"] == "dead" and mid not in self.q.messages
        assert (mid in self.q.dead) != (self.q.config.dead_letter_queue is not None)

    @invariant()
    def backlog_counts_ready_leased_and_due(self):
        q = self.q
        due = sum(1 for m in q.messages.values() if m.state == DELAYED and m.due <= self.engine.now)
        assert q.backlog(self.engine.now) == q.n_ready + q.n_leased + due
        later = self.engine.now + 1500
        due_later = sum(1 for m in q.messages.values() if m.state == DELAYED and m.due <= later)
        assert q.backlog(later) == q.n_ready + q.n_leased + due_later

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def extend(self, data):
        mid = data.draw(st.sampled_from(sorted(self.leases)))
        try:
            due = self.apply(c.Extend("q", mid, self.leases[mid], 2000))
            assert due == self.engine.now + 2000
        except EngineError:
            self.leases.pop(mid)

    @rule(ms=st.integers(1, 2500))
    def time_passes(self, ms):
        self.now += ms
        self.apply(c.Tick())
        for m in self.q.messages.values():
            assert not (m.state in (DELAYED, LEASED) and m.due <= self.engine.now), "a due deadline was not applied"
            expires = m.get_extra("expires_at")
            assert not (m.state != LEASED and expires is not None and expires <= self.now), "an expiry was not applied"
        for m in self.q.dead.values():
            if m.get_extra("dead_reason") == "expired":
                assert m.get_extra("expires_at") <= self.now

    @rule(data=st.data())
    def cancel(self, data):
        ids = sorted(m.id for m in self.q.messages.values() if m.state in (READY, DELAYED, WAITING))
        if not ids:
            return
        mid = data.draw(st.sampled_from(ids))
        self.apply(c.Cancel("q", mid))
        self.finished.add(mid)

    @rule(data=st.data(), prio=st.integers(0, 3))
    def set_priority(self, data, prio):
        ids = sorted(m.id for m in self.q.messages.values() if m.state in (READY, DELAYED))
        if not ids:
            return
        mid = data.draw(st.sampled_from(ids))
        self.apply(c.SetPriority("q", mid, prio))
        assert self.q.messages[mid].priority == prio

    @rule()
    def redrive_all(self):
        dead = set(self.q.dead)
        res = self.apply(c.Redrive("q"))
        assert set(res["redriven"]) == dead and not self.q.dead
        self.redriven |= dead

    @rule(rate=st.integers(1, 5), some=st.booleans())
    def redrive_paced(self, rate, some):
        job = self.q.redrive_status()
        dead = sorted(self.q.dead)
        ids = tuple(dead[::2]) if some else None
        try:
            res = self.apply(c.Redrive("q", ids, rate))
        except Conflict:
            assert job is not None and job["state"] == "running", "a redrive refused while none was running"
            return
        assert job is None or job["state"] != "running", "a second paced redrive started beside a running one"
        assert res["job"]["total"] == len(dead if ids is None else ids) and res["job"]["state"] in ("running", "done")
        self.redriven |= set(dead if ids is None else ids)

    @rule()
    def stop_redrive(self):
        job = self.q.redrive_status()
        try:
            status = self.apply(c.StopRedrive("q"))
        except NotFound:
            assert job is None
            return
        assert status["state"] == ("stopped" if job["state"] == "running" else job["state"])
        assert status["moved"] == job["moved"]

    @invariant()
    def redrive_keeps_its_pace(self):
        job = self.q.redrive_status()
        if job is None:
            return
        taken = job["total"] - job["remaining"]
        assert job["moved"] <= taken <= job["total"]
        event(f"redrive job {job['state']}")
        if job["state"] != "stopped":
            assert taken == min(job["total"], (self.engine.now - job["started_at"]) * job["rate"] // 1000)
            assert (job["state"] == "done") == (taken == job["total"])

    @rule(fair=st.booleans(), cap=st.one_of(st.none(), st.integers(1, 2)), weighted=st.booleans())
    def reconfigure(self, fair, cap, weighted):
        changes = {
            "fair_groups": fair,
            "group_max_inflight": cap,
            "policy": "weighted" if weighted else "strict",
            "weights": {0: 5, 1: 4, 2: 2, 3: 1},
            "default_priority": 1,
        }
        self.apply(c.UpdateQueue("q", changes))
        self.fair, self.cap = fair, cap

    @rule(
        rate=st.one_of(st.none(), st.integers(1, 4)),
        burst=st.one_of(st.none(), st.integers(1, 3)),
        group_rate=st.one_of(st.none(), st.integers(1, 3)),
        inflight=st.one_of(st.none(), st.integers(1, 4)),
        group_weights=st.sampled_from([{}, {"a": 3, "b": 2}, {"c": 5}]),
        ttl=st.one_of(st.none(), st.integers(500, 5000)),
        failure=st.sampled_from(["dead_letter", "cancel"]),
        route=st.booleans(),
    )
    def reconfigure_tasks(self, rate, burst, group_rate, inflight, group_weights, ttl, failure, route):
        self.apply(
            c.UpdateQueue(
                "q",
                {
                    "rate_limit": rate,
                    "rate_burst": burst,
                    "group_rate_limit": group_rate,
                    "max_inflight": inflight,
                    "group_weights": group_weights,
                    "message_ttl_ms": ttl,
                    "dependency_failure": failure,
                    "dead_letter_queue": "d" if route else None,
                },
            )
        )

    # ---- dependencies and expiry ------------------------------------------------------------------

    @rule(n=st.integers(1, 3))
    def enqueue_d(self, n):
        out = self.apply(c.Enqueue("d", tuple(c.NewMessage('"dep"') for _ in range(n))))
        self.d_known.update(i for i, _ in out)

    @rule()
    def ack_one_in_d(self):
        got = self.apply(c.Dequeue("d", 1))
        for d in got:
            [res] = self.apply(c.Ack("d", (c.AckItem(d.id, d.lease_token),)))
            assert res is None
            if d.headers and DEAD_FROM in d.headers:
                self.routed.add(int(d.headers[DEAD_FROM].split("/")[1]))

    @rule(data=st.data(), n=st.integers(1, 4))
    def enqueue_with_dependencies(self, data, n):
        links = self.engine.links
        msgs = []
        for i in range(n):
            deps: list = []
            for _ in range(data.draw(st.integers(0, 3), label="dependencies")):
                kind = data.draw(st.sampled_from(["batch", "q", "d", "missing", "failed"]))
                failed = sorted(set(self.q.dead) | set(self.q.cancelled))
                if kind == "batch" and i > 0:
                    deps.append(data.draw(st.integers(0, i - 1)))
                elif kind == "q" and self.known:
                    deps.append(("q", data.draw(st.sampled_from(sorted(self.known)))))
                elif kind == "failed" and failed:
                    deps.append(("q", data.draw(st.sampled_from(failed))))
                elif kind == "d" and self.d_known:
                    deps.append(("d", data.draw(st.sampled_from(sorted(self.d_known)))))
                elif kind == "missing":
                    deps.append(data.draw(st.sampled_from([("q", 10**12), ("nowhere", 1)])))
            ttl = data.draw(st.one_of(st.none(), st.integers(1, 4000)), label="ttl")
            delay = data.draw(st.one_of(st.none(), st.integers(1, 3000)), label="delay")
            msgs.append(
                c.NewMessage(
                    '"t"',
                    group=data.draw(st.sampled_from(GROUPS)),
                    delay_ms=delay,
                    ttl_ms=ttl,
                    depends_on=tuple(deps) or None,
                )
            )
        external = {d for m in msgs for d in (m.depends_on or ()) if isinstance(d, tuple)}
        status = {d: links.status(*d) for d in external}
        depth = self.q.depth()
        try:
            out = self.apply(c.Enqueue("q", tuple(msgs)))
        except NotFound:
            assert None in status.values(), "a dependency that exists was not found"
            assert self.q.depth() == depth, "a refused batch left messages behind"
            return
        assert None not in status.values(), "a dependency that does not exist was accepted"
        ids = [i for i, _ in out]
        self.known.update(ids)
        # What each new message must have become: failed at once, waiting, or queued as usual.
        became: list[str] = []
        for m in msgs:
            outcomes = [became[d] if isinstance(d, int) else status[d] for d in (m.depends_on or ())]
            if any(o in ("dead", "cancelled", "failed") for o in outcomes):
                became.append("failed")
            elif any(o in ("live", "waiting", "queued") for o in outcomes):
                became.append("waiting")
            else:
                became.append("queued")
        for mid, expected, m in zip(ids, became, msgs):
            event(f"new message with dependencies: {expected}" if m.depends_on else "new message without")
            msg = self.q.messages.get(mid)
            if expected == "failed":
                assert msg is None, "a message whose dependency failed is still queued"
                if self.q.config.dependency_failure == "cancel":
                    assert mid in self.q.cancelled
                elif mid in self.q.dead:
                    assert self.q.dead[mid].get_extra("dead_reason") == "dependency_failed"
                else:
                    assert self.q.config.dead_letter_queue == "d"
            elif expected == "waiting":
                assert msg is not None and msg.state == WAITING
            else:
                assert msg is not None and msg.state == (DELAYED if m.delay_ms else READY)

    @invariant()
    def dependencies_hold(self):
        links = self.engine.links
        for name, q in self.engine.queues.items():
            for m in q.messages.values():
                deps = m.get_extra("depends_on")
                if m.state == WAITING:
                    statuses = [links.status(*k) for k in deps]
                    assert set(statuses) <= {"live", "acked"}, "a waiting message has a failed dependency"
                    live = [k for k, s in zip(deps, statuses) if s == "live"]
                    assert live, "a message waits though every dependency is acked"
                    assert m.get_extra("waiting_for") == len(live)
                    event("a message waits")
                    for k in live:
                        assert (name, m.id) in links.waiters.get(k, ()), "a waiting message is missing from the index"
                elif deps and m.id not in self.redriven:
                    assert all(links.status(*k) == "acked" for k in deps), "a message ran before its dependencies"

    @invariant()
    def counts_match_states(self):
        q = self.q
        states = [m.state for m in q.messages.values()]
        assert q.n_ready == states.count(READY)
        assert q.n_delayed == states.count(DELAYED)
        assert q.n_leased == states.count(LEASED)
        assert q.n_waiting == states.count(WAITING)
        assert q.counts()["waiting"] == q.n_waiting
        assert all(m.state == DEAD for m in q.dead.values())
        assert sum(q.inflight_by_group.values()) == q.n_leased

    @invariant()
    def nothing_lost_nothing_invented(self):
        q = self.q
        live = set(q.messages) | set(q.dead) | set(q.acked)
        assert live <= self.known, "a message appeared that was never enqueued"
        # Every message is live (queued, leased, dead, acked) or was finished by ack/cancel, by a
        # dependency's failure (cancel) or went to d as a routed dead letter (dead_letter is on and
        # retention is long, so nothing else may vanish).
        routed = set(self.routed)
        for m in self.engine.queues["d"].messages.values():
            headers = m.get_extra("headers") or {}
            if DEAD_FROM in headers:
                routed.add(int(headers[DEAD_FROM].split("/")[1]))
        assert self.known - live <= self.finished | set(q.cancelled) | routed

    def teardown(self):
        # Determinism: replaying the log on a fresh engine gives the same state, and so does a
        # snapshot round trip.
        replica = Engine()
        for cmd, now in self.log:
            try:
                replica.apply(cmd, now)
            except EngineError:
                pass
        assert snapshot(replica) == snapshot(self.engine)
        restored = pickle.loads(pickle.dumps(self.engine))
        assert snapshot(restored) == snapshot(self.engine)
        assert all(q.links is restored.links for q in restored.queues.values()), "a snapshot split the index"
        assert restored.links.queues is restored.queues
        # The copy goes on exactly as the original: nothing the future depends on was left out.
        start = self.engine.now
        future = [
            (cmd, start + 700 * (i + 1))
            for i, cmd in enumerate(
                (c.Tick(), c.Dequeue("q", 5), c.Dequeue("d", 5), c.Redrive("q", rate=3), c.Tick(), c.Dequeue("q", 5))
            )
        ]
        for engine in (self.engine, restored):
            for cmd, at in future:
                try:
                    engine.apply(cmd, at)
                except EngineError:
                    pass
        assert snapshot(restored) == snapshot(self.engine)


EngineMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestEngineProperties = EngineMachine.TestCase
