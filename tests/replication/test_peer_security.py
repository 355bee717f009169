"""The Raft port against a hostile client: real servers on loopback, raw sockets as the attacker.

The attacker speaks PySyncObj's wire format without the secret: a 4-byte length, then a zlib'd
pickle. Every test would pass against a node that trusted such frames only by failing.
"""

from __future__ import annotations

import os
import pickle
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib

import httpx
import pytest
from serverproc import Cluster, ServerProcess, free_port

pytestmark = pytest.mark.timeout(180)

JUNK_BYTES = 64 << 20


class Gadget:
    """Unpickling this creates a file: the canary of code run by the peer protocol."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def frame(message) -> bytes:
    data = zlib.compress(pickle.dumps(message), 3)
    return struct.pack("<i", len(data)) + data


def closed_by_peer(sock: socket.socket, timeout: float) -> tuple[bool, int]:
    """(whether the server closed the connection within `timeout`, bytes it sent before that)."""
    received = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return True, received
        if not chunk:
            return True, received
        received += len(chunk)
    return False, received


def push(sock: socket.socket, junk: bytes, limit: int, deadline: float) -> int:
    """Send `junk` over and over until `limit` bytes went out, the peer closed, or the deadline."""
    sent = 0
    view = memoryview(junk)
    sock.settimeout(1)
    while sent < limit and time.monotonic() < deadline:
        try:
            sent += sock.send(view[sent % len(junk) :])
        except TimeoutError:
            continue  # the receiver is slow: keep pushing until the deadline
        except OSError:
            break  # dropped by the peer
    return sent


def connect(node: ServerProcess) -> socket.socket:
    return socket.create_connection(("127.0.0.1", node.raft_port), timeout=5)


def status(node: ServerProcess) -> dict:
    return httpx.get(node.url + "/api/v1/cluster", timeout=5).json()


def enqueue(node: ServerProcess, queue: str, payload) -> httpx.Response:
    with httpx.Client(base_url=node.url + "/api/v1", timeout=10) as c:
        c.post("/queues", json={"name": queue})
        return c.post(f"/queues/{queue}/messages", json={"payload": payload})


@pytest.fixture
def lone(server_factory) -> ServerProcess:
    """A node started the simplest way: no peers, no secret given."""
    return server_factory("lone")


def test_a_pickle_gadget_from_an_unauthenticated_peer_is_not_run(lone, tmp_path):
    canary = tmp_path / "canary"
    with connect(lone) as sock:
        sock.sendall(frame(Gadget(str(canary))))
        closed, _ = closed_by_peer(sock, 10)
    assert closed, "the connection that sent junk must be dropped"
    assert not canary.exists(), "the peer protocol ran code from an unauthenticated connection"
    assert enqueue(lone, "q", {"still": "serving"}).status_code == 201


def test_an_unauthenticated_utility_command_cannot_change_membership(lone):
    before = status(lone)
    with connect(lone) as sock:
        sock.sendall(frame(["add", f"127.0.0.1:{free_port()}"]))
        closed_by_peer(sock, 5)
    with connect(lone) as sock:  # and the same after a fake handshake frame
        sock.sendall(frame(os.urandom(32)) + frame(["add", f"127.0.0.1:{free_port()}"]))
        closed_by_peer(sock, 5)
    after = status(lone)
    assert [m["address"] for m in after["members"]] == [m["address"] for m in before["members"]]
    assert enqueue(lone, "q", 1).status_code == 201, "a lone node keeps its quorum"


def test_an_unauthenticated_read_only_peer_receives_no_entries(lone):
    with connect(lone) as sock:
        sock.sendall(frame("readonly"))
        for i in range(20):
            assert enqueue(lone, "q", {"secret": i}).status_code == 201
        closed, received = closed_by_peer(sock, 5)
    assert received == 0, "replicated writes were streamed to an unauthenticated peer"
    assert closed


def test_an_oversized_frame_announcement_is_dropped_without_waiting_for_its_body(lone):
    for size in (2**31 - 1, 5000, -1, 0):  # 5000: above the handshake limit, far below a member's
        with connect(lone) as sock:
            sock.sendall(struct.pack("<i", size))
            closed, received = closed_by_peer(sock, 5)
        assert closed and received == 0, f"a {size}-byte announcement kept the connection open"


def test_idle_unauthenticated_connections_are_closed(lone):
    with connect(lone) as sock:
        closed, _ = closed_by_peer(sock, 15)  # the handshake deadline is 5 s
    assert closed


def test_a_lone_node_generates_its_secret_once_with_mode_0600(lone):
    path = os.path.join(lone.data_dir, "raft-secret")
    st = os.stat(path)
    assert stat.S_IMODE(st.st_mode) == 0o600
    first = open(path).read()
    assert len(first.strip()) >= 32
    lone.stop()
    lone.start()
    assert open(path).read() == first, "a restart must keep the node's secret"


def test_a_group_member_without_a_secret_refuses_to_start(tmp_path):
    peers = f"a=127.0.0.1:{free_port()},b=127.0.0.1:{free_port()}"
    cmd = [
        sys.executable,
        "-m",
        "rankq.cli",
        "server",
        "--data-dir",
        str(tmp_path / "d"),
        "--http-port",
        str(free_port()),
        "--grpc-port",
        "0",
        "--raft-port",
        str(free_port()),
        "--peers",
        peers,
    ]
    env = {k: v for k, v in os.environ.items() if k != "RANKQ_RAFT_PASSWORD"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0
    assert "must share a Raft secret" in out.stdout + out.stderr
    assert not os.path.exists(tmp_path / "d" / "raft-secret")


def test_membership_changes_are_validated_and_not_applied_when_refused(lone):
    url = lone.url + "/api/v1/cluster/members"
    for bad in ("127.0.0.1:0", "127.0.0.1:70000", "host name:80", "nocolon"):
        r = httpx.post(url, json={"address": bad}, timeout=10)
        assert r.status_code == 422, (bad, r.status_code, r.text)
        assert "detail" in r.json()
    # Nothing listens there: refused, and the lone node keeps its quorum.
    r = httpx.post(url, json={"address": f"127.0.0.1:{free_port()}"}, timeout=10)
    assert r.status_code == 409, r.text
    assert "cannot reach" in r.json()["detail"]
    assert len(status(lone)["members"]) == 1
    assert enqueue(lone, "q", 1).status_code == 201


def test_a_member_holding_another_secret_cannot_be_added(lone, tmp_path):
    other = ServerProcess(str(tmp_path / "other"))
    other.start()
    try:
        r = httpx.post(
            lone.url + "/api/v1/cluster/members", json={"address": f"127.0.0.1:{other.raft_port}"}, timeout=10
        )
        assert r.status_code == 409, r.text
        assert "secret" in r.json()["detail"]
        assert len(status(lone)["members"]) == 1
    finally:
        other.stop()


def test_64_mib_of_junk_at_the_leader_leaves_the_term_unchanged(tmp_path):
    group = Cluster(str(tmp_path / "g"), 3).start()
    try:
        leader = group.leader()
        term = status(leader)["term"]
        sent = 0
        junk = os.urandom(1 << 20)
        deadline = time.monotonic() + 60
        announce = struct.pack("<i", 2**31 - 1)  # the first connection announces a 2 GiB frame
        while sent < JUNK_BYTES and time.monotonic() < deadline:
            with connect(leader) as sock:
                sent += push(sock, announce + junk, JUNK_BYTES - sent, deadline)
            announce = b""
        assert all(status(n)["term"] == term for n in group.running()), "junk caused an election"
        assert group.leader() is leader
        assert enqueue(leader, "q", 1).status_code == 201
    finally:
        group.stop()


def admin(node: ServerProcess, *args: str) -> str:
    """PySyncObj's own admin tool against the node's Raft port (its utility-command path)."""
    tool = os.path.join(os.path.dirname(sys.executable), "syncobj_admin")
    out = subprocess.run(
        [tool, "-conn", f"127.0.0.1:{node.raft_port}", *args], capture_output=True, text=True, timeout=60
    )
    return out.stdout + out.stderr


def test_utility_commands_need_the_secret_and_cannot_change_membership(lone):
    secret = open(os.path.join(lone.data_dir, "raft-secret")).read().strip()
    assert "raft_term" not in admin(lone, "-status")  # no secret: dropped
    assert "raft_term" not in admin(lone, "-pass", "not-the-secret", "-status")
    assert "raft_term" in admin(lone, "-pass", secret, "-status")  # read-only status, authenticated
    admin(lone, "-pass", secret, "-add", f"127.0.0.1:{free_port()}")  # membership: API only
    admin(lone, "-pass", secret, "-set_version", "7")
    assert len(status(lone)["members"]) == 1
    assert enqueue(lone, "q", 1).status_code == 201
