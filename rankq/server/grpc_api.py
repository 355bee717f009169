"""The gRPC API (rankq.v1.RankQ, see proto/rankq.proto): the HTTP API's operations over grpc.aio.

Handlers are thin like the HTTP ones: check the request, call the QueueService, shape the answer.
Engine errors map to gRPC codes in one table, and every error carries the trailing metadata key
`rankq-status` with the HTTP status the HTTP API would have answered, so clients raise the same
exception whichever transport they use. Bad input is always INVALID_ARGUMENT, never UNKNOWN.

EnqueueStream pipelines: each frame of messages is submitted as soon as it is read, without
waiting for earlier commits (the service gathers concurrent submissions into one log entry), and
acks go out in frames as commits land. DequeueStream sends leased messages only against credits
the client has granted.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc_reflection.v1alpha import reflection

from .. import schemas as s
from ..engine import Conflict, EngineError, Full, Invalid, NotFound, TooLarge
from ..engine import commands as c
from ..engine import config as limits
from ..engine.config import check_time_ms
from ..engine.message import Delivery, MessageInfo
from ..validation import check_depends_on, check_settings, parse_json, seconds_ms
from . import logs
from .auth import GrpcAuth, Tokens
from .errors import RETRY_AFTER_SECONDS
from .proto import rankq_pb2 as pb
from .proto import rankq_pb2_grpc as pb_grpc
from .service import MAX_WAIT_SECONDS, QueueService, QueueView, Unavailable

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RankQ"].full_name
JSON = "application/json"
OCTETS = "application/octet-stream"
MAX_MESSAGE_BYTES = limits.MAX_PAYLOAD_BYTES + 1024 * 1024  # the largest payload plus room for its envelope
MAX_VISIBILITY = s.MAX_VISIBILITY
MAX_DELAY = s.MAX_DURATION
STREAM_INFLIGHT = 20_000  # unacknowledged messages one EnqueueStream may have in the service

# engine error -> (gRPC code, HTTP status); the order matters only for subclasses
CODES: list[tuple[type[Exception], grpc.StatusCode, int]] = [
    (NotFound, grpc.StatusCode.NOT_FOUND, 404),
    (Conflict, grpc.StatusCode.FAILED_PRECONDITION, 409),
    (Invalid, grpc.StatusCode.INVALID_ARGUMENT, 422),
    (TooLarge, grpc.StatusCode.INVALID_ARGUMENT, 413),
    (Full, grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
    (Unavailable, grpc.StatusCode.UNAVAILABLE, 503),
]
NULLABLE = {spec.wire: spec.name for spec in limits.SETTINGS.values() if spec.nullable}  # may be in `clear`
SETTING_FIELDS = [f.name for f in pb.QueueSettings.DESCRIPTOR.fields]
COUNT_FIELDS = frozenset(f.name for f in pb.QueueCounts.DESCRIPTOR.fields)  # the engine may count more states


def error_status(err: BaseException) -> tuple[grpc.StatusCode, int, str]:
    """The gRPC code, HTTP status and detail for an exception a handler ended in."""
    for cls, code, status in CODES:
        if isinstance(err, cls):
            return code, status, str(getattr(err, "detail", err))  # every class in CODES has a detail
    return grpc.StatusCode.INTERNAL, 500, "internal server error"


# ---- request checks (the HTTP wire models do these with pydantic) -------------------------------


class Undecodable:
    """A request that did not parse. Handlers refuse it with INVALID_ARGUMENT (gRPC alone would
    answer UNKNOWN, as if the server had failed)."""

    __slots__ = ("detail",)

    def __init__(self, detail: str) -> None:
        self.detail = detail


def tolerant(cls):
    def deserialize(data: bytes):
        try:
            return cls.FromString(data)
        except DecodeError as err:
            return Undecodable(f"request is not a valid {cls.DESCRIPTOR.full_name}: {err}")

    return deserialize


def checked(request):
    if type(request) is Undecodable:
        raise Invalid(request.detail)
    return request


def lease_token(token: str) -> str:
    if not 1 <= len(token) <= 128:
        raise Invalid("lease_token must be 1 to 128 characters")
    return token


_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def dump_json(value) -> str:
    return _COMPACT_JSON.encode(value)


def stored_payload(payload: bytes, content_type: str):
    """JSON content is stored as its JSON text (as over HTTP), once checked; anything else as bytes."""
    if content_type == OCTETS:
        return payload
    if content_type == JSON or content_type.partition(";")[0].strip().lower() == JSON:
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            raise Invalid("payload is not UTF-8 JSON text") from None
        parse_json("payload", text)
        return text
    return payload


def depends_on(m: pb.NewMessage, queue: str, index: int | None) -> tuple | None:
    if not len(m.depends_on):
        return None
    deps: list = []
    for d in m.depends_on:
        if d.HasField("batch_index"):
            if d.queue or d.id:
                raise Invalid("depends_on: give either batch_index or queue and id, not both")
            deps.append(d.batch_index)
        else:
            deps.append((d.queue or queue, d.id))
    return check_depends_on("depends_on", index, deps)


def new_message(m: pb.NewMessage, queue: str = "", index: int | None = None) -> c.NewMessage:
    """The engine's message for one enqueued item (`index`: its place in a batch, None alone)."""
    has = m.HasField
    group = m.group if has("group") else None
    if group is not None and not 1 <= len(group) <= 256:
        raise Invalid("group must be 1 to 256 characters")
    dedup_key = m.dedup_key if has("dedup_key") else None
    if dedup_key is not None and not 1 <= len(dedup_key) <= 256:
        raise Invalid("dedup_key must be 1 to 256 characters")
    ctype = m.content_type
    return c.NewMessage(
        stored_payload(m.payload, ctype) if ctype else m.payload,
        m.priority if has("priority") else None,
        group,
        seconds_ms("delay", m.delay, MAX_DELAY) if has("delay") else None,
        m.deliver_at if has("deliver_at") else None,
        dict(m.headers) if len(m.headers) else None,
        dedup_key,
        seconds_ms("ttl", m.ttl, MAX_DELAY, open_low=True) if has("ttl") else None,
        check_time_ms("expires_at", m.expires_at) if has("expires_at") else None,
        depends_on(m, queue, index),
    )


def settings_to_engine(settings: pb.QueueSettings) -> dict:
    out: dict[str, Any] = {}
    for name in SETTING_FIELDS:
        if not settings.HasField(name):
            continue
        value = getattr(settings, name)
        spec = limits.SETTINGS_BY_WIRE[name]  # units and bounds from the setting's one definition
        if name == "weights":
            out["weights"] = dict(value.classes)
        elif name == "group_weights":
            out["group_weights"] = dict(value.groups)
        elif spec.is_duration:
            out[spec.name] = seconds_ms(
                name, value, (spec.high or limits.MAX_DURATION_MS) / 1000, open_low=bool(spec.low)
            )
        else:
            out[name] = value
    return out


def result_value(has: bool, text: str):
    return parse_json("result_json", text) if has else None


# ---- answers ------------------------------------------------------------------------------------


def payload_out(payload) -> tuple[bytes, str]:
    if isinstance(payload, bytes):
        return payload, OCTETS
    return payload.encode(), JSON


def queue_info(view: QueueView) -> pb.QueueInfo:
    settings = pb.QueueSettings()
    for key, value in view.config.items():
        if value is None:
            continue
        if key == "weights":
            settings.weights.classes.update(value)
        elif key == "group_weights":
            settings.group_weights.SetInParent()
            settings.group_weights.groups.update(value)
        elif key.endswith("_ms"):
            setattr(settings, key[:-3], value / 1000)
        else:
            setattr(settings, key, value)
    return pb.QueueInfo(
        name=view.name,
        settings=settings,
        counts=pb.QueueCounts(**{k: v for k, v in view.counts.items() if k in COUNT_FIELDS}),
        totals=view.totals,
        created_at=view.created_at,
    )


def delivery(d: Delivery) -> pb.Delivery:
    payload, ctype = payload_out(d.payload)
    return pb.Delivery(
        id=d.id,
        payload=payload,
        content_type=ctype,
        priority=d.priority,
        group=d.group,
        deliveries=d.deliveries,
        lease_token=d.lease_token,
        lease_expires_at=d.lease_expires_at,
        enqueued_at=d.enqueued_at,
        headers=d.headers,
    )


def message_status(info: MessageInfo) -> pb.MessageStatus:
    out = pb.MessageStatus(
        id=info.id,
        queue=info.queue,
        state=info.state,
        priority=info.priority,
        group=info.group,
        deliveries=info.deliveries,
        enqueued_at=info.enqueued_at,
        available_at=info.available_at,
        lease_expires_at=info.lease_expires_at,
        acked_at=info.acked_at,
        last_error=info.last_error,
        result_json=None if info.result is None else dump_json(info.result),
        headers=info.headers,
        dedup_key=info.dedup_key,
        expires_at=info.expires_at,
        dead_reason=info.dead_reason,
        depends_on=[pb.Dependency(queue=q, id=i) for q, i in info.depends_on or ()],
    )
    if info.payload is not None:
        out.payload, out.content_type = payload_out(info.payload)
    return out


def redrive_job(job: dict) -> pb.RedriveJob:
    return pb.RedriveJob(
        rate=job["rate"],
        total=job["total"],
        moved=job["moved"],
        remaining=job["remaining"],
        started_at=job["started_at"],
        state=job["state"],
    )


def ack_frame(acks: list) -> pb.EnqueueStreamResponse:
    """One response frame; filling acks in place is about twice as fast as building and copying."""
    out = pb.EnqueueStreamResponse()
    add = out.acks.add
    for a in acks:
        if type(a) is tuple:
            ack = add()
            ack.ref, ack.id = a[0], a[1]
            if a[2]:
                ack.duplicate = True
        else:
            out.acks.append(a)
    return out


def peer_ip(context) -> str:
    peer = context.peer() or "-"
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    host = rest.rpartition(":")[0].replace("%5B", "[").replace("%5D", "]")
    return host.strip("[]")


# ---- the service --------------------------------------------------------------------------------


def route_of(method: str) -> str:
    return f"/{SERVICE_NAME}/{method}"


def unary(fn):
    """Log the request line; turn the handler's errors into a status with `rankq-status`."""
    method = fn.__name__
    route = route_of(method)

    async def handler(self, request, context):
        logs.request_line(route, "RPC", method, peer_ip(context))
        try:
            result = await fn(self, checked(request), context)
        except Exception as err:
            await self.fail(context, route, err, already_exists=method == "CreateQueue")
        leader = self._leader()
        if leader:
            context.set_trailing_metadata(leader)  # every answer names the leader, as HTTP's header does
        return result

    handler.__name__ = method
    handler.__doc__ = fn.__doc__
    return handler


class RankQServicer(pb_grpc.RankQServicer):
    def __init__(self, service: QueueService) -> None:
        self.service = service

    async def fail(self, context, route: str, err: Exception, already_exists: bool = False) -> None:
        """End the call with the error's code, `rankq-status` and, when known, the leader."""
        code, status, detail = error_status(err)
        if status == 500:
            logs.error_line(route, f"internal error: {err!r}", 500, exc_info=err)
        else:
            logs.error_line(route, detail, status)
        if already_exists and isinstance(err, Conflict):
            code = grpc.StatusCode.ALREADY_EXISTS
        meta: tuple = (("rankq-status", str(status)),)
        if status in (429, 503):  # as HTTP's Retry-After
            meta += (("retry-after", str(RETRY_AFTER_SECONDS)),)
        await context.abort(code, detail, trailing_metadata=(*meta, *self._leader()))

    def _leader(self) -> tuple:
        """`rankq-leader` (its id) and `rankq-leader-target` (its gRPC address) for clients to follow."""
        leader_info = getattr(self.service, "leader_info", None)
        info = leader_info() if leader_info is not None else None
        if not info:
            return ()
        out = [("rankq-leader", str(info.get("node_id") or info["address"]))]
        if info.get("grpc_target"):
            out.append(("rankq-leader-target", info["grpc_target"]))
        return tuple(out)

    # ---- queues ---------------------------------------------------------------------------------

    @unary
    async def CreateQueue(self, request, context):
        settings = settings_to_engine(request.settings) if request.HasField("settings") else {}
        check_settings(request.name, None, settings)
        return queue_info(await self.service.create_queue(request.name, settings))

    @unary
    async def ListQueues(self, request, context):
        return pb.ListQueuesResponse(queues=[queue_info(v) for v in self.service.list_queues()])

    @unary
    async def GetQueue(self, request, context):
        return queue_info(self.service.get_queue(request.name))

    @unary
    async def UpdateQueue(self, request, context):
        changes = settings_to_engine(request.settings)
        for name in request.clear:
            key = NULLABLE.get(name)
            if key is None:
                raise Invalid(f"only {', '.join(NULLABLE)} can be cleared, not {name!r}")
            if request.settings.HasField(name):
                raise Invalid(f"{name} is both set and cleared")
            changes[key] = None
        check_settings(request.name, self.service.get_queue(request.name).config, changes)
        return queue_info(await self.service.update_queue(request.name, changes))

    @unary
    async def DeleteQueue(self, request, context):
        await self.service.delete_queue(request.name)
        return pb.DeleteQueueResponse()

    # ---- messages -------------------------------------------------------------------------------

    @unary
    async def Enqueue(self, request, context):
        [(mid, dup)] = await self.service.enqueue(request.queue, [new_message(request.message, request.queue)])
        return pb.EnqueueResponse(id=mid, duplicate=dup)

    @unary
    async def EnqueueBatch(self, request, context):
        if not 1 <= len(request.messages) <= s.MAX_BATCH:
            raise Invalid(f"messages must hold 1 to {s.MAX_BATCH} messages")
        messages = []
        for i, m in enumerate(request.messages):
            try:
                messages.append(new_message(m, request.queue, i))
            except Invalid as err:
                raise Invalid(f"message {i}: {err.detail}") from None
        out = await self.service.enqueue(request.queue, messages)
        return pb.EnqueueBatchResponse(results=[pb.EnqueueResponse(id=i, duplicate=d) for i, d in out])

    @unary
    async def Dequeue(self, request, context):
        if not 0 <= request.wait <= s.MAX_WAIT:  # also refuses NaN
            raise Invalid(f"wait must be between 0 and {s.MAX_WAIT:g} seconds")
        vt = (
            seconds_ms("visibility_timeout", request.visibility_timeout, MAX_VISIBILITY, open_low=True)
            if request.HasField("visibility_timeout")
            else None
        )
        got = await self.service.dequeue(request.queue, request.max or 1, request.wait, vt)
        return pb.DequeueResponse(messages=[delivery(d) for d in got])

    @unary
    async def SetPriority(self, request, context):
        return message_status(await self.service.set_priority(request.queue, request.id, request.priority))

    @unary
    async def GetMessage(self, request, context):
        return message_status(self.service.get_message(request.queue, request.id))

    @unary
    async def CancelMessage(self, request, context):
        was = await self.service.cancel(request.queue, request.id)
        return pb.CancelMessageResponse(id=request.id, state="cancelled", was=was)

    # ---- leases ---------------------------------------------------------------------------------

    @unary
    async def Ack(self, request, context):
        item = c.AckItem(
            request.id,
            lease_token(request.lease_token),
            result_value(request.HasField("result_json"), request.result_json),
        )
        [res] = await self.service.ack(request.queue, [item])
        if res is not None:
            raise res
        return pb.AckResponse(id=request.id, state="acked")

    @unary
    async def AckBatch(self, request, context):
        if not 1 <= len(request.items) <= s.MAX_BATCH:
            raise Invalid(f"items must hold 1 to {s.MAX_BATCH} items")
        items = [
            c.AckItem(i.id, lease_token(i.lease_token), result_value(i.HasField("result_json"), i.result_json))
            for i in request.items
        ]
        out = await self.service.ack(request.queue, items)
        results = []
        for item, res in zip(items, out):
            if res is None:
                results.append(pb.AckOutcome(id=item.id, ok=True, status=200))
            else:
                results.append(pb.AckOutcome(id=item.id, ok=False, status=error_status(res)[1], detail=res.detail))
        return pb.AckBatchResponse(results=results)

    @unary
    async def Nack(self, request, context):
        delay = seconds_ms("delay", request.delay, MAX_DELAY) if request.HasField("delay") else None
        error = request.error if request.HasField("error") else None
        if error is not None and len(error) > 4096:
            raise Invalid("error must be at most 4096 characters")
        res = await self.service.nack(
            request.queue, request.id, lease_token(request.lease_token), delay, error, request.dead
        )
        return pb.NackResponse(id=request.id, state=res["state"], available_at=res["available_at"])

    @unary
    async def Extend(self, request, context):
        vt = (
            seconds_ms("visibility_timeout", request.visibility_timeout, MAX_VISIBILITY, open_low=True)
            if request.HasField("visibility_timeout")
            else None
        )
        due = await self.service.extend(request.queue, request.id, lease_token(request.lease_token), vt)
        return pb.ExtendResponse(id=request.id, lease_expires_at=due)

    @unary
    async def Release(self, request, context):
        await self.service.release(request.queue, request.id, lease_token(request.lease_token))
        return pb.ReleaseResponse(id=request.id, state="ready")

    # ---- dead letters ---------------------------------------------------------------------------

    @unary
    async def ListDeadLetters(self, request, context):
        limit = request.limit or 100
        if not 1 <= limit <= 1000:
            raise Invalid("limit must be between 1 and 1000")
        items = self.service.dead_letters(request.queue, request.after if request.HasField("after") else None, limit)
        next_after = items[-1].id if len(items) == limit else None
        return pb.ListDeadLettersResponse(messages=[message_status(i) for i in items], next_after=next_after)

    @unary
    async def Redrive(self, request, context):
        if request.all and request.ids:
            raise Invalid("give either ids or all, not both")
        if len(request.ids) > 100_000:
            raise Invalid("at most 100000 ids at once")
        rate = request.rate if request.HasField("rate") else None
        if rate is not None and rate < 1:
            raise Invalid("rate must be at least 1 message per second")
        res = await self.service.redrive(request.queue, None if request.all else list(request.ids), rate)
        if res.get("job") is not None:
            return pb.RedriveResponse(job=redrive_job(res["job"]))
        return pb.RedriveResponse(redriven=res["redriven"], not_found=res["not_found"])

    @unary
    async def GetRedrive(self, request, context):
        job = self.service.redrive_status(request.queue)
        if job is None:
            raise NotFound(f"queue {request.queue!r} has no paced redrive")
        return redrive_job(job)

    @unary
    async def StopRedrive(self, request, context):
        return redrive_job(await self.service.stop_redrive(request.queue))

    # ---- streams --------------------------------------------------------------------------------

    async def EnqueueStream(self, request_iterator, context):
        """Submit each frame as soon as it is read; send acks in frames as their commits land."""
        route = route_of("EnqueueStream")
        logs.request_line(route, "RPC", "EnqueueStream", peer_ip(context))
        loop = asyncio.get_running_loop()
        acks: list = []  # (ref, id, duplicate) for an enqueued message, EnqueueAck for a refused one
        wake = asyncio.Event()
        room = asyncio.Event()
        room.set()
        state = {"inflight": 0}

        def landed(n: int, task: asyncio.Task) -> None:
            state["inflight"] -= n
            if state["inflight"] < STREAM_INFLIGHT:
                room.set()
            if not task.cancelled():
                acks.extend(task.result())
                wake.set()

        async def read() -> None:
            queue = ""
            async for frame in request_iterator:
                frame = checked(frame)
                groups: dict[str, tuple[list, list]] = {}
                for req in frame.requests:
                    queue = req.queue or queue
                    try:
                        if not queue:
                            raise Invalid("queue is required in the first message of the stream")
                        msg = new_message(req.message, queue)
                    except Invalid as err:
                        acks.append(self._refused(route, req.ref, err))
                        wake.set()
                        continue
                    refs, msgs = groups.setdefault(queue, ([], []))
                    refs.append(req.ref)
                    msgs.append(msg)
                for name, (refs, msgs) in groups.items():
                    for i in range(0, len(msgs), s.MAX_BATCH):
                        chunk = msgs[i : i + s.MAX_BATCH]
                        state["inflight"] += len(chunk)
                        task = loop.create_task(self._enqueue_each(route, name, refs[i : i + s.MAX_BATCH], chunk))
                        task.add_done_callback(partial(landed, len(chunk)))
                if state["inflight"] >= STREAM_INFLIGHT:
                    room.clear()
                    await room.wait()

        reader = loop.create_task(read())
        reader.add_done_callback(lambda _: wake.set())
        try:
            while True:
                if acks:
                    frame = ack_frame(acks)
                    acks.clear()  # before yielding: more acks arrive while the frame is written
                    yield frame
                    continue
                if reader.done() and not state["inflight"]:
                    break
                wake.clear()
                await wake.wait()
            if not reader.cancelled() and isinstance(reader.exception(), Invalid):
                await self.fail(context, route, reader.exception())
            reader.result()  # surface a broken request stream
        finally:
            reader.cancel()

    async def _enqueue_each(self, route: str, queue: str, refs: list[int], msgs: list[c.NewMessage]) -> list:
        """Enqueue messages that stand alone: one command for all of them while none is refused.

        A batch is refused as a whole, so when it is, each message is retried as its own command;
        those land in order in the same log entry, which gives each its own outcome.
        """
        try:
            out = await self.service.enqueue(queue, msgs)
            return [(ref, mid, dup) for ref, (mid, dup) in zip(refs, out)]
        except EngineError as err:
            if len(msgs) == 1:
                return [self._refused(route, refs[0], err)]
        except Exception as err:
            return [self._refused(route, ref, err) for ref in refs]
        each = await asyncio.gather(*(self.service.enqueue(queue, [m]) for m in msgs), return_exceptions=True)
        return [
            self._refused(route, ref, res) if isinstance(res, BaseException) else (ref, res[0][0], res[0][1])
            for ref, res in zip(refs, each)
        ]

    @staticmethod
    def _refused(route: str, ref: int, err: BaseException) -> pb.EnqueueAck:
        code, status, detail = error_status(err)
        if status == 500:
            logs.error_line(route, f"internal error: {err!r}", 500, exc_info=err)
        return pb.EnqueueAck(ref=ref, status=status, code=code.value[0], detail=detail)

    async def DequeueStream(self, request_iterator, context):
        """Lease and send messages while the client has credits; wait for more grants otherwise."""
        route = route_of("DequeueStream")
        logs.request_line(route, "RPC", "DequeueStream", peer_ip(context))
        first = None
        async for first in request_iterator:  # noqa: B007 -- only the first request, then the loop below
            break
        if first is None:
            return
        state = {"credits": 0, "closed": False, "error": None}
        granted = asyncio.Event()

        async def read() -> None:
            try:
                async for grant in request_iterator:
                    if type(grant) is Undecodable:
                        state["error"] = Invalid(grant.detail)
                        break
                    state["credits"] += grant.credits
                    granted.set()
            finally:
                state["closed"] = True
                granted.set()

        reader = asyncio.get_running_loop().create_task(read())
        try:
            try:
                first = checked(first)
                state["credits"] += first.credits
                if not first.queue:
                    raise Invalid("the first grant must name the queue")
                vt = (
                    seconds_ms("visibility_timeout", first.visibility_timeout, MAX_VISIBILITY, open_low=True)
                    if first.HasField("visibility_timeout")
                    else None
                )
                self.service.get_queue(first.queue)  # fail fast on an unknown queue
                while True:
                    if state["error"] is not None:
                        raise state["error"]
                    credits = state["credits"]
                    if credits <= 0:
                        if state["closed"]:
                            break
                        granted.clear()
                        await granted.wait()
                        continue
                    got = await self.service.dequeue(first.queue, min(credits, s.MAX_BATCH), MAX_WAIT_SECONDS, vt)
                    if got:
                        state["credits"] -= len(got)
                        yield pb.DequeueResponse(messages=[delivery(d) for d in got])
            except Exception as err:
                await self.fail(context, route, err)
        finally:
            reader.cancel()


def method_handlers(servicer: RankQServicer) -> dict[str, grpc.RpcMethodHandler]:
    """What the generated add_RankQServicer_to_server registers, with requests parsed tolerantly."""
    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    out = {}
    for method in pb.DESCRIPTOR.services_by_name["RankQ"].methods:
        make = kinds[(method.client_streaming, method.server_streaming)]
        out[method.name] = make(
            getattr(servicer, method.name),
            request_deserializer=tolerant(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
    return out


async def start_grpc(
    service: QueueService, host: str, port: int, tokens: Tokens | None = None, tls: tuple[str, str] | None = None
) -> grpc.aio.Server:
    """Start serving rankq.v1.RankQ (with server reflection) on host:port; returns the running server.
    With `tokens`, calls need a token with the method's scope; `tls` is (cert file, key file)."""
    from .metrics import GrpcObserver

    server = grpc.aio.server(
        interceptors=[GrpcObserver(), *([GrpcAuth(tokens, SERVICE_NAME)] if tokens else [])],
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),  # a port taken by another process is an error, not shared
        ],
    )
    handlers = method_handlers(RankQServicer(service))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)
    reflection.enable_server_reflection((SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if tls is None:
        server.add_insecure_port(address)
    else:
        with open(tls[0], "rb") as cert, open(tls[1], "rb") as key:
            server.add_secure_port(address, grpc.ssl_server_credentials([(key.read(), cert.read())]))
    await server.start()
    return server
