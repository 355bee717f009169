"""Sealed frames (AES-256-GCM per connection and direction) and their negotiation.

A frame altered, replayed, reordered or sealed under another key must drop the connection before
its bytes are unpickled: the rejected frames carry a pickle gadget whose unpickling creates a
file. Groups that mix members speaking sealed frames with members that only speak Fernet frames
(PySyncObj's own connection code, or a RankQ member from before sealed frames) must still form.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.batteries import ReplCounter
from pysyncobj.encryptor import getEncryptor
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE
from serverproc import free_port, wait_for

from rankq.replication.transport import PeerConnection, PeerTransport, sealed_frame_keys, sealed_master_key

pytestmark = pytest.mark.timeout(60)

SECRET = "the group's secret"


class NoPoller:
    def subscribe(self, *args) -> None:
        pass

    def unsubscribe(self, *args) -> None:
        pass


class Gadget:
    """Unpickling this creates a file: the canary of a frame unpickled before it was authenticated."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def keys(seed: bytes = b"") -> tuple[bytes, bytes]:
    master = sealed_master_key(SECRET)
    return sealed_frame_keys(master, b"i" * 32 + seed, b"a" * 32 + seed)


def sealed_frames(send_key: bytes, messages: list) -> list[bytes]:
    """The frames (header included) a sealed connection sends for `messages`, in order."""
    a, b = socket.socketpair()
    with a, b:
        conn = PeerConnection(
            NoPoller(), getEncryptor(SECRET), timeout=10, send_buffer_size=1 << 20, recv_buffer_size=1 << 20, sock=a
        )
        conn.use_sealed_frames(send_key=send_key, recv_key=os.urandom(32))
        frames = []
        b.settimeout(5)
        for message in messages:
            conn.send(message)
            header = b.recv(4, socket.MSG_WAITALL)
            (size,) = struct.unpack("<i", header)
            frames.append(header + b.recv(size, socket.MSG_WAITALL))
        return frames


class Receiver:
    """The accepting end of a sealed connection, fed raw bytes by the test."""

    def __init__(self, recv_key: bytes) -> None:
        self.peer, sock = socket.socketpair()
        sock.setblocking(False)  # as the peer server hands sockets over
        self.conn = PeerConnection(
            NoPoller(), getEncryptor(SECRET), timeout=10, send_buffer_size=1 << 20, recv_buffer_size=1 << 20, sock=sock
        )
        self.conn.authenticated = True  # as after the handshake
        self.conn.use_sealed_frames(send_key=os.urandom(32), recv_key=recv_key)
        self.got: list = []
        self.conn.setOnMessageReceivedCallback(self.got.append)

    def feed(self, data: bytes) -> None:
        self.peer.sendall(data)
        self.conn._on_event(self.conn.fileno(), POLL_EVENT_TYPE.READ)

    @property
    def dropped(self) -> bool:
        return self.conn.state == CONNECTION_STATE.DISCONNECTED

    def close(self) -> None:
        self.conn.disconnect()
        self.peer.close()


@pytest.fixture
def receiver():
    to_acceptor, _ = keys()
    r = Receiver(to_acceptor)
    yield r
    r.close()


def test_sealed_frames_arrive_in_order_small_and_large(receiver):
    to_acceptor, _ = keys()
    small = {"type": "next_node_idx", "next_node_idx": 12, "success": True}
    large = {"type": "append_entries", "entries": [(b"x" * 40_000, 7, 1)], "commit_index": 6}
    frames = sealed_frames(to_acceptor, [small, large, small])
    assert len(frames[1]) < 2000, "a large frame travels compressed"
    assert all(b"next_node_idx" not in f and b"append_entries" not in f for f in frames)
    for f in frames:
        receiver.feed(f)
    assert receiver.got == [small, large, small]
    assert not receiver.dropped


def test_an_altered_frame_drops_the_connection_unread(receiver, tmp_path):
    to_acceptor, _ = keys()
    canary = tmp_path / "canary"
    [frame] = sealed_frames(to_acceptor, [Gadget(str(canary))])
    altered = frame[:-1] + bytes([frame[-1] ^ 1])  # the tag only: the sealed pickle is intact
    receiver.feed(altered)
    assert receiver.dropped and receiver.got == []
    assert not canary.exists()


def test_a_replayed_frame_drops_the_connection(receiver):
    to_acceptor, _ = keys()
    first, second = sealed_frames(to_acceptor, ["first", "second"])
    receiver.feed(first)
    receiver.feed(first)
    assert receiver.dropped and receiver.got == ["first"]


def test_a_reordered_frame_drops_the_connection_unread(receiver, tmp_path):
    to_acceptor, _ = keys()
    canary = tmp_path / "canary"
    first, second = sealed_frames(to_acceptor, ["first", Gadget(str(canary))])
    receiver.feed(second + first)
    assert receiver.dropped and receiver.got == []
    assert not canary.exists()


@pytest.mark.parametrize("other", ["another connection", "the other direction", "another secret"])
def test_a_frame_under_another_key_drops_the_connection_unread(receiver, tmp_path, other):
    canary = tmp_path / "canary"
    if other == "another connection":
        key = keys(b"!")[0]
    elif other == "the other direction":
        key = keys()[1]
    else:
        key = sealed_frame_keys(sealed_master_key("another secret"), b"i" * 32, b"a" * 32)[0]
    [frame] = sealed_frames(key, [Gadget(str(canary))])
    receiver.feed(frame)
    assert receiver.dropped and receiver.got == []
    assert not canary.exists()


def test_every_connection_and_direction_has_its_own_key():
    master = sealed_master_key(SECRET)
    one = sealed_frame_keys(master, os.urandom(32), os.urandom(32))
    two = sealed_frame_keys(master, os.urandom(32), os.urandom(32))
    assert len({*one, *two}) == 4 and all(len(k) == 32 for k in one + two)


# ---- negotiation, in groups of real members on loopback ---------------------------------------


class FernetOnlyTransport(PeerTransport):
    """A RankQ member from before sealed frames: it neither offers nor accepts them."""

    offers_sealed_frames = False


def member(address: str, others: list[str], kind: str) -> tuple[SyncObj, ReplCounter]:
    counter = ReplCounter()
    conf = SyncObjConf(password=SECRET, connectionRetryTime=0.5)
    if kind == "sealed":
        obj = SyncObj(address, others, conf, consumers=[counter], transportClass=PeerTransport)
    elif kind == "rankq-fernet":
        obj = SyncObj(address, others, conf, consumers=[counter], transportClass=FernetOnlyTransport)
    else:  # PySyncObj's own transport and connections with its password
        obj = SyncObj(address, others, conf, consumers=[counter])
    return obj, counter


def connections(obj: SyncObj) -> dict[str, object]:
    transport = obj._SyncObj__transport
    return {
        node.address: conn for node, conn in transport._connections.items() if conn.state == CONNECTION_STATE.CONNECTED
    }


@pytest.mark.parametrize(
    "kinds",
    [
        ("sealed", "sealed", "sealed"),
        ("sealed", "pysyncobj", "sealed"),
        ("sealed", "rankq-fernet", "sealed"),
        ("rankq-fernet", "sealed", "pysyncobj"),
    ],
)
def test_a_group_forms_and_each_link_speaks_what_both_ends_do(kinds):
    # The middle address initiates to one member and accepts from the other: both roles are used.
    addresses = [f"127.0.0.1:{p}" for p in sorted(free_port() for _ in kinds)]
    group = [member(a, [o for o in addresses if o != a], k) for a, k in zip(addresses, kinds)]
    try:

        def linked() -> bool:
            return all(len(connections(obj)) == 2 for obj, _ in group)

        wait_for(linked, 30, "every member connected to both others")
        wait_for(lambda: any(obj._isLeader() for obj, _ in group), 30, "a leader")
        for _, counter in group:  # one through each member, forwarded to the leader
            counter.inc(sync=True, timeout=10)
        wait_for(lambda: all(counter.get() == 3 for _, counter in group), 20, "every member applied 3 increments")
        for a, (obj, _), kind in zip(addresses, group, kinds):
            for b, conn in connections(obj).items():
                other = kinds[addresses.index(b)]
                if kind != "pysyncobj":
                    assert conn.sealed == (kind == other == "sealed"), (a, kind, b, other)
    finally:
        for obj, _ in group:
            obj.destroy()
