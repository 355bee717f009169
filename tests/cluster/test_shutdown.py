"""A node that stops, or is not (or no longer) a member, answers every write: 201 or 503, never 500."""

from __future__ import annotations

import json
import signal
import socket
import time

import grpc
import httpx
import pytest
from serverproc import wait_for

from rankq.server.proto import rankq_pb2 as pb
from rankq.server.proto import rankq_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(180)

IN_FLIGHT = 200
VIA_GRPC = 40  # of the writes in flight, this many go over gRPC
PIPELINE = 2  # proposals a node keeps in flight at once (QueueService's max_inflight)
ATTEMPTS = 5  # to get them all in flight before the paused group times them out (a loaded machine)


def waiting_writes(node) -> float:
    """The node's `rankq_writes_waiting` gauge: writes it accepted and has not answered yet."""
    text = httpx.get(node.url + "/metrics", timeout=2).text
    for line in text.splitlines():
        if line.startswith("rankq_writes_waiting "):
            return float(line.split()[1])
    raise AssertionError("no rankq_writes_waiting in /metrics")


class WritesInFlight:
    """IN_FLIGHT writes to one node: HTTP requests on raw sockets opened beforehand, and gRPC calls.

    Raw sockets make sending cheap for the test process, so the writes reach the server quickly
    even on a loaded machine; every answer is read back at the end.
    """

    def __init__(self, node, queue: str, prefix: str) -> None:
        self.node, self.queue, self.prefix = node, queue, prefix
        self.socks = [
            socket.create_connection(("127.0.0.1", node.http_port), timeout=60) for _ in range(IN_FLIGHT - VIA_GRPC)
        ]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{node.grpc_port}")
        grpc.channel_ready_future(self.channel).result(timeout=30)
        self.stub = pb_grpc.RankQStub(self.channel)
        self.calls: list = []

    def send_http(self, socks) -> None:
        for sock in socks:
            i = self.socks.index(sock)
            key = f"{self.prefix}h{i}"
            body = json.dumps({"payload": key, "dedup_key": key}).encode()
            sock.sendall(
                b"POST /api/v1/queues/%s/messages HTTP/1.1\r\nhost: rankq\r\n"
                b"content-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (self.queue.encode(), len(body), body)
            )

    def send_grpc(self) -> None:
        for i in range(VIA_GRPC):
            key = f"{self.prefix}g{i}"
            msg = pb.NewMessage(payload=json.dumps(key).encode(), content_type="application/json", dedup_key=key)
            self.calls.append(
                (key, self.stub.Enqueue.future(pb.EnqueueRequest(queue=self.queue, message=msg), timeout=60))
            )

    def outcomes(self) -> list[tuple[str, object, dict]]:
        """(key, status, body) of every write; status is 201, 503, or what else came (a failure)."""
        out = []
        for i, sock in enumerate(self.socks):
            out.append((f"{self.prefix}h{i}", *read_response(sock)))
        for key, call in self.calls:
            try:
                out.append((key, 201, {"id": call.result().id}))
            except grpc.RpcError as err:
                status = 503 if err.code() == grpc.StatusCode.UNAVAILABLE else f"grpc {err.code().name}"
                out.append((key, status, {"detail": err.details()}))
        self.channel.close()
        return out


def read_response(sock: socket.socket) -> tuple[object, dict]:
    """The status and JSON body of the one HTTP response that arrives on `sock`."""
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return "closed without an answer", {}
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                return "closed mid-answer", {}
            body += chunk
        return int(head.split(b" ", 2)[1]), json.loads(body)
    except OSError as err:
        return f"error {err!r}", {}
    finally:
        sock.close()


def writes_in_flight(g, leader, attempt: int) -> WritesInFlight | None:
    """Pause both followers so nothing commits, then send IN_FLIGHT writes through the leader.

    Returns the writes once all of them wait on the leader, followers still paused. On a machine
    too slow to get them all there before the paused group times the first ones out, resumes the
    followers, checks the answers all the same and returns None: the caller tries again.
    """
    if g.leader() is not leader:  # leadership moved (a slow machine): bring it back
        with httpx.Client(base_url=leader.url, timeout=10) as c:
            r = c.post("/api/v1/cluster/transfer-leader", json={"to": leader.node_id})
            assert r.status_code == 200, r.text
    writes = WritesInFlight(leader, "s", f"a{attempt}-")
    followers = [n for n in g.nodes if n is not leader]
    for n in followers:
        n.signal(signal.SIGSTOP)
    # The first writes go out the moment the followers stop, so that they are proposed while the
    # leader still leads: they fill its pipeline, and the writes behind them wait however long
    # they take to arrive.
    writes.send_http(writes.socks[:PIPELINE])
    writes.send_grpc()
    writes.send_http(writes.socks[PIPELINE:])
    try:
        wait_for(lambda: waiting_writes(leader) >= IN_FLIGHT, 10, "the writes to reach the leader", interval=0.1)
        return writes
    except TimeoutError:
        for n in followers:
            n.signal(signal.SIGCONT)
        bad = [o for o in writes.outcomes() if o[1] not in (201, 503)]
        assert not bad, f"{len(bad)} writes answered neither 201 nor 503: {bad[:5]}"
        g.leader(timeout=20)
        return None


@pytest.mark.parametrize("resume", ["at_once", "after_exit"])
def test_sigterm_with_writes_in_flight_answers_each_201_or_503(cluster, resume):
    """The followers come back at once (the writes can commit while the node drains), or only
    after it has exited (none can: each is answered 503 when the drain time is up)."""
    g = cluster(3, grpc=True)
    leader = g.leader()
    with httpx.Client(base_url=leader.url, timeout=10) as c:
        assert c.post("/api/v1/queues", json={"name": "s"}).status_code == 201
    followers = [n for n in g.nodes if n is not leader]
    for attempt in range(ATTEMPTS):
        writes = writes_in_flight(g, leader, attempt)
        if writes is not None:
            break
    else:
        pytest.fail(f"could not get {IN_FLIGHT} writes in flight on the leader in {ATTEMPTS} attempts")
    try:
        leader.signal(signal.SIGTERM)
        # Once it has begun to stop, it takes no new writes: 503 at once, and it is no longer ready.
        r = wait_for(
            lambda: (r := httpx.get(leader.url + "/readyz", timeout=2)).status_code == 503 and r,
            10,
            "readiness to turn false",
        )
        assert "shutting down" in r.json()["detail"]
        r = httpx.post(leader.url + "/api/v1/queues/s/messages", json={"payload": "late"}, timeout=10)
        assert r.status_code == 503, r.text  # refused, not held: it says so
        assert "shutting down and takes no new writes" in r.json()["detail"] and r.headers.get("retry-after")
        stopping = time.monotonic()
        if resume == "after_exit":
            assert leader.proc.wait(30) == 0
    finally:
        for n in followers:
            n.signal(signal.SIGCONT)
    outcomes = writes.outcomes()
    assert leader.proc.wait(30) == 0
    assert time.monotonic() - stopping < 25  # bounded: 5 s drain, then seconds to close (Kubernetes waits 30 s)
    assert len(outcomes) == IN_FLIGHT
    bad = [o for o in outcomes if o[1] not in (201, 503)]
    assert not bad, f"{len(bad)} writes answered neither 201 nor 503: {bad[:5]}"
    if resume == "after_exit":
        assert all(status == 503 for _, status, _ in outcomes)
    assert all(body.get("detail") for _, status, body in outcomes if status == 503)
    log = leader.logs()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]
    # Every write answered 201 is in the group once it settles without the stopped node.
    new = g.leader(timeout=20)
    acked = {body["id"]: key for key, status, body in outcomes if status == 201}

    def present(mid: int, key: str) -> bool:
        r = httpx.get(f"{new.url}/api/v1/queues/s/messages/{mid}", timeout=5)
        return r.status_code == 200 and r.json()["payload"] == key

    for mid, key in acked.items():
        wait_for(lambda: present(mid, key), 10, f"acknowledged write {mid} on the new leader")


def test_removed_member_refuses_writes_with_503_naming_the_leader(cluster):
    g = cluster(3)
    leader = g.leader()
    with httpx.Client(base_url=leader.url + "/api/v1", timeout=10) as c:
        assert c.post("/queues", json={"name": "r"}).status_code == 201
        removed = g.followers()[0]
        r = c.delete(f"/cluster/members/{removed.node_id}")
        assert r.status_code == 200, r.text
    # Right after its removal a write to it may still be forwarded: it is answered 503 all the same.
    r = httpx.post(removed.url + "/api/v1/queues/r/messages", json={"payload": 0}, timeout=20)
    assert r.status_code == 503, r.text
    # It soon knows it is cut off: not ready, and writes are refused at once, naming the leader.
    wait_for(
        lambda: "cut off" in httpx.get(removed.url + "/readyz", timeout=2).json()["detail"],
        30,
        "the removed member to report itself cut off",
    )
    others = [n.url for n in g.nodes if n is not removed]
    details = []
    for i in range(20):
        r = httpx.post(removed.url + "/api/v1/queues/r/messages", json={"payload": i, "dedup_key": f"k{i}"}, timeout=20)
        assert r.status_code == 503, r.text
        assert r.headers.get("retry-after")
        assert any(url in r.json()["detail"] for url in others), r.text  # it names the leader it knew
        details.append(r.json()["detail"])
    assert any("not in contact with the group's leader" in d for d in details), details
    # The group itself goes on without it.
    wait_for(
        lambda: (
            httpx.post(
                g.leader(among=[n for n in g.nodes if n is not removed]).url + "/api/v1/queues/r/messages",
                json={"payload": "ok"},
                timeout=10,
            ).status_code
            == 201
        ),
        30,
        "a write to the group without the removed member",
    )
    assert "Traceback" not in removed.logs()


def test_member_not_yet_added_refuses_writes_until_added(cluster):
    g = cluster(3)
    leader = g.leader()
    with httpx.Client(base_url=leader.url + "/api/v1", timeout=10) as c:
        assert c.post("/queues", json={"name": "a"}).status_code == 201
    new = g.add_node()  # started with the group as its peers, but nobody has added it
    wait_for(lambda: httpx.get(new.url + "/healthz", timeout=2).status_code == 200, 20, "the new node to serve")
    assert httpx.get(new.url + "/readyz", timeout=2).status_code == 503
    r = httpx.post(new.url + "/api/v1/queues/a/messages", json={"payload": 1}, timeout=20)
    assert r.status_code == 503, r.text
    with httpx.Client(base_url=leader.url + "/api/v1", timeout=10) as c:
        r = c.post("/cluster/members", json={"address": f"127.0.0.1:{new.raft_port}"})
        assert r.status_code == 200, r.text
    new.wait_ready(20)
    r = wait_for(
        lambda: (
            (r := httpx.post(new.url + "/api/v1/queues/a/messages", json={"payload": 2}, timeout=10)).status_code == 201
            and r
        ),
        15,
        "a write through the new member",
    )
    assert r.json()["id"] > 0
