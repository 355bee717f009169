"""The gRPC transport of the client: `AsyncTransport` over grpc.aio, plus the two streams.

Payloads: `bytes` (or bytearray/memoryview) travel as raw bytes; any other value travels as JSON
(content type application/json) and is stored as JSON, exactly like an HTTP enqueue. On the way
back, JSON payloads are decoded and raw ones come back as `bytes`.

Errors carry the HTTP status in the trailing metadata `rankq-status`, so they raise the same
`rankq.client.errors` classes as over HTTP. A server that cannot be reached, a broken connection or
a deadline that passed raise `TransportError`.

Streams (gRPC only):

    async for index, outcome in transport.enqueue_stream("jobs", messages):
        ...  # outcome is an EnqueueResult, or the ApiError that refused messages[index]

    async with transport.dequeue_stream("jobs", credits=10, refill=True) as stream:
        async for msg in stream:  # never more than the granted credits in flight
            ...
            await transport.ack("jobs", [(msg.id, msg.lease_token, None)])
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any, overload

import grpc

from ..engine.config import SETTINGS
from ..server.proto import rankq_pb2 as pb
from ..server.proto import rankq_pb2_grpc as pb_grpc
from .errors import ApiError, InvalidRequestError, TransportError, error_for
from .types import (
    AckOutcome,
    Dependency,
    EnqueueResult,
    Message,
    MessageStatus,
    NackResult,
    NewMessage,
    QueueCounts,
    QueueInfo,
    RedriveJob,
    RedriveResult,
    dependency_of,
)

JSON = "application/json"
OCTETS = "application/octet-stream"
NULLABLE_SETTINGS = tuple(spec.wire for spec in SETTINGS.values() if spec.nullable)  # may be cleared
SETTING_FIELDS = tuple(f.name for f in pb.QueueSettings.DESCRIPTOR.fields)

# gRPC code -> HTTP status, for errors that carry no `rankq-status` (e.g. from a proxy)
STATUS_OF_CODE = {
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.INVALID_ARGUMENT: 422,
    grpc.StatusCode.OUT_OF_RANGE: 422,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,  # gRPC's own message size limit
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
# codes that mean the call never got a server's answer
TRANSPORT_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


# One encoder for all calls: json.dumps with options builds a new one each time.
_STRICT_COMPACT = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


@overload
def _dt(ms: int) -> datetime: ...
@overload
def _dt(ms: int | None) -> datetime | None: ...
def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def encode_payload(value: Any) -> tuple[bytes, str]:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value), OCTETS
    return _STRICT_COMPACT.encode(value).encode(), JSON


def decode_payload(payload: bytes, content_type: str) -> Any:
    if content_type.partition(";")[0].strip().lower() == JSON:
        return json.loads(payload)
    return payload


def tls_credentials(ca: str | None) -> grpc.ChannelCredentials:
    """Channel credentials that trust the CA in the PEM file `ca` (None: the system's CAs)."""
    if ca is None:
        return grpc.ssl_channel_credentials()
    with open(ca, "rb") as fh:
        return grpc.ssl_channel_credentials(root_certificates=fh.read())


def error_from_rpc(err: grpc.aio.AioRpcError) -> Exception:
    """The rankq exception for a failed call: by `rankq-status` when present, else by gRPC code.

    The leader's gRPC target (or its id) rides along as `leader` when the server named it.
    """
    meta = dict(err.trailing_metadata() or ())
    detail = err.details() or err.code().name
    try:
        status = int(meta["rankq-status"])
    except (KeyError, ValueError):
        code = err.code()
        if code in TRANSPORT_CODES:
            return TransportError(f"gRPC {code.name}: {detail}")
        status = STATUS_OF_CODE.get(code, 500)
    return error_for(
        status,
        detail,
        leader=meta.get("rankq-leader-target") or meta.get("rankq-leader"),
        retry_after=meta.get("retry-after"),
    )


def fill_message(out: pb.NewMessage, m: NewMessage) -> pb.NewMessage:
    """Write `m` into a NewMessage in place (cheaper than building one and copying it)."""
    out.payload, out.content_type = encode_payload(m.payload)
    if m.priority is not None:
        out.priority = m.priority
    if m.group is not None:
        out.group = m.group
    if m.delay is not None:
        out.delay = m.delay
    if m.deliver_at is not None:
        out.deliver_at = _ms(m.deliver_at)
    if m.headers:
        out.headers.update(m.headers)
    if m.dedup_key is not None:
        out.dedup_key = m.dedup_key
    if m.ttl is not None:
        out.ttl = m.ttl
    if m.expires_at is not None:
        out.expires_at = _ms(m.expires_at)
    if m.depends_on:
        for item in map(dependency_of, m.depends_on):
            dep = out.depends_on.add()
            if isinstance(item, Dependency):
                dep.id = item.id
                if item.queue is not None:
                    dep.queue = item.queue
            else:
                dep.batch_index = item.index
    return out


def enqueue_request(queue: str, m: NewMessage, ref: int = 0) -> pb.EnqueueRequest:
    req = pb.EnqueueRequest(queue=queue, ref=ref)
    fill_message(req.message, m)
    return req


def settings_pb(settings: dict[str, Any], clear: list[str] | None = None) -> pb.QueueSettings:
    """Wire-unit settings -> QueueSettings. With `clear`, None on a nullable limit is recorded there."""
    out = pb.QueueSettings()
    for key, value in settings.items():
        if key not in SETTING_FIELDS:
            raise InvalidRequestError(f"unknown queue setting {key!r}")
        if value is None:
            if clear is not None and key in NULLABLE_SETTINGS:
                clear.append(key)
            continue  # like HTTP: null on a setting that cannot be null changes nothing
        try:
            if key == "weights":
                out.weights.classes.update({int(k): int(v) for k, v in value.items()})
            elif key == "group_weights":
                out.group_weights.SetInParent()  # set with no entries: every group weighs 1
                out.group_weights.groups.update({str(k): int(v) for k, v in value.items()})
            else:
                setattr(out, key, value)
        except (TypeError, ValueError, AttributeError) as err:
            raise InvalidRequestError(f"{key}: {err}") from None
    return out


def settings_dict(settings: pb.QueueSettings) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in SETTING_FIELDS:
        if key == "weights":
            out[key] = dict(settings.weights.classes)
        elif key == "group_weights":
            out[key] = dict(settings.group_weights.groups)
        else:
            out[key] = getattr(settings, key) if settings.HasField(key) else None
    return out


def queue_info(q: pb.QueueInfo) -> QueueInfo:
    counts = q.counts
    return QueueInfo(
        name=q.name,
        settings=settings_dict(q.settings),
        counts=QueueCounts(
            counts.ready,
            counts.delayed,
            counts.leased,
            counts.dead,
            counts.acked_retained,
            counts.backlog,
            counts.waiting,
        ),
        totals=dict(q.totals),
        created_at=_dt(q.created_at) if q.created_at else None,
    )


def message_of(queue: str, d: pb.Delivery) -> Message:
    return Message(
        queue=queue,
        id=d.id,
        payload=decode_payload(d.payload, d.content_type),
        priority=d.priority,
        group=d.group,
        deliveries=d.deliveries,
        lease_token=d.lease_token,
        lease_expires_at=_dt(d.lease_expires_at),
        enqueued_at=_dt(d.enqueued_at),
        headers=dict(d.headers) or None,
    )


def status_of(m: pb.MessageStatus) -> MessageStatus:
    def opt(name: str) -> Any:
        return getattr(m, name) if m.HasField(name) else None

    return MessageStatus(
        id=m.id,
        queue=m.queue,
        state=m.state,
        priority=opt("priority"),
        group=opt("group"),
        deliveries=m.deliveries,
        enqueued_at=_dt(opt("enqueued_at")),
        available_at=_dt(opt("available_at")),
        lease_expires_at=_dt(opt("lease_expires_at")),
        acked_at=_dt(opt("acked_at")),
        last_error=opt("last_error"),
        result=json.loads(m.result_json) if m.HasField("result_json") else None,
        headers=dict(m.headers) or None,
        dedup_key=opt("dedup_key"),
        payload=decode_payload(m.payload, m.content_type) if m.HasField("payload") else None,
        depends_on=[Dependency(d.id, d.queue) for d in m.depends_on] or None,
        expires_at=_dt(opt("expires_at")),
        dead_reason=opt("dead_reason"),
    )


def redrive_job(j: pb.RedriveJob) -> RedriveJob:
    return RedriveJob(
        rate=j.rate, total=j.total, moved=j.moved, remaining=j.remaining, started_at=_dt(j.started_at), state=j.state
    )


def _result_json(result: Any) -> str | None:
    return None if result is None else _STRICT_COMPACT.encode(result)


async def _frames(
    queue: str, messages: Iterable[NewMessage] | AsyncIterable[NewMessage], size: int
) -> AsyncIterator[pb.EnqueueStreamRequest]:
    """EnqueueStreamRequest frames of up to `size` requests; the queue is named in the first only."""
    ref = 0

    def request(m: NewMessage) -> pb.EnqueueRequest:
        nonlocal ref
        req = enqueue_request("" if ref else queue, m, ref)
        ref += 1
        return req

    if not isinstance(messages, AsyncIterable):
        batch = []
        for m in messages:
            batch.append(request(m))
            if len(batch) >= size:
                yield pb.EnqueueStreamRequest(requests=batch)
                batch = []
        if batch:
            yield pb.EnqueueStreamRequest(requests=batch)
        return

    # An async source: a pump keeps reading while a frame is on the wire; each frame takes
    # whatever has arrived since the last one.
    ready: asyncio.Queue[Any] = asyncio.Queue(maxsize=4 * size)
    done = object()

    async def pump() -> None:
        try:
            async for m in messages:
                await ready.put(m)
        finally:
            await ready.put(done)

    task = asyncio.get_running_loop().create_task(pump())
    try:
        finished = False
        while not finished:
            batch = []
            m = await ready.get()
            while True:
                if m is done:
                    finished = True
                    break
                batch.append(request(m))
                if len(batch) >= size or ready.empty():
                    break
                m = ready.get_nowait()
            if batch:
                yield pb.EnqueueStreamRequest(requests=batch)
        task.result()  # a failing source fails the stream
    finally:
        task.cancel()


class GrpcTransport:
    """Speaks rankq.v1.RankQ to `target` ("host:port").

    `timeout` bounds each call in seconds (a dequeue's wait is added to it); None: no deadline.
    `credentials` makes a TLS channel; `options` are extra channel options.
    The channel is opened on first use, inside the event loop that uses it.
    """

    def __init__(
        self,
        target: str,
        *,
        timeout: float | None = 30.0,
        credentials: grpc.ChannelCredentials | None = None,
        options: list[tuple[str, Any]] | None = None,
        metadata: list[tuple[str, str]] | None = None,
    ) -> None:
        self.target = target
        self.timeout = timeout
        self._credentials = credentials
        self._options = [
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", 65 * 1024 * 1024),
            *(options or []),
        ]
        self._metadata = tuple(metadata) if metadata else None
        self._channel: grpc.aio.Channel | None = None
        self._stub: pb_grpc.RankQStub | None = None

    @property
    def stub(self) -> pb_grpc.RankQStub:
        if self._stub is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.target, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(self.target, self._credentials, options=self._options)
            self._stub = pb_grpc.RankQStub(self._channel)  # type: ignore[no-untyped-call]
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            channel, self._channel, self._stub = self._channel, None, None
            await channel.close()

    async def _call(self, method: str, request: Any, extra_time: float = 0.0) -> Any:
        timeout = None if self.timeout is None else self.timeout + extra_time
        try:
            return await getattr(self.stub, method)(request, timeout=timeout, metadata=self._metadata)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None

    # ---- queues ---------------------------------------------------------------------------------

    async def create_queue(self, name: str, settings: dict[str, Any]) -> QueueInfo:
        req = pb.CreateQueueRequest(name=name, settings=settings_pb(settings))
        return queue_info(await self._call("CreateQueue", req))

    async def list_queues(self) -> list[QueueInfo]:
        res = await self._call("ListQueues", pb.ListQueuesRequest())
        return [queue_info(q) for q in res.queues]

    async def get_queue(self, name: str) -> QueueInfo:
        return queue_info(await self._call("GetQueue", pb.GetQueueRequest(name=name)))

    async def update_queue(self, name: str, changes: dict[str, Any]) -> QueueInfo:
        """Set the given settings; None on group_max_inflight, dead_letter_retention or max_length clears it."""
        clear: list[str] = []
        settings = settings_pb(changes, clear)
        req = pb.UpdateQueueRequest(name=name, settings=settings, clear=clear)
        return queue_info(await self._call("UpdateQueue", req))

    async def delete_queue(self, name: str) -> None:
        await self._call("DeleteQueue", pb.DeleteQueueRequest(name=name))

    # ---- messages -------------------------------------------------------------------------------

    async def enqueue(self, queue: str, messages: list[NewMessage]) -> list[EnqueueResult]:
        """One message, or a batch accepted or refused as a whole."""
        if len(messages) == 1:
            res = await self._call("Enqueue", enqueue_request(queue, messages[0]))
            return [EnqueueResult(res.id, res.duplicate)]
        req = pb.EnqueueBatchRequest(queue=queue)
        for m in messages:
            fill_message(req.messages.add(), m)
        res = await self._call("EnqueueBatch", req)
        return [EnqueueResult(r.id, r.duplicate) for r in res.results]

    async def dequeue(
        self, queue: str, max: int = 1, wait: float = 0.0, visibility_timeout: float | None = None
    ) -> list[Message]:
        req = pb.DequeueRequest(queue=queue, max=max, wait=wait, visibility_timeout=visibility_timeout)
        res = await self._call("Dequeue", req, extra_time=wait)
        return [message_of(queue, d) for d in res.messages]

    async def ack(self, queue: str, items: list[tuple[int, str, Any]]) -> list[AckOutcome]:
        if not items:
            return []
        req = pb.AckBatchRequest(
            queue=queue,
            items=[pb.AckItem(id=i, lease_token=t, result_json=_result_json(r)) for i, t, r in items],
        )
        res = await self._call("AckBatch", req)
        return [AckOutcome(r.id, r.ok, r.status, r.detail or None) for r in res.results]

    async def nack(
        self,
        queue: str,
        id: int,
        lease_token: str,
        delay: float | None = None,
        error: str | None = None,
        dead: bool = False,
    ) -> NackResult:
        req = pb.NackRequest(queue=queue, id=id, lease_token=lease_token, delay=delay, error=error, dead=dead)
        res = await self._call("Nack", req)
        return NackResult(res.id, res.state, _dt(res.available_at) if res.HasField("available_at") else None)

    async def release(self, queue: str, id: int, lease_token: str) -> None:
        await self._call("Release", pb.ReleaseRequest(queue=queue, id=id, lease_token=lease_token))

    async def extend(self, queue: str, id: int, lease_token: str, visibility_timeout: float | None = None) -> datetime:
        req = pb.ExtendRequest(queue=queue, id=id, lease_token=lease_token, visibility_timeout=visibility_timeout)
        expires: int = (await self._call("Extend", req)).lease_expires_at
        return _dt(expires)

    async def set_priority(self, queue: str, id: int, priority: int) -> MessageStatus:
        return status_of(await self._call("SetPriority", pb.SetPriorityRequest(queue=queue, id=id, priority=priority)))

    async def get_message(self, queue: str, id: int) -> MessageStatus:
        return status_of(await self._call("GetMessage", pb.GetMessageRequest(queue=queue, id=id)))

    async def cancel(self, queue: str, id: int) -> None:
        await self._call("CancelMessage", pb.CancelMessageRequest(queue=queue, id=id))

    async def dead_letters(
        self, queue: str, after: int | None = None, limit: int = 100
    ) -> tuple[list[MessageStatus], int | None]:
        res = await self._call("ListDeadLetters", pb.ListDeadLettersRequest(queue=queue, after=after, limit=limit))
        return [status_of(m) for m in res.messages], res.next_after if res.HasField("next_after") else None

    async def redrive(self, queue: str, ids: list[int] | None = None, rate: int | None = None) -> RedriveResult:
        req = pb.RedriveRequest(queue=queue, all=ids is None, ids=ids or [], rate=rate)
        res = await self._call("Redrive", req)
        return RedriveResult(
            list(res.redriven), list(res.not_found), redrive_job(res.job) if res.HasField("job") else None
        )

    async def redrive_status(self, queue: str) -> RedriveJob:
        return redrive_job(await self._call("GetRedrive", pb.RedriveJobRequest(queue=queue)))

    async def stop_redrive(self, queue: str) -> RedriveJob:
        return redrive_job(await self._call("StopRedrive", pb.RedriveJobRequest(queue=queue)))

    # ---- streams --------------------------------------------------------------------------------

    async def enqueue_stream(
        self, queue: str, messages: AsyncIterable[NewMessage] | Iterable[NewMessage], frame: int = 500
    ) -> AsyncIterator[tuple[int, EnqueueResult | ApiError]]:
        """Enqueue each message on its own over one stream; yields (index in `messages`, outcome).

        Outcomes arrive as commits land, not necessarily in order. A refused message yields the
        ApiError that refused it and the stream goes on. The iterator ends once every message is
        answered; a broken stream raises. Messages ready together travel together, up to `frame`
        a frame; an async source is never waited on to fill a frame.
        """
        call = self.stub.EnqueueStream(_frames(queue, messages, frame), metadata=self._metadata)
        try:
            async for res in call:
                for ack in res.acks:
                    if ack.status:
                        yield ack.ref, error_for(ack.status, ack.detail)
                    else:
                        yield ack.ref, EnqueueResult(ack.id, ack.duplicate)
        except grpc.aio.AioRpcError as err:
            raise error_from_rpc(err) from None
        finally:
            call.cancel()  # a no-op once the stream has ended

    def dequeue_stream(
        self, queue: str, credits: int, visibility_timeout: float | None = None, refill: bool = False
    ) -> DequeueStream:
        """Receive leased messages over one stream, never more than the credits granted.

        `credits` is the first grant; give more with `grant(n)`. With `refill`, every message taken
        from the iterator earns its credit back once the next one is asked for, which keeps up to
        `credits` messages in flight (a prefetch window); earned credits are granted together,
        when half the window is owed or the received messages are all taken. Use as an async
        context manager.
        """
        return DequeueStream(self, queue, credits, visibility_timeout, refill)


class DequeueStream:
    """One DequeueStream call: an async iterator of `Message` with `grant(n)` and `close()`."""

    def __init__(
        self, transport: GrpcTransport, queue: str, credits: int, visibility_timeout: float | None, refill: bool
    ) -> None:
        self.queue = queue
        self.refill = refill
        self._threshold = max(1, credits // 2)
        self._grants: asyncio.Queue[int | None] = asyncio.Queue()
        self._grants.put_nowait(credits)
        self._owed = 0
        self._buffer: list[Any] = []
        self._first = pb.Grant(queue=queue, visibility_timeout=visibility_timeout)
        self._call = transport.stub.DequeueStream(self._requests(), metadata=transport._metadata)

    async def _requests(self) -> AsyncIterator[pb.Grant]:
        first = True
        while True:
            n = await self._grants.get()
            if n is None:
                return
            if first:
                self._first.credits = n
                yield self._first
                first = False
            else:
                yield pb.Grant(credits=n)

    async def grant(self, credits: int) -> None:
        """Allow `credits` more messages to be sent."""
        if credits > 0:
            self._grants.put_nowait(credits)

    def __aiter__(self) -> DequeueStream:
        return self

    async def __anext__(self) -> Message:
        if self._owed and (self._owed >= self._threshold or not self._buffer):
            await self.grant(self._owed)
            self._owed = 0
        while not self._buffer:
            try:
                frame = await self._call.read()
            except grpc.aio.AioRpcError as err:
                raise error_from_rpc(err) from None
            if frame is grpc.aio.EOF:
                raise StopAsyncIteration
            self._buffer = list(reversed(frame.messages))
        if self.refill:
            self._owed += 1
        return message_of(self.queue, self._buffer.pop())

    async def finish(self) -> None:
        """Grant no more; the server ends the stream once the credits given are spent."""
        self._grants.put_nowait(None)

    async def close(self) -> None:
        """End the stream now; messages leased but not yet received return after their lease."""
        self._call.cancel()

    async def __aenter__(self) -> DequeueStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
