"""`AsyncClient` and its synchronous twin `Client`.

`AsyncClient` holds the whole client logic on top of one transport (HTTP or gRPC, chosen by the
URL's scheme). `Client` runs an `AsyncClient` on a private event loop in a background thread and
waits for each call, so both have the same methods, arguments, results and errors.

Retries
-------
A call that fails with `TransportError` (connection refused or broken, timeout) or
`UnavailableError` (503: no leader can commit right now) is retried, moving to the next member's
URL, with exponential backoff (0.1 s doubling up to 1 s, with jitter) for up to `retry_budget`
seconds from the call's start (10 s: a leader failover takes about 1-2 s, and a write caught by
one is answered after the server's 5 s commit timeout), and at most `retries` more times when
that is set, but only when repeating it cannot apply it twice:

========================================== =====================================================
retried                                    why a repeat is harmless
========================================== =====================================================
list_queues, get_queue, get_message,       reads
dead_letters, iter_dead_letters,
redrive_status
update_queue, set_priority, redrive        setting the same value again changes nothing (a
(without a rate), stop_redrive             paced redrive is not retried: a repeat would find
                                           it running and get 409)
enqueue / enqueue_batch with a dedup_key   the server answers a repeat with the first id
(every message of the batch has one)       (``duplicate=True``) within the queue's dedup window
ack, ack_batch, nack, extend,              a repeat after the first one took effect finds the
release                                    lease gone and gets 409 (ConflictError), so it can
                                           never finish or return a message twice. The flip
                                           side: a retried ack or nack that raises
                                           ConflictError may in fact have succeeded.
========================================== =====================================================

Never retried: enqueue without a dedup key (a lost answer would turn into a duplicate message),
dequeue (a lost answer would strand the leased messages until their visibility timeout),
create_queue, delete_queue and cancel (a repeat would turn a success into 409 or 404). Pass a
`dedup_key` to make an enqueue safe to retry.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
import uuid
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import fields
from datetime import datetime
from functools import partial
from typing import Any, TypeVar, overload
from urllib.parse import urlsplit

from .backup import BackupSummary, chunks, summarize
from .errors import ConflictError, InvalidRequestError, RankQError, TransportError, UnavailableError, error_for
from .transport import AsyncTransport
from .types import (
    AckOutcome,
    DependsOn,
    EnqueueResult,
    Message,
    MessageStatus,
    NackResult,
    NewMessage,
    QueueInfo,
    RedriveJob,
    RedriveResult,
)

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 10.0
DEFAULT_RETRY_BUDGET = 10.0  # seconds a retried call keeps trying; see the module docstring
DEFAULT_RETRY_BACKOFF = 0.1  # first pause between attempts, doubled each time...
RETRY_DELAY_CAP = 1.0  # ...up to this, so a new leader is found soon after it is elected

_NEW_MESSAGE_FIELDS = frozenset(f.name for f in fields(NewMessage))


TLS_SCHEMES = ("https", "grpcs")


def make_transport(
    url: str, timeout: float = DEFAULT_TIMEOUT, token: str | None = None, ca: str | None = None
) -> AsyncTransport:
    """The transport for `url`: ``http://`` or ``https://`` → HTTP, ``grpc://`` or ``grpcs://``
    (host:port) → gRPC. `token` is sent as ``Authorization: Bearer <token>`` (HTTP header or gRPC
    metadata). ``https`` and ``grpcs`` use TLS and verify the server against `ca` (a PEM file), or
    against the system's CAs when `ca` is None."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if ca is not None and scheme not in TLS_SCHEMES:
        raise ValueError(f"a CA is given but {url!r} does not use TLS: use https:// or grpcs://")
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"no host in URL {url!r}")
        from .http_transport import HttpTransport

        verify: Any = True
        if ca is not None:
            import ssl

            verify = ssl.create_default_context(cafile=ca)
        return HttpTransport(
            url, timeout=timeout, headers={"Authorization": f"Bearer {token}"} if token else None, verify=verify
        )
    if scheme in ("grpc", "grpcs"):
        if not parts.hostname or parts.port is None:
            raise ValueError(f"a gRPC URL needs host and port, e.g. grpc://127.0.0.1:9090 (got {url!r})")
        from ..extras import require

        with require("grpc"):  # imported only when used: grpcio is the rankq[grpc] extra
            from .grpc_transport import GrpcTransport, tls_credentials

        return GrpcTransport(
            parts.netloc,
            timeout=timeout,
            credentials=tls_credentials(ca) if scheme == "grpcs" else None,
            metadata=[("authorization", f"Bearer {token}")] if token else None,
        )
    raise ValueError(f"unsupported URL {url!r}: use http://, https://, grpc://host:port or grpcs://host:port")


def read_token_file(path: str) -> str:
    """The token in a token file: the first word of its first line that is not blank or a
    ``#`` comment (so a server's token file, `TOKEN scopes` lines included, works as is)."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            line = line.strip()
            if line and not line.startswith("#"):
                return line.split()[0]
    raise ValueError(f"token file {path} holds no token (it is empty)")


def as_new_message(item: NewMessage | dict[str, Any] | Any) -> NewMessage:
    """Read one item of a batch: a `NewMessage`; a dict of `NewMessage` fields that includes
    ``payload`` (e.g. ``{"payload": {...}, "priority": 1}``); anything else is a payload. Wrap a
    payload that itself looks like such a dict in `NewMessage` to keep it whole."""
    if isinstance(item, NewMessage):
        return item
    if isinstance(item, dict) and "payload" in item and set(item) <= _NEW_MESSAGE_FIELDS:
        return NewMessage(**item)
    return NewMessage(payload=item)


def _lease_of(target: Message | str, args: tuple[Any, ...], op: str) -> tuple[str, int, str, tuple[Any, ...]]:
    """(queue, id, lease_token, remaining positional args) from a Message or queue, id, token."""
    if isinstance(target, Message):
        return target.queue, target.id, target.lease_token, args
    if isinstance(target, str):
        if len(args) < 2:
            raise TypeError(f"{op}() takes a Message, or a queue name, message id and lease token")
        return target, int(args[0]), str(args[1]), args[2:]
    raise TypeError(f"{op}() takes a Message or a queue name, not {type(target).__name__}")


def _one_optional(rest: tuple[Any, ...], kw: Any, op: str, name: str) -> Any:
    if len(rest) > 1 or (rest and kw is not None):
        raise TypeError(f"{op}(): too many arguments; pass {name}= by keyword")
    return rest[0] if rest else kw


class AsyncClient:
    """Asynchronous RankQ client.

    >>> async with AsyncClient("http://127.0.0.1:8080") as rq:
    ...     await rq.enqueue("emails", {"to": "a@example.com"}, priority=1)
    ...     for msg in await rq.dequeue("emails", max=10, wait=5):
    ...         await rq.ack(msg, result={"sent": True})

    `url` picks the transport: ``http://`` / ``https://`` or ``grpc://host:port``. Give several
    members of a replicated group (a list, or one comma-separated string) and the client moves to
    the next one when a node cannot be reached or answers 503; any member accepts any request.
    `timeout`
    (seconds) bounds each request (a long poll gets its `wait` on top). A failed idempotent call is
    repeated for up to `retry_budget` seconds, at most `retries` more times when that is set (0:
    never); see the module documentation for which calls qualify.
    `token` is the server's API token, when it requires one, or `token_file` a file holding it.
    ``https://`` and ``grpcs://`` URLs use TLS; `ca` is the PEM file of the CA that signed the
    servers' certificates (default: the system's CAs).
    Durations are seconds; queue settings use the wire names (see ``rankq.schemas.QueueSettings``).
    """

    def __init__(
        self,
        url: str | Iterable[str] = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int | None = None,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        transport: AsyncTransport | None = None,
        token: str | None = None,
        token_file: str | None = None,
        ca: str | None = None,
    ) -> None:
        if token is not None and token_file is not None:
            raise ValueError("give token or token_file, not both")
        if token_file is not None:
            token = read_token_file(token_file)
        if retries is not None and retries < 0:
            raise ValueError("retries must be 0 or more")
        if not retry_budget >= 0:
            raise ValueError("retry_budget must be 0 or more seconds")
        urls = [u.strip() for u in url.split(",")] if isinstance(url, str) else [str(u).strip() for u in url]
        urls = [u for u in urls if u]
        if not urls:
            raise ValueError("no server URL given")
        self.urls = urls
        self.url = urls[0]
        self.timeout = timeout
        self.retries = retries
        self.retry_backoff = retry_backoff
        self.retry_budget = retry_budget
        self._transports: dict[int, AsyncTransport] = {}
        if transport is not None:
            self._transports[0] = transport
        else:
            for u in urls:  # fail early on a malformed URL
                urlsplit(u)
            self._transports[0] = make_transport(urls[0], timeout, token, ca)
        self._token = token
        self._ca = ca
        self._current = 0
        self._closed = False

    @property
    def _transport(self) -> AsyncTransport:
        t = self._transports.get(self._current)
        if t is None:
            t = self._transports[self._current] = make_transport(
                self.urls[self._current], self.timeout, self._token, self._ca
            )
        return t

    def _next_node(self) -> None:
        """Use the next member's URL from now on (after it failed to answer or had no leader)."""
        if len(self.urls) > 1:
            self._current = (self._current + 1) % len(self.urls)
            self.url = self.urls[self._current]

    async def close(self) -> None:
        """Close the connections. The client cannot be used afterwards."""
        if not self._closed:
            self._closed = True
            for t in self._transports.values():
                await t.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncClient({self.url!r})"

    async def _call(self, op: Callable[[], Awaitable[T]], retry: bool) -> T:
        attempt = 0
        give_up_at = time.monotonic() + self.retry_budget
        while True:
            try:
                return await op()
            except (TransportError, UnavailableError):
                self._next_node()
                cap = min(RETRY_DELAY_CAP, self.retry_backoff * (2 ** min(attempt, 30)))
                delay = random.uniform(cap / 2, cap)
                if (
                    not retry
                    or (self.retries is not None and attempt >= self.retries)
                    or time.monotonic() + delay > give_up_at
                ):
                    raise
            await asyncio.sleep(delay)
            attempt += 1

    # ---- queues --------------------------------------------------------------------------------

    async def create_queue(self, name: str, *, exist_ok: bool = False, **settings: Any) -> QueueInfo:
        """Create queue `name`. Settings (all optional, wire units): policy ("strict" or
        "weighted"), weights ({priority: weight}), default_priority, fair_groups,
        group_max_inflight, visibility_timeout, max_deliveries, dead_letter,
        dead_letter_retention, retention, max_length, max_payload_bytes, dedup_window,
        retry_base, retry_max. Raises ConflictError when it exists, unless `exist_ok`: then the
        existing queue is returned as it is (its settings are not changed). Not retried."""
        try:
            return await self._call(lambda: self._transport.create_queue(name, settings), retry=False)
        except ConflictError:
            if not exist_ok:
                raise
            return await self.get_queue(name)

    async def list_queues(self) -> list[QueueInfo]:
        """All queues with their settings and counts."""
        return await self._call(self._transport.list_queues, retry=True)

    async def get_queue(self, name: str) -> QueueInfo:
        """Settings and counts (ready, delayed, leased, dead) of one queue; NotFoundError if absent."""
        return await self._call(lambda: self._transport.get_queue(name), retry=True)

    async def update_queue(self, name: str, **changes: Any) -> QueueInfo:
        """Change settings live (same names as `create_queue`). Settings left out keep their
        values; ``None`` clears an optional limit (max_length, group_max_inflight,
        dead_letter_retention)."""
        return await self._call(lambda: self._transport.update_queue(name, changes), retry=True)

    async def delete_queue(self, name: str) -> None:
        """Delete a queue and every message in it. Not retried."""
        await self._call(lambda: self._transport.delete_queue(name), retry=False)

    # ---- messages ------------------------------------------------------------------------------

    async def enqueue(
        self,
        queue: str,
        payload: Any,
        *,
        priority: int | None = None,
        group: str | None = None,
        delay: float | None = None,
        deliver_at: datetime | None = None,
        headers: dict[str, str] | None = None,
        dedup_key: str | None = None,
        ttl: float | None = None,
        expires_at: datetime | None = None,
        depends_on: Iterable[DependsOn] | None = None,
    ) -> EnqueueResult:
        """Add one message. `payload` is any JSON value (``bytes`` only over gRPC). A lower
        `priority` number is served sooner; `group` is the fairness key; `delay` (seconds) or
        `deliver_at` hold the message back. With `dedup_key`, a repeat within the queue's dedup
        window returns the first id with ``duplicate=True`` — and only then is the call retried.
        `ttl` (seconds) or `expires_at` bound how long it may wait to be acked (then it is
        dead-lettered as ``expired``). `depends_on` names messages that must be acked first: ids
        of this queue, ``(queue, id)`` pairs for other queues of the group, or `Dependency`; the
        message waits (state ``waiting``) until then.
        Raises QueueFullError (429) at max_length, PayloadTooLargeError (413), NotFoundError for
        an unknown dependency."""
        msg = NewMessage(
            payload=payload,
            priority=priority,
            group=group,
            delay=delay,
            deliver_at=deliver_at,
            headers=headers,
            dedup_key=dedup_key,
            ttl=ttl,
            expires_at=expires_at,
            depends_on=None if depends_on is None else list(depends_on),
        )
        [res] = await self._call(lambda: self._transport.enqueue(queue, [msg]), retry=dedup_key is not None)
        return res

    async def enqueue_batch(
        self, queue: str, messages: Iterable[NewMessage | dict[str, Any] | Any]
    ) -> list[EnqueueResult]:
        """Add up to 1000 messages at once: all are accepted or none. Each item is a `NewMessage`,
        a dict of its fields including ``payload``, or a bare payload. Results are in order.
        A message may depend on an earlier one of the same batch with ``BatchRef(index)``.
        Retried only when every message has a dedup key."""
        batch = [as_new_message(m) for m in messages]
        if not batch:
            return []
        retry = all(m.dedup_key is not None for m in batch)
        return await self._call(lambda: self._transport.enqueue(queue, batch), retry=retry)

    async def dequeue(
        self, queue: str, max: int = 1, wait: float = 0, visibility_timeout: float | None = None
    ) -> list[Message]:
        """Lease up to `max` messages (possibly none). With `wait` (seconds, at most 20), wait for
        a message when none is ready and return as soon as one is. Each message stays invisible to
        others for `visibility_timeout` seconds (default: the queue's); ack, nack or extend it
        before then. Not retried."""
        return await self._call(lambda: self._transport.dequeue(queue, max, wait, visibility_timeout), retry=False)

    @overload
    async def ack(self, message: Message, result: Any = None) -> None: ...
    @overload
    async def ack(self, queue: str, id: int, lease_token: str, /, result: Any = None) -> None: ...

    async def ack(self, message: Message | str, *args: Any, result: Any = None) -> None:
        """Finish a leased message: ``ack(message, result=...)`` or ``ack(queue, id, lease_token)``.
        `result` (any JSON value) stays readable with `get_message` for the queue's retention.
        Raises ConflictError (409) when the lease is stale or the token wrong."""
        queue, mid, token, rest = _lease_of(message, args, "ack")
        result = _one_optional(rest, result, "ack", "result")
        [outcome] = await self._call(lambda: self._transport.ack(queue, [(mid, token, result)]), retry=True)
        if not outcome.ok:
            raise error_for(outcome.status, outcome.detail or "ack failed")

    async def ack_batch(self, messages: Iterable[Message | tuple[Message, Any]]) -> list[AckOutcome]:
        """Ack many messages (from any queues); items are messages or ``(message, result)`` pairs.
        Each succeeds or fails on its own: failures come back as outcomes with ``ok=False`` and a
        status (409 for a stale lease), not as exceptions. Outcomes are in input order."""
        items: list[tuple[Message, Any]] = [m if isinstance(m, tuple) else (m, None) for m in messages]
        by_queue: dict[str, list[int]] = {}
        for i, (m, _) in enumerate(items):
            by_queue.setdefault(m.queue, []).append(i)
        out: list[AckOutcome | None] = [None] * len(items)
        for queue, idx in by_queue.items():
            batch = [(items[i][0].id, items[i][0].lease_token, items[i][1]) for i in idx]
            got = await self._call(partial(self._transport.ack, queue, batch), retry=True)
            for i, outcome in zip(idx, got):
                out[i] = outcome
        return [o for o in out if o is not None]

    @overload
    async def nack(
        self, message: Message, *, delay: float | None = None, error: str | None = None, dead: bool = False
    ) -> NackResult: ...
    @overload
    async def nack(
        self,
        queue: str,
        id: int,
        lease_token: str,
        /,
        *,
        delay: float | None = None,
        error: str | None = None,
        dead: bool = False,
    ) -> NackResult: ...

    async def nack(
        self,
        message: Message | str,
        *args: Any,
        delay: float | None = None,
        error: str | None = None,
        dead: bool = False,
    ) -> NackResult:
        """Give a leased message back for redelivery after `delay` seconds (default: the queue's
        exponential backoff with jitter); `error` is kept as its last_error. The result's state is
        ready, delayed, or dead once max_deliveries is used up. ``dead=True`` dead-letters it at
        once (a message no retry can fix). ConflictError on a stale lease."""
        queue, mid, token, rest = _lease_of(message, args, "nack")
        if rest:
            raise TypeError("nack(): pass delay=, error= and dead= by keyword")
        return await self._call(lambda: self._transport.nack(queue, mid, token, delay, error, dead), retry=True)

    @overload
    async def release(self, message: Message) -> None: ...
    @overload
    async def release(self, queue: str, id: int, lease_token: str, /) -> None: ...

    async def release(self, message: Message | str, *args: Any) -> None:
        """Give a leased message back, ready at once, without counting the delivery: for a
        consumer that stops before running it. ConflictError on a stale lease."""
        queue, mid, token, rest = _lease_of(message, args, "release")
        if rest:
            raise TypeError("release(): too many arguments")
        await self._call(lambda: self._transport.release(queue, mid, token), retry=True)

    @overload
    async def extend(self, message: Message, visibility_timeout: float | None = None) -> datetime: ...
    @overload
    async def extend(
        self, queue: str, id: int, lease_token: str, /, visibility_timeout: float | None = None
    ) -> datetime: ...

    async def extend(self, message: Message | str, *args: Any, visibility_timeout: float | None = None) -> datetime:
        """Keep a lease for `visibility_timeout` more seconds from now (default: the queue's).
        Returns the new expiry (the `Message` object itself is immutable and keeps the old one).
        ConflictError on a stale lease."""
        queue, mid, token, rest = _lease_of(message, args, "extend")
        vt = _one_optional(rest, visibility_timeout, "extend", "visibility_timeout")
        return await self._call(lambda: self._transport.extend(queue, mid, token, vt), retry=True)

    async def set_priority(self, queue: str, id: int, priority: int) -> MessageStatus:
        """Change the priority of a ready or delayed message (ConflictError while it is leased)."""
        return await self._call(lambda: self._transport.set_priority(queue, id, priority), retry=True)

    async def get_message(self, queue: str, id: int) -> MessageStatus:
        """State of a message: ready, delayed, leased, dead or acked (with its result, while
        retained). NotFoundError once it is gone."""
        return await self._call(lambda: self._transport.get_message(queue, id), retry=True)

    async def cancel(self, queue: str, id: int) -> None:
        """Remove a ready or delayed message, or delete a dead letter (ConflictError while leased).
        Not retried."""
        await self._call(lambda: self._transport.cancel(queue, id), retry=False)

    # ---- dead letters --------------------------------------------------------------------------

    async def dead_letters(self, queue: str, *, after: int | None = None, limit: int = 100) -> list[MessageStatus]:
        """One page of dead letters, by id, starting after id `after`. A page of `limit` items may
        have more behind it: ask again with ``after=page[-1].id``, or use `iter_dead_letters`."""
        items, _ = await self._call(lambda: self._transport.dead_letters(queue, after, limit), retry=True)
        return items

    async def iter_dead_letters(self, queue: str, *, page_size: int = 100) -> AsyncGenerator[MessageStatus, None]:
        """Every dead letter of `queue`, fetched `page_size` at a time."""
        after: int | None = None
        while True:
            items, after = await self._call(partial(self._transport.dead_letters, queue, after, page_size), retry=True)
            for item in items:
                yield item
            if after is None or not items:
                return

    async def redrive(self, queue: str, ids: Iterable[int] | None = None, *, rate: int | None = None) -> RedriveResult:
        """Move dead letters back to the queue with a fresh delivery count: the given ids, or all
        of them when `ids` is None. Ids that are not dead letters are listed in ``not_found``.
        With `rate` (messages per second) nothing moves at once: a paced redrive starts in the
        group and ``job`` describes it (ConflictError while another runs; not retried then)."""
        wanted = None if ids is None else [int(i) for i in ids]
        return await self._call(lambda: self._transport.redrive(queue, wanted, rate), retry=rate is None)

    async def redrive_status(self, queue: str) -> RedriveJob:
        """The queue's paced redrive (running, done or stopped); NotFoundError when it had none."""
        return await self._call(lambda: self._transport.redrive_status(queue), retry=True)

    async def stop_redrive(self, queue: str) -> RedriveJob:
        """Stop the queue's paced redrive; what it moved stays moved. Returns its last status."""
        return await self._call(lambda: self._transport.stop_redrive(queue), retry=True)

    # ---- the group (HTTP only) -----------------------------------------------------------------

    def _admin(self, name: str) -> Any:
        fn = getattr(self._transport, name, None)
        if fn is None:
            raise InvalidRequestError("cluster administration is served over HTTP: use an http:// URL")
        return fn

    async def cluster_status(self) -> dict[str, Any]:
        """Leader, term, commit index, and every member's id, address, role, health and progress."""
        return await self._call(lambda: self._admin("cluster_status")(), retry=True)

    async def add_member(self, address: str) -> dict[str, Any]:
        """Add a started node (Raft address host:port) to the group; one change at a time."""
        return await self._call(lambda: self._admin("add_member")(address), retry=False)

    async def remove_member(self, member: str) -> dict[str, Any]:
        """Remove a member by node id or Raft address (transfer leadership away from it first)."""
        return await self._call(lambda: self._admin("remove_member")(member), retry=False)

    async def transfer_leader(self, to: str | None = None) -> dict[str, Any]:
        """Move leadership to `to` (node id or address), or to the most caught-up follower."""
        return await self._call(lambda: self._admin("transfer_leader")(to), retry=False)

    # ---- backup and restore --------------------------------------------------------------------

    async def backup(self, path: str) -> BackupSummary:
        """Write a consistent backup of the whole group to `path` (gzip'd JSON lines), taken on the
        leader: every queue with its settings, messages, dead letters, retained results and dedup
        keys. Leased messages are restored ready. Needs http(s) URLs and the admin scope."""
        part = path + ".part"

        async def attempt() -> None:
            transport = self._transport
            if not hasattr(transport, "backup"):
                raise RankQError("backup and restore need an http:// or https:// URL")
            with open(part, "wb") as out:
                await transport.backup(out)  # type: ignore[attr-defined]

        await self._call(attempt, retry=True)
        summary = await asyncio.to_thread(summarize, part, os.path.getsize(part))
        os.replace(part, path)
        return BackupSummary(path=path, bytes=summary.bytes, records=summary.records)

    async def restore(self, path: str) -> BackupSummary:
        """Load the backup at `path` into this group, which must not have its queues yet (restore
        into a new group). Chunks go through the log, so every member ends with the same state; a
        chunk repeated after a failover is applied once."""
        summary = await asyncio.to_thread(summarize, path, os.path.getsize(path))
        restore_id = uuid.uuid4().hex
        parts = chunks(path)
        index = 0
        while True:
            chunk = await asyncio.to_thread(next, parts, None)
            if chunk is None:
                break

            async def send(i: int = index, records: list[Any] = chunk) -> Any:
                transport = self._transport
                if not hasattr(transport, "restore_chunk"):
                    raise RankQError("backup and restore need an http:// or https:// URL")
                return await transport.restore_chunk(restore_id, i, records)  # type: ignore[attr-defined]

            await self._call(send, retry=True)
            index += 1
        return summary


class _LoopThread:
    """An event loop running forever in a daemon thread; `run` submits a coroutine and waits."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._main, name="rankq-client", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = asyncio.all_tasks(self.loop)
                for task in pending:
                    task.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            finally:
                self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a sync Client cannot be called from its own event loop")
        if not self.thread.is_alive():
            coro.close()
            raise RuntimeError("the client is closed")
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:
            fut.cancel()  # e.g. Ctrl-C during a long poll: do not leave the request running
            raise

    def stop(self) -> None:
        if self.thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            if threading.current_thread() is not self.thread:
                self.thread.join(timeout=10)


class Client:
    """Synchronous RankQ client: the same methods as `AsyncClient`, blocking until done.

    >>> with Client("http://127.0.0.1:8080") as rq:
    ...     rq.enqueue("emails", {"to": "a@example.com"}, priority=1)
    ...     for msg in rq.dequeue("emails", max=10, wait=5):
    ...         rq.ack(msg, result={"sent": True})

    It runs an `AsyncClient` on a private event loop in a background thread, so one `Client` may
    be shared by several threads (a long poll in one does not block calls from the others).
    `close()` (or leaving the ``with`` block) closes the connections and stops the thread.
    """

    def __init__(
        self,
        url: str | Iterable[str] = DEFAULT_URL,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int | None = None,
        retry_backoff: float = DEFAULT_RETRY_BACKOFF,
        retry_budget: float = DEFAULT_RETRY_BUDGET,
        transport: AsyncTransport | None = None,
        token: str | None = None,
        token_file: str | None = None,
        ca: str | None = None,
    ) -> None:
        self.url = url
        self._loop = _LoopThread()
        self._stop = weakref.finalize(self, self._loop.stop)

        async def make() -> AsyncClient:
            return AsyncClient(
                url,
                timeout=timeout,
                retries=retries,
                retry_backoff=retry_backoff,
                retry_budget=retry_budget,
                transport=transport,
                token=token,
                token_file=token_file,
                ca=ca,
            )

        try:
            self._async = self._loop.run(make())
        except BaseException:
            self._stop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    @property
    def retries(self) -> int | None:
        return self._async.retries

    @property
    def retry_budget(self) -> float:
        return self._async.retry_budget

    def close(self) -> None:
        """Close the connections and stop the background thread. Safe to call twice."""
        if not self._stop.alive:
            return
        try:
            self._run(self._async.close())
        finally:
            self._stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # Each method hands its arguments to the AsyncClient method of the same name (docs copied below).

    def create_queue(self, name: str, *, exist_ok: bool = False, **settings: Any) -> QueueInfo:
        return self._run(self._async.create_queue(name, exist_ok=exist_ok, **settings))

    def list_queues(self) -> list[QueueInfo]:
        return self._run(self._async.list_queues())

    def get_queue(self, name: str) -> QueueInfo:
        return self._run(self._async.get_queue(name))

    def update_queue(self, name: str, **changes: Any) -> QueueInfo:
        return self._run(self._async.update_queue(name, **changes))

    def delete_queue(self, name: str) -> None:
        return self._run(self._async.delete_queue(name))

    def enqueue(
        self,
        queue: str,
        payload: Any,
        *,
        priority: int | None = None,
        group: str | None = None,
        delay: float | None = None,
        deliver_at: datetime | None = None,
        headers: dict[str, str] | None = None,
        dedup_key: str | None = None,
        ttl: float | None = None,
        expires_at: datetime | None = None,
        depends_on: Iterable[DependsOn] | None = None,
    ) -> EnqueueResult:
        return self._run(
            self._async.enqueue(
                queue,
                payload,
                priority=priority,
                group=group,
                delay=delay,
                deliver_at=deliver_at,
                headers=headers,
                dedup_key=dedup_key,
                ttl=ttl,
                expires_at=expires_at,
                depends_on=None if depends_on is None else list(depends_on),
            )
        )

    def enqueue_batch(self, queue: str, messages: Iterable[NewMessage | dict[str, Any] | Any]) -> list[EnqueueResult]:
        return self._run(self._async.enqueue_batch(queue, list(messages)))

    def dequeue(
        self, queue: str, max: int = 1, wait: float = 0, visibility_timeout: float | None = None
    ) -> list[Message]:
        return self._run(self._async.dequeue(queue, max, wait, visibility_timeout))

    @overload
    def ack(self, message: Message, result: Any = None) -> None: ...
    @overload
    def ack(self, queue: str, id: int, lease_token: str, /, result: Any = None) -> None: ...

    def ack(self, message: Message | str, *args: Any, result: Any = None) -> None:
        return self._run(self._async.ack(message, *args, result=result))  # type: ignore[call-overload,no-any-return]

    def ack_batch(self, messages: Iterable[Message | tuple[Message, Any]]) -> list[AckOutcome]:
        return self._run(self._async.ack_batch(list(messages)))

    @overload
    def nack(
        self, message: Message, *, delay: float | None = None, error: str | None = None, dead: bool = False
    ) -> NackResult: ...
    @overload
    def nack(
        self,
        queue: str,
        id: int,
        lease_token: str,
        /,
        *,
        delay: float | None = None,
        error: str | None = None,
        dead: bool = False,
    ) -> NackResult: ...

    def nack(
        self,
        message: Message | str,
        *args: Any,
        delay: float | None = None,
        error: str | None = None,
        dead: bool = False,
    ) -> NackResult:
        return self._run(self._async.nack(message, *args, delay=delay, error=error, dead=dead))

    @overload
    def release(self, message: Message) -> None: ...
    @overload
    def release(self, queue: str, id: int, lease_token: str, /) -> None: ...

    def release(self, message: Message | str, *args: Any) -> None:
        return self._run(self._async.release(message, *args))

    @overload
    def extend(self, message: Message, visibility_timeout: float | None = None) -> datetime: ...
    @overload
    def extend(self, queue: str, id: int, lease_token: str, /, visibility_timeout: float | None = None) -> datetime: ...

    def extend(self, message: Message | str, *args: Any, visibility_timeout: float | None = None) -> datetime:
        return self._run(self._async.extend(message, *args, visibility_timeout=visibility_timeout))  # type: ignore[call-overload,no-any-return]

    def set_priority(self, queue: str, id: int, priority: int) -> MessageStatus:
        return self._run(self._async.set_priority(queue, id, priority))

    def get_message(self, queue: str, id: int) -> MessageStatus:
        return self._run(self._async.get_message(queue, id))

    def cancel(self, queue: str, id: int) -> None:
        return self._run(self._async.cancel(queue, id))

    def dead_letters(self, queue: str, *, after: int | None = None, limit: int = 100) -> list[MessageStatus]:
        return self._run(self._async.dead_letters(queue, after=after, limit=limit))

    def iter_dead_letters(self, queue: str, *, page_size: int = 100) -> Iterator[MessageStatus]:
        pages = self._async.iter_dead_letters(queue, page_size=page_size)

        async def step() -> tuple[bool, MessageStatus | None]:
            try:
                return True, await pages.__anext__()
            except StopAsyncIteration:
                return False, None

        async def close() -> None:
            await pages.aclose()

        try:
            while True:
                more, item = self._run(step())
                if not more or item is None:
                    return
                yield item
        finally:
            if self._stop.alive:
                self._run(close())

    def redrive(self, queue: str, ids: Iterable[int] | None = None, *, rate: int | None = None) -> RedriveResult:
        return self._run(self._async.redrive(queue, None if ids is None else list(ids), rate=rate))

    def redrive_status(self, queue: str) -> RedriveJob:
        return self._run(self._async.redrive_status(queue))

    def stop_redrive(self, queue: str) -> RedriveJob:
        return self._run(self._async.stop_redrive(queue))

    def cluster_status(self) -> dict[str, Any]:
        return self._run(self._async.cluster_status())

    def add_member(self, address: str) -> dict[str, Any]:
        return self._run(self._async.add_member(address))

    def remove_member(self, member: str) -> dict[str, Any]:
        return self._run(self._async.remove_member(member))

    def transfer_leader(self, to: str | None = None) -> dict[str, Any]:
        return self._run(self._async.transfer_leader(to))

    def backup(self, path: str) -> BackupSummary:
        return self._run(self._async.backup(path))

    def restore(self, path: str) -> BackupSummary:
        return self._run(self._async.restore(path))


for _name in (
    "create_queue",
    "list_queues",
    "get_queue",
    "update_queue",
    "delete_queue",
    "enqueue",
    "enqueue_batch",
    "dequeue",
    "ack",
    "ack_batch",
    "nack",
    "extend",
    "set_priority",
    "get_message",
    "cancel",
    "dead_letters",
    "iter_dead_letters",
    "redrive",
    "redrive_status",
    "stop_redrive",
    "cluster_status",
    "add_member",
    "remove_member",
    "transfer_leader",
    "backup",
    "restore",
):
    getattr(Client, _name).__doc__ = getattr(AsyncClient, _name).__doc__
del _name
