"""Task semantics in a 3-node group across a leader failover (kill -9): dependencies and rate limits
live in the replicated state, so a new leader goes on enforcing them where the old one stopped."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from serverproc import wait_for

pytestmark = pytest.mark.timeout(240)

RATE = 20  # deliveries per second of the rate-limited queue (its burst is the same)
RUN = 8.0  # seconds the consumers run at least; the leader is killed once they have got going
PAIRS = 30


class Group:
    """Calls to whichever member answers: a member going away (or one without a leader) is skipped."""

    def __init__(self, g) -> None:
        self.g = g
        self.turn = 0

    def call(self, method: str, path: str, body=None, timeout: float = 20.0, ok=(200, 201)):
        deadline = time.monotonic() + timeout
        while True:
            nodes = self.g.running()
            node = nodes[self.turn % len(nodes)]
            self.turn += 1
            try:
                r = httpx.request(method, node.url + "/api/v1" + path, json=body, timeout=10)
                if r.status_code in ok:
                    return r
                if r.status_code != 503:
                    return r
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{method} {path}: no member answered within {timeout}s")
            time.sleep(0.05)


def test_dependencies_and_rate_limits_hold_across_a_leader_failover(cluster):
    g = cluster(3)
    rq = Group(g)
    for name, settings in (
        ("parents", {"visibility_timeout": 2}),
        ("children", {"visibility_timeout": 2}),
        ("limited", {"rate_limit": RATE, "visibility_timeout": 60}),
    ):
        assert rq.call("POST", "/queues", {"name": name, **settings}).status_code == 201
    parents = [
        m["id"]
        for m in rq.call(
            "POST", "/queues/parents/messages/batch", {"messages": [{"payload": i} for i in range(PAIRS)]}
        ).json()["results"]
    ]
    children = rq.call(
        "POST",
        "/queues/children/messages/batch",
        {
            "messages": [
                {"payload": i, "depends_on": [{"queue": "parents", "id": pid}]} for i, pid in enumerate(parents)
            ]
        },
    ).json()
    child_of = {pid: r["id"] for pid, r in zip(parents, children["results"])}
    parent_of = {cid: pid for pid, cid in child_of.items()}
    assert rq.call("GET", "/queues/children").json()["counts"]["waiting"] == PAIRS
    rq.call("POST", "/queues/limited/messages/batch", {"messages": [{"payload": i} for i in range(1000)]})

    first_ack_sent: dict[int, float] = {}  # parent id -> when its first ack was sent
    child_delivered: dict[int, float] = {}  # child id -> when it was first received
    limited: list[float] = []  # when each delivery of the limited queue was received
    stop = threading.Event()
    errors: list[str] = []

    def dequeue(queue: str, wait: float, max: int = 100) -> list[dict]:
        r = rq.call("POST", f"/queues/{queue}/dequeue", {"max": max, "wait": wait})
        if r.status_code != 200:
            errors.append(r.text)
            return []
        return r.json()["messages"]

    def guarded(fn):
        def run() -> None:
            try:
                fn()
            except Exception as err:  # a thread's failure fails the test
                errors.append(repr(err))

        return run

    def tasks() -> None:
        """Acks parents slowly (one per round) and children at once; a child must never come first."""
        while not stop.wait(0.05):
            for m in dequeue("children", 0):
                child_delivered.setdefault(m["id"], time.monotonic())
                rq.call(
                    "POST", f"/queues/children/messages/{m['id']}/ack", {"lease_token": m["lease_token"]}, ok=(200, 409)
                )
            for m in dequeue("parents", 0, max=1):
                first_ack_sent.setdefault(m["id"], time.monotonic())
                rq.call(
                    "POST", f"/queues/parents/messages/{m['id']}/ack", {"lease_token": m["lease_token"]}, ok=(200, 409)
                )  # 409: a retry after a commit whose answer was lost

    def consume() -> None:
        while not stop.is_set():
            got = dequeue("limited", 1)
            now = time.monotonic()
            limited.extend([now] * len(got))

    threads = [threading.Thread(target=guarded(f)) for f in (tasks, consume, consume)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(first_ack_sent) >= 5 and len(limited) >= RATE, 30, "the run to get going")
        old = g.leader()
        old.kill9()
        killed_at = time.monotonic()
        new = g.leader(timeout=15)
        assert new is not old
        # The run ends once every child was delivered, and not before RUN seconds (the rate is measured over it).
        try:
            wait_for(
                lambda: len(child_delivered) == PAIRS and time.monotonic() - t0 >= RUN,
                90,
                "every child to be delivered",
            )
        except TimeoutError as err:
            raise AssertionError(
                f"{err}: {len(first_ack_sent)} parents acked, {len(child_delivered)} children "
                f"delivered, errors {errors[:3]}"
            ) from None
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    elapsed = time.monotonic() - t0
    assert not errors, errors[:3]

    # Dependencies: every child delivered came after its parent's ack was sent.
    assert child_delivered, "no child was delivered"
    early = [
        cid
        for cid, at in child_delivered.items()
        if parent_of[cid] not in first_ack_sent or at < first_ack_sent[parent_of[cid]]
    ]
    assert not early, f"children delivered before their parents' acks: {early}"
    assert any(at > killed_at for at in child_delivered.values()), "no dependent delivered after the failover"
    # Every member has applied the same outcome: no child left waiting.
    for n in g.running():
        wait_for(
            lambda n=n: httpx.get(n.url + "/api/v1/queues/children", timeout=5).json()["counts"]["waiting"] == 0,
            15,
            f"{n.node_id} to apply the acks",
        )

    # Rate limit: over the whole run, deliveries stay within burst + rate x time.
    allowed = RATE + RATE * elapsed
    assert len(limited) <= allowed, f"{len(limited)} deliveries in {elapsed:.1f}s at {RATE}/s (allowed {allowed:.0f})"
    assert any(at > killed_at for at in limited), "rate-limited deliveries did not resume after the failover"
