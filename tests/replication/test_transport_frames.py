"""Frames of the peer transport in PySyncObj's password wire format, small and large alike.

A member running PySyncObj's own connection code (the format it reads: 4-byte length, Fernet token,
zlib, pickle) must read what this transport sends — a group the operator ran with a password before
this transport keeps talking through a rolling update —, and a frame is unreadable without the
group's secret. A connection only switches to the cheaper sealed frames when the handshake has
negotiated them (test_sealed_frames.py); until then, and for good with such a member, it sends these.
"""

from __future__ import annotations

import socket
import struct
import zlib

import pysyncobj.pickle as pickle
import pytest
from cryptography.fernet import Fernet, InvalidToken
from pysyncobj.encryptor import getEncryptor

from rankq.replication.transport import PeerConnection

pytestmark = pytest.mark.timeout(30)


class NoPoller:
    """The connection only subscribes; nothing is polled in these tests."""

    def subscribe(self, *args) -> None:
        pass

    def unsubscribe(self, *args) -> None:
        pass


def read_frames(sock: socket.socket, count: int) -> list[bytes]:
    buf = b""
    out = []
    sock.settimeout(5)
    while len(out) < count:
        while len(buf) < 4 or len(buf) < 4 + struct.unpack_from("<i", buf)[0]:
            buf += sock.recv(1 << 20)
        size = struct.unpack_from("<i", buf)[0]
        out.append(buf[4 : 4 + size])
        buf = buf[4 + size :]
    return out


def sent_frames(encryptor: Fernet, messages: list) -> list[bytes]:
    a, b = socket.socketpair()
    with a, b:
        conn = PeerConnection(
            NoPoller(), encryptor, timeout=10, send_buffer_size=1 << 20, recv_buffer_size=1 << 20, sock=a
        )
        for message in messages:
            conn.send(message)
        return read_frames(b, len(messages))


def test_small_and_large_frames_read_as_pysyncobj_reads_them():
    secret = getEncryptor("the group's secret")
    small = {"type": "next_node_idx", "next_node_idx": 12, "success": True}
    large = {"type": "append_entries", "entries": [(b"x" * 4000, 7, 1)], "commit_index": 6}
    tokens = sent_frames(secret, [small, large])
    got = [pickle.loads(zlib.decompress(secret.decrypt(t))) for t in tokens]
    assert got == [small, large]
    assert len(secret.decrypt(tokens[1])) < 1000  # 4,000 repeated bytes travel compressed


def test_a_frame_is_unreadable_without_the_secret():
    [token] = sent_frames(getEncryptor("the group's secret"), [{"type": "append_entries", "entries": []}])
    with pytest.raises(InvalidToken):
        getEncryptor("another secret").decrypt(token)
    assert b"append_entries" not in token
