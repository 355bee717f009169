"""Task semantics through HTTP and gRPC against a real server process: dependencies, message TTL,
rate limits and the in-flight cap, weighted fair groups, paced redrive, dead-letter routing, and
the 4xx (with Retry-After on 429) for every invalid use.

Each test runs once per API through a small adapter that speaks the API's own wire format (JSON
bodies, protobuf messages) and hands back the same plain values, so one test body states the
behaviour both APIs must show. Queues are created over HTTP; their settings' plumbing is tested
with the settings themselves.
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import grpc
import httpx
import pytest
from serverproc import wait_for

from rankq.engine.config import MAX_DEPENDENCIES
from rankq.server.proto import rankq_pb2 as pb
from rankq.server.proto import rankq_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(120)


class Refused(Exception):
    def __init__(self, status: int, detail: str, retry_after: str | None = None) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat().replace("+00:00", "Z")


def ms_of(text: str | None) -> int | None:
    return None if text is None else int(datetime.fromisoformat(text).timestamp() * 1000)


def now_ms() -> int:
    return int(time.time() * 1000)


class Http:
    """The HTTP API: JSON bodies under /api/v1."""

    name = "http"

    def __init__(self, client: httpx.Client) -> None:
        self.c = client

    def call(self, method: str, path: str, body=None):
        r = self.c.request(method, path, json=body)
        if r.status_code >= 400:
            raise Refused(r.status_code, r.json()["detail"], r.headers.get("retry-after"))
        return r.json() if r.content else None

    @staticmethod
    def _msg(payload, ttl=None, expires_at=None, depends_on=None, **kw) -> dict:
        body = {"payload": payload, **kw}
        if ttl is not None:
            body["ttl"] = ttl
        if expires_at is not None:
            body["expires_at"] = iso(expires_at)
        if depends_on is not None:
            body["depends_on"] = depends_on
        return body

    def enqueue(self, queue, payload, **kw) -> int:
        return self.call("POST", f"/queues/{queue}/messages", self._msg(payload, **kw))["id"]

    def enqueue_batch(self, queue, items: list[dict]) -> list[int]:
        body = {"messages": [self._msg(**item) for item in items]}
        return [r["id"] for r in self.call("POST", f"/queues/{queue}/messages/batch", body)["results"]]

    def dequeue(self, queue, max=1, wait=0.0) -> list[dict]:
        got = self.call("POST", f"/queues/{queue}/dequeue", {"max": max, "wait": wait})["messages"]
        return [
            {
                "id": m["id"],
                "token": m["lease_token"],
                "group": m["group"],
                "payload": m["payload"],
                "headers": m["headers"],
            }
            for m in got
        ]

    def ack(self, queue, mid, token) -> None:
        self.call("POST", f"/queues/{queue}/messages/{mid}/ack", {"lease_token": token})

    def nack(self, queue, mid, token, dead=False) -> str:
        return self.call("POST", f"/queues/{queue}/messages/{mid}/nack", {"lease_token": token, "dead": dead})["state"]

    def cancel(self, queue, mid) -> None:
        self.call("DELETE", f"/queues/{queue}/messages/{mid}")

    def status(self, queue, mid) -> dict:
        s = self.call("GET", f"/queues/{queue}/messages/{mid}")
        return {
            "state": s["state"],
            "depends_on": s["depends_on"],
            "expires_at": ms_of(s["expires_at"]),
            "dead_reason": s["dead_reason"],
            "last_error": s["last_error"],
        }

    def counts(self, queue) -> dict:
        return self.call("GET", f"/queues/{queue}")["counts"]

    def redrive(self, queue, ids=None, rate=None) -> dict:
        body = {} if ids is None else {"ids": ids}
        if rate is not None:
            body["rate"] = rate
        out = self.call("POST", f"/queues/{queue}/dlq/redrive", body)
        if out.get("job") is not None:
            out["job"]["started_at"] = ms_of(out["job"]["started_at"])
        return out

    def redrive_status(self, queue) -> dict:
        job = self.call("GET", f"/queues/{queue}/redrive")
        return {**job, "started_at": ms_of(job["started_at"])}

    def stop_redrive(self, queue) -> dict:
        job = self.call("DELETE", f"/queues/{queue}/redrive")
        return {**job, "started_at": ms_of(job["started_at"])}


class Grpc:
    """The gRPC API: rankq.v1.RankQ messages; errors read from `rankq-status`."""

    name = "grpc"

    def __init__(self, stub) -> None:
        self.stub = stub

    def call(self, method: str, request):
        try:
            return getattr(self.stub, method)(request, timeout=30)
        except grpc.RpcError as err:
            meta = dict(err.trailing_metadata() or ())
            raise Refused(int(meta.get("rankq-status", 0)), err.details(), meta.get("retry-after")) from None

    @staticmethod
    def _msg(payload, ttl=None, expires_at=None, depends_on=None, **kw) -> pb.NewMessage:
        m = pb.NewMessage(payload=json.dumps(payload).encode(), content_type="application/json", **kw)
        if ttl is not None:
            m.ttl = ttl
        if expires_at is not None:
            m.expires_at = expires_at
        for d in depends_on or ():
            m.depends_on.add(**d)
        return m

    def enqueue(self, queue, payload, **kw) -> int:
        return self.call("Enqueue", pb.EnqueueRequest(queue=queue, message=self._msg(payload, **kw))).id

    def enqueue_batch(self, queue, items: list[dict]) -> list[int]:
        req = pb.EnqueueBatchRequest(queue=queue, messages=[self._msg(**item) for item in items])
        return [r.id for r in self.call("EnqueueBatch", req).results]

    def dequeue(self, queue, max=1, wait=0.0) -> list[dict]:
        got = self.call("Dequeue", pb.DequeueRequest(queue=queue, max=max, wait=wait)).messages
        return [
            {
                "id": m.id,
                "token": m.lease_token,
                "group": m.group,
                "payload": json.loads(m.payload),
                "headers": dict(m.headers) or None,
            }
            for m in got
        ]

    def ack(self, queue, mid, token) -> None:
        self.call("Ack", pb.AckRequest(queue=queue, id=mid, lease_token=token))

    def nack(self, queue, mid, token, dead=False) -> str:
        return self.call("Nack", pb.NackRequest(queue=queue, id=mid, lease_token=token, dead=dead)).state

    def cancel(self, queue, mid) -> None:
        self.call("CancelMessage", pb.CancelMessageRequest(queue=queue, id=mid))

    def status(self, queue, mid) -> dict:
        s = self.call("GetMessage", pb.GetMessageRequest(queue=queue, id=mid))
        return {
            "state": s.state,
            "depends_on": [{"queue": d.queue, "id": d.id} for d in s.depends_on] or None,
            "expires_at": s.expires_at if s.HasField("expires_at") else None,
            "dead_reason": s.dead_reason if s.HasField("dead_reason") else None,
            "last_error": s.last_error if s.HasField("last_error") else None,
        }

    def counts(self, queue) -> dict:
        c = self.call("GetQueue", pb.GetQueueRequest(name=queue)).counts
        return {f.name: getattr(c, f.name) for f in pb.QueueCounts.DESCRIPTOR.fields}

    @staticmethod
    def _job(j: pb.RedriveJob) -> dict:
        return {
            "rate": j.rate,
            "total": j.total,
            "moved": j.moved,
            "remaining": j.remaining,
            "started_at": j.started_at,
            "state": j.state,
        }

    def redrive(self, queue, ids=None, rate=None) -> dict:
        res = self.call("Redrive", pb.RedriveRequest(queue=queue, ids=ids or [], all=ids is None, rate=rate))
        if res.HasField("job"):
            return {"redriven": [], "not_found": [], "job": self._job(res.job)}
        return {"redriven": list(res.redriven), "not_found": list(res.not_found), "job": None}

    def redrive_status(self, queue) -> dict:
        return self._job(self.call("GetRedrive", pb.RedriveJobRequest(queue=queue)))

    def stop_redrive(self, queue) -> dict:
        return self._job(self.call("StopRedrive", pb.RedriveJobRequest(queue=queue)))


@pytest.fixture(scope="module")
def channel(grpc_server):
    ch = grpc.insecure_channel(f"127.0.0.1:{grpc_server.grpc_port}")
    yield ch
    ch.close()


@pytest.fixture(params=["http", "grpc"])
def rq(request, api, channel):
    return Http(api) if request.param == "http" else Grpc(pb_grpc.RankQStub(channel))


@pytest.fixture
def make_queue(api, rq):
    """Create a queue (over HTTP) named after the test and the API under test."""

    def make(base: str, **settings) -> str:
        name = f"{base}-{rq.name}"
        r = api.post("/queues", json={"name": name, **settings})
        assert r.status_code == 201, r.text
        return name

    return make


def refused(fn, *args, **kw) -> Refused:
    with pytest.raises(Refused) as info:
        fn(*args, **kw)
    return info.value


# ---- dependencies ----------------------------------------------------------------------------------


def test_dependent_waits_until_its_dependency_is_acked(rq, make_queue):
    q = make_queue("deps")
    first = rq.enqueue(q, "first")
    second = rq.enqueue(q, "second", depends_on=[{"id": first}])
    st = rq.status(q, second)
    assert st["state"] == "waiting" and st["depends_on"] == [{"queue": q, "id": first}]
    counts = rq.counts(q)
    assert counts["waiting"] == 1 and counts["ready"] == 1
    assert counts["backlog"] == 1  # a waiting message is not work a consumer can do
    [m] = rq.dequeue(q, max=10)
    assert m["id"] == first  # the dependent is not delivered while its dependency is open
    assert rq.dequeue(q, max=10) == []
    rq.ack(q, m["id"], m["token"])
    assert rq.status(q, second)["state"] == "ready"
    [m2] = rq.dequeue(q, max=10)
    assert m2["id"] == second


def test_batch_items_depend_on_earlier_items_and_on_other_queues(rq, make_queue):
    upstream = make_queue("deps-up")
    q = make_queue("deps-batch")
    other = rq.enqueue(upstream, "elsewhere")
    a, b, c = rq.enqueue_batch(
        q,
        [
            {"payload": "a"},
            {"payload": "b", "depends_on": [{"batch_index": 0}]},
            {"payload": "c", "depends_on": [{"batch_index": 1}, {"queue": upstream, "id": other}]},
        ],
    )
    assert rq.status(q, b)["depends_on"] == [{"queue": q, "id": a}]  # the batch index resolved to its id
    assert rq.status(q, c)["depends_on"] == [{"queue": q, "id": b}, {"queue": upstream, "id": other}]
    assert rq.counts(q)["waiting"] == 2
    order = []
    for queue in (q, q):
        [m] = rq.dequeue(queue, max=10)
        order.append(m["id"])
        rq.ack(queue, m["id"], m["token"])
    assert order == [a, b]
    assert rq.status(q, c)["state"] == "waiting"  # still waits for the other queue's message
    [up] = rq.dequeue(upstream)
    rq.ack(upstream, up["id"], up["token"])
    [m] = rq.dequeue(q, wait=5)  # a dependency acked in another queue wakes this queue's long poll
    assert m["id"] == c


def test_failed_dependency_dead_letters_its_dependents(rq, make_queue):
    q = make_queue("deps-fail")
    parent = rq.enqueue(q, "parent")
    child = rq.enqueue(q, "child", depends_on=[{"id": parent}])
    grandchild = rq.enqueue(q, "grandchild", depends_on=[{"id": child}])
    [m] = rq.dequeue(q)
    assert rq.nack(q, m["id"], m["token"], dead=True) == "dead"
    assert rq.status(q, parent)["dead_reason"] == "rejected"
    for mid, dep in ((child, parent), (grandchild, child)):
        st = rq.status(q, mid)
        assert st["state"] == "dead" and st["dead_reason"] == "dependency_failed"
        assert f"{q}/{dep}" in st["last_error"], st["last_error"]
    # A new message naming a dead letter fails at once, the same way.
    late = rq.enqueue(q, "late", depends_on=[{"id": parent}])
    assert rq.status(q, late)["dead_reason"] == "dependency_failed"


def test_cancelled_dependency_cancels_dependents_when_the_queue_says_so(rq, make_queue):
    q = make_queue("deps-cancel", dependency_failure="cancel")
    parent = rq.enqueue(q, "parent", delay=60)
    rq.enqueue(q, "child", depends_on=[{"id": parent}])
    assert rq.counts(q)["waiting"] == 1
    rq.cancel(q, parent)
    counts = rq.counts(q)
    assert (counts["waiting"], counts["ready"], counts["delayed"], counts["dead"]) == (0, 0, 0, 0)


def test_dependency_mistakes_are_refused(rq, make_queue):
    q = make_queue("deps-bad")
    err = refused(rq.enqueue, q, "x", depends_on=[{"id": 10**12}])
    assert err.status == 404 and str(10**12) in err.detail
    err = refused(rq.enqueue, q, "x", depends_on=[{"queue": "no-such-queue", "id": 1}])
    assert err.status == 404 and "no-such-queue" in err.detail
    err = refused(rq.enqueue, q, "x", depends_on=[{"batch_index": 0}])
    assert err.status == 422 and "batch" in err.detail
    for index in (1, 2):  # itself, or a later item: a cycle could follow, so neither is allowed
        err = refused(
            rq.enqueue_batch,
            q,
            [{"payload": 0}, {"payload": 1, "depends_on": [{"batch_index": index}]}, {"payload": 2}],
        )
        assert err.status == 422 and "earlier" in err.detail, err.detail
    mid = rq.enqueue(q, "ok")
    err = refused(rq.enqueue, q, "x", depends_on=[{"id": mid}] * (MAX_DEPENDENCIES + 1))
    assert err.status == 422 and str(MAX_DEPENDENCIES) in err.detail
    counts = rq.counts(q)
    assert counts["ready"] == 1 and counts["waiting"] == 0  # nothing refused was written


# ---- message TTL -------------------------------------------------------------------------------------


def test_expired_messages_are_dead_lettered_as_expired(rq, make_queue):
    q = make_queue("ttl")
    short = rq.enqueue(q, "short", ttl=0.3)
    until = now_ms() + 400
    absolute = rq.enqueue(q, "absolute", expires_at=until)
    keeps = rq.enqueue(q, "keeps", ttl=600)
    st = rq.status(q, absolute)
    assert st["expires_at"] == until
    assert rq.status(q, keeps)["expires_at"] >= now_ms() + 590_000
    for mid in (short, absolute):
        wait_for(lambda mid=mid: rq.status(q, mid)["state"] == "dead", 10, "the message to expire")
        assert rq.status(q, mid)["dead_reason"] == "expired"
    assert [m["id"] for m in rq.dequeue(q, max=10)] == [keeps]


def test_queue_message_ttl_applies_to_messages_without_one(rq, make_queue):
    q = make_queue("ttl-queue", message_ttl=0.3)
    waiting_parent = rq.enqueue(q, "parent", ttl=600)
    child = rq.enqueue(q, "child", depends_on=[{"id": waiting_parent}])  # waiting messages expire too
    wait_for(lambda: rq.status(q, child)["state"] == "dead", 10, "the waiting message to expire")
    assert rq.status(q, child)["dead_reason"] == "expired"
    assert rq.status(q, waiting_parent)["state"] == "ready"  # its own ttl is the earlier one


def test_ttl_mistakes_are_refused(rq, make_queue):
    q = make_queue("ttl-bad")
    for ttl in (0, -1):
        assert refused(rq.enqueue, q, "x", ttl=ttl).status == 422
    err = refused(rq.enqueue, q, "x", expires_at=now_ms() - 1000)
    assert err.status == 422 and "expir" in err.detail, err.detail
    assert rq.counts(q)["ready"] == 0


def test_expires_at_without_a_zone_is_refused_over_http(api):
    r = api.post("/queues", json={"name": "ttl-zone"})
    assert r.status_code == 201
    r = api.post("/queues/ttl-zone/messages", json={"payload": 1, "expires_at": "2099-01-01T00:00:00"})
    assert r.status_code == 422 and "expires_at" in r.json()["detail"], r.text


# ---- rate limits, in-flight cap, weighted groups ----------------------------------------------------


def test_rate_limit_bounds_deliveries_and_long_polls_wait_for_a_token(rq, make_queue):
    rate = 20
    q = make_queue("rate", rate_limit=rate, rate_burst=5)
    rq.enqueue_batch(q, [{"payload": i} for i in range(200)])
    first = rq.dequeue(q, max=100)
    assert 1 <= len(first) <= 5 + 1  # the burst (plus a token refilled meanwhile), not 100: fewer, not an error
    t0 = time.monotonic()
    got = len(first)
    while time.monotonic() - t0 < 2.0:
        got += len(rq.dequeue(q, max=100, wait=1))  # a long poll returns when a token appears
    elapsed = time.monotonic() - t0
    assert got <= 5 + rate * elapsed + 2, (got, elapsed)
    assert got >= 0.6 * rate * elapsed, (got, elapsed)  # and the limit is not far below the rate


def test_group_rate_limit_and_max_inflight(rq, make_queue):
    q = make_queue("grouprate", fair_groups=True, group_rate_limit=3)
    rq.enqueue_batch(q, [{"payload": i, "group": g} for g in ("a", "b") for i in range(10)])
    got = rq.dequeue(q, max=100)
    per_group = {g: sum(1 for m in got if m["group"] == g) for g in ("a", "b")}
    assert 1 <= per_group["a"] <= 4 and 1 <= per_group["b"] <= 4, per_group

    q = make_queue("inflight", max_inflight=3)
    rq.enqueue_batch(q, [{"payload": i} for i in range(10)])
    got = rq.dequeue(q, max=10)
    assert len(got) == 3
    assert rq.dequeue(q, max=10) == []
    rq.ack(q, got[0]["id"], got[0]["token"])
    assert len(rq.dequeue(q, max=10)) == 1


def test_weighted_fair_groups(rq, make_queue):
    q = make_queue("weights", fair_groups=True, group_weights={"big": 3})
    rq.enqueue_batch(q, [{"payload": i, "group": g} for g in ("big", "small") for i in range(20)])
    served = [rq.dequeue(q)[0]["group"] for _ in range(8)]
    assert served.count("big") == 6 and served.count("small") == 2, served


# ---- paced redrive and dead-letter routing -----------------------------------------------------------


def dead_letters(rq, q, n: int) -> list[int]:
    ids = rq.enqueue_batch(q, [{"payload": i} for i in range(n)])
    for m in rq.dequeue(q, max=n):
        rq.nack(q, m["id"], m["token"], dead=True)
    assert rq.counts(q)["dead"] == n
    return ids


def test_paced_redrive_can_be_watched_and_stopped(rq, make_queue):
    q = make_queue("redrive")
    assert refused(rq.redrive_status, q).status == 404
    assert refused(rq.stop_redrive, q).status == 404
    dead_letters(rq, q, 40)
    started = rq.redrive(q, rate=10)
    job = started["job"]
    assert job["rate"] == 10 and job["total"] == 40 and job["state"] == "running" and started["redriven"] == []
    assert refused(rq.redrive, q, rate=5).status == 409  # one paced redrive at a time
    wait_for(lambda: rq.redrive_status(q)["moved"] >= 5, 10, "the redrive to move messages")
    stopped = rq.stop_redrive(q)
    assert stopped["state"] == "stopped" and stopped["moved"] + stopped["remaining"] == 40
    elapsed = (now_ms() - job["started_at"]) / 1000
    assert stopped["moved"] <= 10 * elapsed + 10 + 1, (stopped, elapsed)  # paced, not all at once
    counts = rq.counts(q)
    assert counts["ready"] == stopped["moved"] and counts["dead"] == 40 - stopped["moved"]
    assert rq.redrive_status(q) == stopped  # a stopped job stays readable


def test_paced_redrive_finishes(rq, make_queue):
    q = make_queue("redrive-done")
    ids = dead_letters(rq, q, 10)
    rq.redrive(q, ids=ids[:6], rate=100)
    done = wait_for(lambda: (j := rq.redrive_status(q))["state"] == "done" and j, 10, "the redrive to finish")
    assert done["moved"] == 6 and done["remaining"] == 0
    counts = rq.counts(q)
    assert counts["ready"] == 6 and counts["dead"] == 4
    assert refused(rq.redrive, q, rate=0).status == 422


def test_dead_letters_can_be_routed_to_another_queue(rq, make_queue):
    dst = make_queue("routed-dst")
    src = make_queue("routed-src", max_deliveries=1, dead_letter_queue=dst)
    mid = rq.enqueue(src, {"job": 1})
    [m] = rq.dequeue(src)
    rq.nack(src, m["id"], m["token"])
    counts = rq.counts(src)
    assert counts["dead"] == 0 and counts["ready"] == 0
    [moved] = rq.dequeue(dst)
    assert moved["payload"] == {"job": 1}
    assert moved["headers"]["x-rankq-dead-reason"] == "max_deliveries"
    assert src in moved["headers"]["x-rankq-dead-from"] and str(mid) in moved["headers"]["x-rankq-dead-from"]


# ---- 429 ---------------------------------------------------------------------------------------------


def test_full_queue_answers_429_with_retry_after(rq, make_queue):
    q = make_queue("full", max_length=1)
    rq.enqueue(q, 1)
    err = refused(rq.enqueue, q, 2)
    assert err.status == 429 and err.retry_after == "1"


def test_enqueue_stream_takes_dependencies(api, channel):
    """EnqueueStream's messages stand alone: they may name messages of the stream's queue, not batch items."""
    assert api.post("/queues", json={"name": "stream-deps"}).status_code == 201
    parent = api.post("/queues/stream-deps/messages", json={"payload": 1}).json()["id"]
    msg = Grpc._msg("child", depends_on=[{"id": parent}])
    bad = Grpc._msg("bad", depends_on=[{"batch_index": 0}])
    frame = pb.EnqueueStreamRequest(
        requests=[pb.EnqueueRequest(queue="stream-deps", message=msg, ref=1), pb.EnqueueRequest(message=bad, ref=2)]
    )
    acks = {a.ref: a for res in pb_grpc.RankQStub(channel).EnqueueStream(iter([frame]), timeout=30) for a in res.acks}
    assert acks[1].status == 0 and acks[2].status == 422 and "batch" in acks[2].detail
    child = api.get(f"/queues/stream-deps/messages/{acks[1].id}").json()
    assert child["state"] == "waiting" and child["depends_on"] == [{"queue": "stream-deps", "id": parent}]


def test_http_names_the_bad_depends_on_item(api):
    assert api.post("/queues", json={"name": "deps-http-bad"}).status_code == 201
    cases = [
        ({"payload": 1, "depends_on": [{"id": 1, "batch_index": 0}]}, "depends_on.0.batch_index.id"),
        ({"payload": 1, "depends_on": [{"queue": "x"}]}, "depends_on.0.message.id"),
        ({"payload": 1, "depends_on": [{"id": 1, "queue": "no spaces"}]}, "depends_on.0.message.queue"),
        ({"payload": 1, "ttl": 0}, "ttl"),
    ]
    for body, where in cases:
        r = api.post("/queues/deps-http-bad/messages", json=body)
        assert r.status_code == 422 and where in r.json()["detail"], (body, r.text)
    r = api.post("/queues/deps-http-bad/dlq/redrive", json={"rate": 0})
    assert r.status_code == 422 and "rate" in r.json()["detail"]
