"""The Raft peer transport: every connection authenticated and encrypted, every frame bounded.

Why our own: PySyncObj's peer protocol is pickle. Its TCP connection buffers whatever a peer
announces (up to 2 GiB, copying the whole buffer on every read, in the Raft thread) before it
checks anything, accepts unauthenticated peers when no password is set, and answers utility
commands (`add`, `remove`) and read-only peers that stream every entry. Here:

- A transport without the shared secret cannot be built. The handshake travels as Fernet tokens
  (AES-CBC + HMAC-SHA256, the wire format PySyncObj uses with a password). Once both sides have
  proven the secret, a connection whose ends both speak it switches to sealed frames: AES-256-GCM
  under a key of its own per direction (HKDF over the stretched secret and both random keys),
  with a counter as nonce, so a frame tampered with, replayed, reordered or sealed under another
  key fails authentication. A member that only speaks Fernet frames (an older RankQ, PySyncObj's
  own connection code) never sees the offer accepted and keeps Fernet frames: a rolling update
  keeps its group. Either way a frame is authenticated before anything is decompressed or
  unpickled. (Sealed frames also skip zlib below `COMPRESS_FROM_BYTES` and pickle with protocol 5:
  for the usual 0.3-1.5 KB frame both cost more than the cipher.)
- Until a peer has proven the secret *on this connection* (a frame that decrypts and carries the
  random key this side chose for it), a frame may hold at most `HANDSHAKE_FRAME_BYTES`; after
  that at most `MAX_FRAME_BYTES`. The size is checked as soon as the 4-byte header arrives,
  before the body is read, and buffers grow and drain in linear time.
- Anything that breaks the protocol (junk, a bad token, an oversized frame, an unknown member, a
  read-only peer, a utility command other than `status`) drops that connection only. Handshakes
  are bounded in time and in number, and one connection reads at most `READ_BUDGET_BYTES` per
  poll event, so the Raft loop keeps ticking (heartbeats, elections) while a peer misbehaves.
"""

from __future__ import annotations

import base64
import errno
import functools
import logging
import os
import pickle as stdpickle
import socket
import struct
import time
import zlib
from collections.abc import Callable
from typing import Any

import pysyncobj.pickle as pickle
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, _getAddrType, set_keepalive
from pysyncobj.transport import TCPTransport

log = logging.getLogger("rankq.replication")

HEADER = struct.Struct("<i")  # frame length, as PySyncObj writes it on little-endian machines
HANDSHAKE_FRAME_BYTES = 4096  # a handshake frame (a random key, an address) is ~200 bytes
MAX_FRAME_BYTES = 1 << 30  # between members; append-entries are split into 64 KiB messages
READ_CHUNK_BYTES = 256 * 1024
READ_BUDGET_BYTES = 4 * 1024 * 1024  # per connection and poll event: the tick loop goes on
COMPACT_BYTES = 1024 * 1024  # drop consumed bytes from a buffer's front past this size
HANDSHAKE_SECONDS = 5.0  # an unproven connection is closed after this long
MAX_HANDSHAKES = 32  # unproven connections at once; the oldest is closed to admit a new one
RAND_KEY_BYTES = 32
UTILITY_COMMANDS = frozenset({"status"})  # membership changes go through the API, validated
# Sealed frames: the acceptor appends SEALED_OFFER to its random key; an initiator that speaks them
# answers with (SEALED_ACCEPT, its address) instead of its bare address, and after that frame both
# sides seal. Old peers echo the longer key as a tag and send a bare address: Fernet frames stay.
SEALED_OFFER = b"rankq-frames-v2"
SEALED_ACCEPT = "rankq-frames-v2"
SEALED_KEY_INFO = b"rankq raft frames v2: aes-256-gcm, initiator->acceptor, acceptor->initiator"
SEALED_MASTER_SALT = b"rankq raft frames v2"  # the Fernet key's salt is PySyncObj's; this one is ours
SEALED_MASTER_ROUNDS = 100_000  # as for the Fernet key: a weak secret is no cheaper to guess here
COMPRESS_FROM_BYTES = 8192  # smaller sealed frames go uncompressed: zlib costs more than the bytes
_RAW, _ZLIB = 0, 1  # a sealed frame's first plaintext byte
SEALED_PICKLE_PROTOCOL = 5  # Fernet frames keep PySyncObj's protocol 2, 3-5x slower for entries
_INCOMPLETE = object()  # no whole frame buffered yet


class ProtocolError(Exception):
    """A peer broke the protocol; its connection is dropped."""


_last_warning = [0.0, 0]  # when a drop was last logged, drops not logged since


def _warn_dropped(why: str) -> None:
    """Log a dropped connection, at most once per 10 s: a flood of junk must not flood the log."""
    now = time.monotonic()
    if now - _last_warning[0] >= 10.0:
        more = f" ({_last_warning[1]} more since the last report)" if _last_warning[1] else ""
        log.warning("dropped a Raft peer connection: %s%s", why, more)
        _last_warning[0], _last_warning[1] = now, 0
    else:
        _last_warning[1] += 1


@functools.lru_cache(maxsize=4)
def sealed_master_key(password: str | bytes) -> bytes:
    """The group's secret stretched once per process; every connection's keys derive from it."""
    if isinstance(password, str):
        password = password.encode()
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=SEALED_MASTER_SALT, iterations=SEALED_MASTER_ROUNDS)
    return kdf.derive(password)


def sealed_frame_keys(master: bytes, initiator_key: bytes, acceptor_key: bytes) -> tuple[bytes, bytes]:
    """(initiator -> acceptor, acceptor -> initiator) keys of one connection.

    Both random keys are fresh per connection, so a key never seals two connections' frames and a
    counter nonce starting at 0 is never reused under it.
    """
    okm = HKDF(algorithm=hashes.SHA256(), length=64, salt=initiator_key + acceptor_key, info=SEALED_KEY_INFO).derive(
        master
    )
    return okm[:32], okm[32:]


def _token_timestamp(token: bytes) -> int:
    """The timestamp of a Fernet token already verified (version byte, then 8 bytes big-endian)."""
    return int.from_bytes(base64.urlsafe_b64decode(token[:12])[1:9], "big")


class PeerConnection:
    """One TCP connection to a member, with the interface PySyncObj's transport expects."""

    def __init__(
        self,
        poller,
        encryptor,
        timeout: float,
        send_buffer_size: int,
        recv_buffer_size: int,
        keepalive=None,
        sock: socket.socket | None = None,
    ) -> None:
        if encryptor is None:
            raise ValueError("a peer connection needs the group's secret")
        self.encryptor = encryptor
        self.sendRandKey: bytes | None = None  # the key the other side chose: tags what we send
        self.recvRandKey: bytes | None = None  # the key we chose: every frame we accept carries it
        self.authenticated = False
        self._seal: AESGCM | None = None  # sealed frames, once negotiated: one cipher per direction
        self._open: AESGCM | None = None
        self._send_count = 0  # the nonce of the next frame sent / expected
        self._recv_count = 0
        self.opened_at = time.monotonic()
        self._poller = poller
        self._timeout = timeout
        self._send_buffer_size = send_buffer_size
        self._recv_buffer_size = recv_buffer_size
        self._keepalive = keepalive
        self._on_message: Callable[[Any], None] | None = None
        self._on_connected: Callable[[], None] | None = None
        self._on_disconnected: Callable[[], None] | None = None
        self._reset_buffers()
        self._last_read = time.monotonic()
        self._sock = sock
        self._fileno: int | None = None
        if sock is not None:
            self._fileno = sock.fileno()
            self._state = CONNECTION_STATE.CONNECTED
            self._set_keepalive()
            self._subscribe(POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)
        else:
            self._state = CONNECTION_STATE.DISCONNECTED

    def proven_keys(self) -> tuple[bytes, bytes]:
        """(the key the other side chose, the key we chose): both are set once the handshake ran."""
        if self.sendRandKey is None or self.recvRandKey is None:
            raise ProtocolError("handshake keys missing")
        return self.sendRandKey, self.recvRandKey

    def _reset_buffers(self) -> None:
        self._rbuf = bytearray()
        self._rpos = 0
        self._wbuf = bytearray()
        self._wpos = 0
        self._recv_last_ts = 0
        self.sendRandKey = None
        self.recvRandKey = None
        self.authenticated = False
        self._seal = self._open = None
        self._send_count = self._recv_count = 0

    @property
    def sealed(self) -> bool:
        """Whether this connection has switched to sealed frames."""
        return self._seal is not None

    def use_sealed_frames(self, send_key: bytes, recv_key: bytes) -> None:
        """Seal every frame from now on, both ways (called when the handshake's last frame passes)."""
        self._seal, self._open = AESGCM(send_key), AESGCM(recv_key)
        self._send_count = self._recv_count = 0

    # ---- the interface TCPTransport uses ------------------------------------------------------

    @property
    def state(self) -> int:
        return self._state

    def fileno(self) -> int | None:
        return self._fileno

    def setOnConnectedCallback(self, cb) -> None:
        self._on_connected = cb

    def setOnMessageReceivedCallback(self, cb) -> None:
        self._on_message = cb

    def setOnDisconnectedCallback(self, cb) -> None:
        self._on_disconnected = cb

    def getSendBufferSize(self) -> int:
        return len(self._wbuf) - self._wpos

    def connect(self, host: str | None, port: int) -> bool:
        if host is None:
            return False
        self._state = CONNECTION_STATE.DISCONNECTED
        self._fileno = None
        sock = socket.socket(_getAddrType(host), socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self._send_buffer_size)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self._recv_buffer_size)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self._sock = sock
        self._set_keepalive()
        self._reset_buffers()
        self.opened_at = self._last_read = time.monotonic()
        try:
            sock.connect((host, port))
        except OSError as err:
            if err.errno not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                sock.close()
                self._sock = None
                return False
        self._fileno = sock.fileno()
        self._state = CONNECTION_STATE.CONNECTING
        self._subscribe(POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.WRITE | POLL_EVENT_TYPE.ERROR)
        return True

    def send(self, message: Any) -> None:
        if self._state == CONNECTION_STATE.DISCONNECTED:
            return
        if self._seal is not None:
            token = self._seal_frame(message)
        else:
            if self.sendRandKey:
                message = (self.sendRandKey, message)
            token = self.encryptor.encrypt_at_time(zlib.compress(pickle.dumps(message), 3), int(time.monotonic()))
        self._wbuf += HEADER.pack(len(token))
        self._wbuf += token
        self._flush()

    def _seal_frame(self, message: Any) -> bytes:
        data = stdpickle.dumps(message, SEALED_PICKLE_PROTOCOL)
        if len(data) >= COMPRESS_FROM_BYTES:
            body = bytes((_ZLIB,)) + zlib.compress(data, 3)
        else:
            body = bytes((_RAW,)) + data
        seal = self._seal
        if seal is None:
            raise ProtocolError("no sealed-frame key on this connection")
        nonce = self._send_count.to_bytes(12, "little")
        self._send_count += 1
        return seal.encrypt(nonce, body, None)

    def disconnect(self) -> None:
        on_disconnected = self._on_disconnected if self._state != CONNECTION_STATE.DISCONNECTED else None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fileno is not None:
            self._poller.unsubscribe(self._fileno)
            self._fileno = None
        self._reset_buffers()
        self._state = CONNECTION_STATE.DISCONNECTED
        if on_disconnected is not None:
            on_disconnected()

    # ---- events -------------------------------------------------------------------------------

    def _set_keepalive(self) -> None:
        if self._sock is not None and self._keepalive is not None:
            set_keepalive(self._sock, *self._keepalive)

    def _subscribe(self, mask: int) -> None:
        self._poller.subscribe(self._fileno, self._on_event, mask)

    def _on_event(self, descr: int, event: int) -> None:
        if descr != self._fileno:
            self._poller.unsubscribe(descr)
            return
        if event & POLL_EVENT_TYPE.ERROR or self._timed_out():
            self.disconnect()
            return
        if self._state == CONNECTION_STATE.CONNECTING:
            if self._sock is None or self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self.disconnect()
                return
            if self._on_connected is not None:
                self._on_connected()
            if self._state == CONNECTION_STATE.DISCONNECTED:
                return
            self._state = CONNECTION_STATE.CONNECTED
            self._last_read = time.monotonic()
            return
        if event & POLL_EVENT_TYPE.WRITE:
            self._flush()
            if self._state == CONNECTION_STATE.DISCONNECTED:
                return
            mask = POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR
            if self.getSendBufferSize():
                mask |= POLL_EVENT_TYPE.WRITE
            self._subscribe(mask)
        if event & POLL_EVENT_TYPE.READ:
            try:
                self._read()
            except ProtocolError as err:
                _warn_dropped(str(err))
                self.disconnect()

    def _timed_out(self) -> bool:
        return time.monotonic() - self._last_read > self._timeout

    def _flush(self) -> None:
        if self._timed_out():
            self.disconnect()
            return
        sock = self._sock
        while sock is not None and self._wpos < len(self._wbuf):
            view = memoryview(self._wbuf)
            try:
                rest = view[self._wpos :]
                try:
                    sent = sock.send(rest)
                finally:
                    rest.release()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.disconnect()
                return
            finally:
                view.release()
            if sent <= 0:
                return
            self._wpos += sent
            if self._wpos == len(self._wbuf):
                self._wbuf.clear()
                self._wpos = 0
            elif self._wpos > COMPACT_BYTES and 2 * self._wpos > len(self._wbuf):
                del self._wbuf[: self._wpos]
                self._wpos = 0

    def _read(self) -> None:
        """Read what has arrived (up to a budget) and hand on every complete frame."""
        budget = READ_BUDGET_BYTES
        while budget > 0 and self._state != CONNECTION_STATE.DISCONNECTED:
            if self.authenticated:
                want = READ_CHUNK_BYTES
            else:  # never hold more than one handshake frame for an unproven peer
                want = HEADER.size + HANDSHAKE_FRAME_BYTES - (len(self._rbuf) - self._rpos)
                if want <= 0:
                    raise ProtocolError("handshake frame too large")
            if self._sock is None:
                return
            try:
                chunk = self._sock.recv(min(want, budget))
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.disconnect()
                return
            if not chunk:
                self.disconnect()
                return
            self._last_read = time.monotonic()
            budget -= len(chunk)
            self._rbuf += chunk
            while self._state != CONNECTION_STATE.DISCONNECTED:
                message = self._next_frame()
                if message is _INCOMPLETE:
                    break
                if self._on_message is not None:
                    self._on_message(message)

    def _next_frame(self) -> Any:
        buf, pos = self._rbuf, self._rpos
        if len(buf) - pos < HEADER.size:
            return _INCOMPLETE
        (size,) = HEADER.unpack_from(buf, pos)
        limit = MAX_FRAME_BYTES if self.authenticated else HANDSHAKE_FRAME_BYTES
        if not 0 < size <= limit:
            raise ProtocolError(f"frame of {size} bytes announced (limit {limit})")
        end = pos + HEADER.size + size
        if len(buf) < end:
            return _INCOMPLETE
        with memoryview(buf) as view, view[pos + HEADER.size : end] as body:
            token = bytes(body)  # the one copy of a frame's bytes
        if end == len(buf):
            buf.clear()
            self._rpos = 0
        elif end > COMPACT_BYTES and 2 * end > len(buf):
            del buf[:end]
            self._rpos = 0
        else:
            self._rpos = end
        return self._decode(token)

    def _decode(self, token: bytes) -> Any:
        if self._open is not None:
            return self._open_frame(token)
        try:
            data = self.encryptor.decrypt(token)  # checks the HMAC before anything else
        except Exception:
            raise ProtocolError("frame not sealed with the group's secret") from None
        stamp = _token_timestamp(token)
        if stamp < self._recv_last_ts:
            raise ProtocolError("frame older than the one before it")
        self._recv_last_ts = stamp
        try:
            message = pickle.loads(zlib.decompress(data))
        except Exception:
            raise ProtocolError("frame does not decode") from None
        if self.recvRandKey is not None:
            if not (isinstance(message, tuple) and len(message) == 2 and message[0] == self.recvRandKey):
                raise ProtocolError("frame not tagged with this connection's key")
            message = message[1]
            self.authenticated = True
        return message

    def _open_frame(self, frame: bytes) -> Any:
        nonce = self._recv_count.to_bytes(12, "little")
        if self._open is None:
            raise ProtocolError("no sealed-frame key on this connection")
        try:
            body = self._open.decrypt(nonce, frame, None)  # the tag is checked before anything else
        except InvalidTag:
            raise ProtocolError(
                "sealed frame failed authentication (altered, replayed, out of order or under another key)"
            ) from None
        self._recv_count += 1
        try:
            with memoryview(body) as view, view[1:] as data:
                if body[0] == _ZLIB:
                    return stdpickle.loads(zlib.decompress(data))
                if body[0] == _RAW:
                    return stdpickle.loads(data)
        except Exception:
            raise ProtocolError("frame does not decode") from None
        raise ProtocolError("sealed frame of an unknown kind")


class PeerServer:
    """The listening socket; accepted connections are `PeerConnection`s."""

    def __init__(self, poller, host: str, port: int, on_new_connection, encryptor, conf) -> None:
        self._poller = poller
        self._host = host
        self._port = int(port)
        self._on_new_connection = on_new_connection
        self._encryptor = encryptor
        self._conf = conf
        self._sock: socket.socket | None = None
        self._fileno: int | None = None

    def bind(self) -> None:
        conf = self._conf
        sock = socket.socket(_getAddrType(self._host), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, conf.sendBufferSize)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, conf.recvBufferSize)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setblocking(False)
            sock.bind((self._host, self._port))
            sock.listen(64)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._fileno = sock.fileno()
        self._poller.subscribe(self._fileno, self._on_accept, POLL_EVENT_TYPE.READ | POLL_EVENT_TYPE.ERROR)

    def unbind(self) -> None:
        if self._fileno is not None:
            self._poller.unsubscribe(self._fileno)
            self._fileno = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _on_accept(self, descr: int, event: int) -> None:
        if event & POLL_EVENT_TYPE.READ:
            for _ in range(16):  # a burst of connections does not hold up the tick
                if self._sock is None:
                    return
                try:
                    sock, _addr = self._sock.accept()
                except (BlockingIOError, InterruptedError):
                    return
                except OSError as err:
                    log.warning("Raft port: accept failed: %s", err)
                    return
                conf = self._conf
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, conf.sendBufferSize)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, conf.recvBufferSize)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setblocking(False)
                self._on_new_connection(
                    PeerConnection(
                        self._poller,
                        self._encryptor,
                        conf.connectionTimeout,
                        conf.sendBufferSize,
                        conf.recvBufferSize,
                        conf.tcp_keepalive,
                        sock=sock,
                    )
                )


class PeerTransport(TCPTransport):
    """PySyncObj's TCP transport with `PeerConnection`s, bounded handshakes and fewer commands."""

    offers_sealed_frames = True  # False: behave as a member from before sealed frames (tests)

    def __init__(self, syncObj, selfNode, otherNodes) -> None:
        if syncObj.encryptor is None:
            raise ValueError("Raft peers need a shared secret")
        self._handshakes: dict[PeerConnection, None] = {}  # unproven incoming connections, oldest first
        self._master_key = sealed_master_key(syncObj.conf.password) if self.offers_sealed_frames else b""
        super().__init__(syncObj, selfNode, otherNodes)

    def _new_connection(self) -> PeerConnection:
        conf = self._syncObj.conf
        return PeerConnection(
            self._syncObj._poller,
            self._syncObj.encryptor,
            conf.connectionTimeout,
            conf.sendBufferSize,
            conf.recvBufferSize,
            conf.tcp_keepalive,
        )

    def _createServer(self) -> None:
        conf = self._syncObj.conf
        if conf.bindAddress is not None:
            host, port = conf.bindAddress.rsplit(":", 1)
        else:
            host, port = self._selfNode.address.rsplit(":", 1)
            host = "::" if ":" in host else "0.0.0.0"
        if host not in ("0.0.0.0", "::"):
            host = globalDnsResolver().resolve(host)
        self._server = PeerServer(
            self._syncObj._poller, host, port, self._onNewIncomingConnection, self._syncObj.encryptor, conf
        )

    def addNode(self, node) -> None:
        self._nodes.add(node)
        self._nodeAddrToNode[node.address] = node
        if self._shouldConnect(node):
            conn = self._new_connection()
            conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
            conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
            conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
            self._connections[node] = conn

    def setOnUtilityMessageCallback(self, message, callback) -> None:
        if message in UTILITY_COMMANDS or not callback:
            super().setOnUtilityMessageCallback(message, callback)

    def _onNewIncomingConnection(self, conn: PeerConnection) -> None:
        while len(self._handshakes) >= MAX_HANDSHAKES:
            oldest = next(iter(self._handshakes))
            self._drop_handshake(oldest)
        self._handshakes[conn] = None
        self._unknownConnections.add(conn)
        conn.setOnMessageReceivedCallback(functools.partial(self._onIncomingMessageReceived, conn))
        conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))

    def _drop_handshake(self, conn: PeerConnection) -> None:
        self._handshakes.pop(conn, None)
        self._unknownConnections.discard(conn)
        conn.disconnect()

    def _onIncomingMessageReceived(self, conn: PeerConnection, message) -> None:
        if conn.recvRandKey is None:
            # The first frame decrypted, so the peer holds the secret (or replays a recorded
            # frame: it cannot then tag the next frame with the key chosen here).
            if not (isinstance(message, bytes) and len(message) == RAND_KEY_BYTES):
                self._refuse(conn, "bad handshake")
                return
            conn.sendRandKey = message
            conn.recvRandKey = os.urandom(RAND_KEY_BYTES)
            if self.offers_sealed_frames:
                conn.recvRandKey += SEALED_OFFER
            conn.send(conn.recvRandKey)
            return
        if (
            isinstance(message, list)
            and message
            and isinstance(message[0], str)
            and message[0] in self._onUtilityMessageCallbacks
        ):
            self._onUtilityMessage(conn, message)
            return
        sealed = (
            self.offers_sealed_frames
            and isinstance(message, tuple)
            and len(message) == 2
            and message[0] == SEALED_ACCEPT
        )
        if sealed:
            message = message[1]
        node = self._nodeAddrToNode.get(message) if isinstance(message, str) else None
        if node is None:
            # Read-only peers (which stream every entry) and non-members are refused.
            self._refuse(conn, f"not a member: {str(message)[:80]!r}")
            return
        self._handshakes.pop(conn, None)
        self._unknownConnections.discard(conn)
        self._connections[node] = conn
        if sealed:
            theirs, ours = conn.proven_keys()
            to_acceptor, to_initiator = sealed_frame_keys(self._master_key, theirs, ours)
            conn.use_sealed_frames(send_key=to_initiator, recv_key=to_acceptor)
        conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
        self._onNodeConnected(node)

    def _onOutgoingMessageReceived(self, conn: PeerConnection, message) -> None:
        """The acceptor's answer to our random key (already checked to carry it): its own key."""
        node = self._connToNode(conn)
        if (
            node is None
            or not isinstance(message, bytes)
            or len(message) not in (RAND_KEY_BYTES, RAND_KEY_BYTES + len(SEALED_OFFER))
        ):
            _warn_dropped("bad handshake answer")
            conn.disconnect()
            return
        conn.sendRandKey = message
        if (
            self.offers_sealed_frames
            and message.endswith(SEALED_OFFER)
            and len(message) == RAND_KEY_BYTES + len(SEALED_OFFER)
        ):
            conn.send((SEALED_ACCEPT, self._selfNode.address))  # the last Fernet frame this way
            theirs, ours = conn.proven_keys()
            to_acceptor, to_initiator = sealed_frame_keys(self._master_key, ours, theirs)
            conn.use_sealed_frames(send_key=to_acceptor, recv_key=to_initiator)
        else:
            conn.send(self._selfNode.address)
        conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
        self._onNodeConnected(node)

    def _refuse(self, conn: PeerConnection, why: str) -> None:
        _warn_dropped(why)
        self._drop_handshake(conn)

    def _onDisconnected(self, conn) -> None:
        self._handshakes.pop(conn, None)
        super()._onDisconnected(conn)

    def _onTick(self) -> None:
        super()._onTick()
        if self._handshakes:
            cutoff = time.monotonic() - HANDSHAKE_SECONDS
            for conn in [c for c in self._handshakes if c.opened_at < cutoff]:
                self._refuse(conn, "handshake not completed in time")

    def destroy(self) -> None:
        super().destroy()
        self._handshakes.clear()


# ---- addresses and probes ---------------------------------------------------------------------

_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_:")


def parse_address(address: str) -> tuple[str, int]:
    """`host:port` of a member, or ValueError saying what is wrong with it."""
    if not isinstance(address, str) or ":" not in address:
        raise ValueError(f"{address!r} is not a host:port address")
    host, port_text = address.rsplit(":", 1)
    if not host or len(host) > 253 or not set(host) <= _HOST_CHARS:
        raise ValueError(f"{address!r}: the host must be a DNS name or an IP address")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{address!r}: the port must be a number from 1 to 65535")
    return host, int(port_text)


class ProbeError(Exception):
    """A would-be member could not be reached, or does not hold this group's secret."""


def probe_member(address: str, encryptor, timeout: float) -> None:
    """Complete the handshake with `address` (blocking): it answers, and proves the secret.

    Used before a membership change is proposed: a member that does not answer cannot help commit
    the change, and the group would be left waiting for it.
    """
    host, port = parse_address(address)
    key = os.urandom(RAND_KEY_BYTES)
    token = encryptor.encrypt_at_time(zlib.compress(pickle.dumps(key), 3), int(time.monotonic()))
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(HEADER.pack(len(token)) + token)
            header = _recv_exactly(sock, HEADER.size)
            (size,) = HEADER.unpack(header)
            if not 0 < size <= HANDSHAKE_FRAME_BYTES:
                raise ProbeError(f"{address} does not speak the RankQ peer protocol")
            reply = _recv_exactly(sock, size)
    except ProbeError:
        raise
    except (OSError, EOFError) as err:
        if isinstance(err, EOFError):
            raise ProbeError(f"{address} closed the connection: it does not hold this group's secret") from None
        raise ProbeError(f"cannot reach {address}: {err.strerror or err}") from None
    try:
        message = pickle.loads(zlib.decompress(encryptor.decrypt(reply)))
    except Exception:
        raise ProbeError(f"{address} does not hold this group's secret") from None
    if not (isinstance(message, tuple) and len(message) == 2 and message[0] == key):
        raise ProbeError(f"{address} answered the handshake wrongly")


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise EOFError
        out += chunk
    return bytes(out)
