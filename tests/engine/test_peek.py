"""Peek shows the next ready messages in the exact order a dequeue would lease them, leasing nothing."""

from __future__ import annotations

import pickle
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rankq.engine import Engine, Invalid
from rankq.engine import commands as c

T0 = 1_000_000

SETTINGS = [
    {},
    {"policy": "weighted"},
    {"fair_groups": True},
    {"fair_groups": True, "group_max_inflight": 2},
    {"policy": "weighted", "fair_groups": True, "group_max_inflight": 1},
    {"fair_groups": True, "group_weights": {"a": 3, "b": 2}},
    {"policy": "weighted", "fair_groups": True, "group_weights": {"c": 4}, "group_max_inflight": 2},
]


def fill(e: Engine, rng: random.Random, n: int, weighted: bool) -> None:
    prios = (1, 2, 3, 4, 5) if weighted else (0, 1, 2, 7)
    msgs = tuple(c.NewMessage('"x"', priority=rng.choice(prios), group=rng.choice("abc")) for _ in range(n))
    e.apply(c.Enqueue("q", msgs), T0)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    cfg=st.sampled_from(SETTINGS),
    n=st.integers(1, 60),
    taken=st.integers(0, 20),
    limit=st.integers(1, 40),
)
def test_peek_matches_the_next_dequeue_and_changes_nothing(seed, cfg, n, taken, limit):
    rng = random.Random(seed)
    e = Engine()
    e.apply(c.CreateQueue("q", cfg, b"s" * 16), T0)
    fill(e, rng, n, cfg.get("policy") == "weighted")
    if taken:
        got = e.apply(c.Dequeue("q", taken), T0)
        for d in got[: len(got) // 2]:  # some come back ready, leaving stale heap entries behind
            e.apply(c.Nack("q", d.id, d.lease_token, 0, None, 0.0), T0)
    before = pickle.dumps(e)
    peeked = [m.id for m in e.queue("q").peek(limit)]
    assert pickle.dumps(e) == before, "peek changed the engine"
    leased = [d.id for d in e.apply(c.Dequeue("q", limit), T0)]
    assert peeked == leased


def test_oldest_ready_is_the_longest_waiting():
    e = Engine()
    e.apply(c.CreateQueue("q", {}, b"s" * 16), T0)
    assert e.queue("q").oldest_ready_at() is None
    e.apply(c.Enqueue("q", (c.NewMessage('"a"', priority=5),)), T0)
    e.apply(c.Enqueue("q", (c.NewMessage('"b"', priority=1),)), T0 + 500)
    assert e.queue("q").oldest_ready_at() == T0
    e.apply(c.Dequeue("q", 2), T0 + 600)
    assert e.queue("q").oldest_ready_at() is None


def test_peek_limit_is_checked():
    e = Engine()
    e.apply(c.CreateQueue("q", {}, b"s" * 16), T0)
    with pytest.raises(Invalid):
        e.queue("q").peek(0)
