"""Property tests of the engine: random command sequences against a simple model of the rules."""

from __future__ import annotations

import pickle

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from rankq.engine import Conflict, Engine, EngineError, NotFound
from rankq.engine import commands as c
from rankq.engine.message import DEAD, DELAYED, LEASED, READY

GROUPS = ["a", "b", "c"]


def snapshot(engine: Engine) -> dict:
    """A canonical picture of the state, for comparing replicas."""
    out = {"seq": engine.seq, "now": engine.now}
    for name, q in engine.queues.items():
        out[name] = (
            q.config.as_dict(),
            sorted((m.id, m.state, m.priority, m.group, m.deliveries, m.due, m.token) for m in q.messages.values()),
            sorted((m.id, m.deliveries) for m in q.dead.values()),
            sorted(q.acked.items()),
            q.counts(),
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
        self.apply(c.CreateQueue("q", {"max_deliveries": 3, "visibility_timeout_ms": 1000, "retry_base_ms": 100}, b"k" * 16))
        self.leases: dict[int, str] = {}  # id -> token we hold
        self.old_tokens: dict[int, str] = {}
        self.known: set[int] = set()  # every id ever enqueued
        self.finished: set[int] = set()  # acked or cancelled

    def apply(self, cmd):
        self.log.append((cmd, self.now))
        return self.engine.apply(cmd, self.now)

    @property
    def q(self):
        return self.engine.queues["q"]

    @rule(n=st.integers(1, 5), prio=st.integers(0, 3), group=st.sampled_from(GROUPS),
          delay=st.one_of(st.none(), st.integers(1, 3000)))
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
        ready_before = [m for m in q.messages.values() if m.state == READY]
        inflight_before = dict(q.inflight_by_group)
        got = self.apply(c.Dequeue("q", n))
        assert len(got) <= n
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
        after = self.q.messages[mid]
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
        assert res["state"] == "dead" and mid in self.q.dead and mid not in self.q.messages

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

    @rule(data=st.data())
    def cancel(self, data):
        ids = sorted(m.id for m in self.q.messages.values() if m.state in (READY, DELAYED))
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

    @rule(fair=st.booleans(), cap=st.one_of(st.none(), st.integers(1, 2)), weighted=st.booleans())
    def reconfigure(self, fair, cap, weighted):
        changes = {"fair_groups": fair, "group_max_inflight": cap, "policy": "weighted" if weighted else "strict",
                   "weights": {0: 5, 1: 4, 2: 2, 3: 1}, "default_priority": 1}
        self.apply(c.UpdateQueue("q", changes))
        self.fair, self.cap = fair, cap

    @invariant()
    def counts_match_states(self):
        q = self.q
        states = [m.state for m in q.messages.values()]
        assert q.n_ready == states.count(READY)
        assert q.n_delayed == states.count(DELAYED)
        assert q.n_leased == states.count(LEASED)
        assert all(m.state == DEAD for m in q.dead.values())
        assert sum(q.inflight_by_group.values()) == q.n_leased

    @invariant()
    def nothing_lost_nothing_invented(self):
        q = self.q
        live = set(q.messages) | set(q.dead) | set(q.acked)
        assert live <= self.known, "a message appeared that was never enqueued"
        # Every message is live (queued, leased, dead, acked) or was finished by ack/cancel
        # (dead_letter is on and retention is long, so nothing else may vanish).
        assert self.known - live <= self.finished

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


EngineMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestEngineProperties = EngineMachine.TestCase
