"""Hypothesis over gRPC request messages: whatever a client sends, the answer is a status that
names the client's mistake (INVALID_ARGUMENT, NOT_FOUND, ...), never INTERNAL or UNKNOWN.

Requests are drawn from the proto descriptors, field by field, with the values that broke the
server before: int64 extremes, NaN, infinities and 1e305 durations, JSON nested 100,000 deep,
NaN in JSON, invalid UTF-8 payloads declared as JSON, and bytes that are no protobuf at all.
"""

from __future__ import annotations

import json

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor as F
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rankq.server.proto import rankq_pb2 as pb
from rankq.server.proto import rankq_pb2_grpc as pb_grpc

pytestmark = pytest.mark.timeout(600)

SERVICE = pb.DESCRIPTOR.services_by_name["RankQ"]
SERVER_FAULTS = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS}
FUZZ = settings(
    max_examples=40, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)

INT64 = (-(2**63), 2**63 - 1)
RANGES = {
    F.TYPE_INT64: INT64,
    F.TYPE_SINT64: INT64,
    F.TYPE_SFIXED64: INT64,
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


def deep(n: int) -> str:
    return "[" * n + "]" * n


json_texts = st.one_of(
    st.sampled_from(
        [
            '{"a": 1}',
            "[]",
            "null",
            "1e400",
            "NaN",
            "[Infinity]",
            "-Infinity",
            '"\\ud800"',
            '{"\\udfff": 1}',
            "{",
            "",
            deep(64),
            deep(65),
            deep(5000),
            deep(100_000),
            '{"a": ' * 3000 + "1" + "}" * 3000,
        ]
    ),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
        max_leaves=8,
    ).map(json.dumps),
    st.text(max_size=30),
)
payloads = st.one_of(
    json_texts.map(str.encode),
    st.binary(max_size=64),
    st.sampled_from([b"\xff\xfe", b'"\xed\xa0\x80"', b"\xc3\x28", b"x" * 300_000]),
)
names = st.one_of(
    st.sampled_from(["q", "q", "q", "fuzz-empty", "nope", "", "Q" * 200, "bad name"]), st.text(max_size=12)
)
ids = st.one_of(st.integers(min_value=1, max_value=60), st.sampled_from(INT64 + (0, -1)))
doubles = st.one_of(
    st.floats(),
    st.sampled_from([0.0, -0.0, 0.001, 1e305, -1e305, 2.0**63, 43200.0, 43200.1, 365 * 86400.0, 365 * 86400.0 + 1]),
)
BY_NAME = {
    "queue": names,
    "name": names,
    "result_json": json_texts,
    "payload": payloads,
    "id": ids,
    "content_type": st.sampled_from(
        ["", "application/json", "application/json; charset=utf-8", "application/octet-stream", "text/plain"]
    ),
    "lease_token": st.one_of(st.text(max_size=10), st.sampled_from(["", "t" * 129])),
    "clear": st.sampled_from(["max_length", "group_max_inflight", "dead_letter_retention", "policy", "x"]),
    "policy": st.sampled_from(["strict", "weighted", "", "lifo"]),
    "wait": st.sampled_from([0.0, 0.01, -1.0, float("nan"), float("inf"), 20.001, 1e305]),  # no long polls
}


def scalar(field):
    if field.name in BY_NAME and field.type != F.TYPE_MESSAGE:
        return BY_NAME[field.name]
    if field.type in RANGES:
        low, high = RANGES[field.type]
        return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, 1, -1 if low < 0 else 2]))
    if field.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return doubles
    if field.type == F.TYPE_BOOL:
        return st.booleans()
    if field.type == F.TYPE_STRING:
        return st.text(max_size=40)
    if field.type == F.TYPE_BYTES:
        return st.binary(max_size=40)
    if field.type == F.TYPE_ENUM:
        return st.sampled_from([v.number for v in field.enum_type.values])
    raise AssertionError(field)


def message(desc, depth: int = 0):
    """A strategy for one message of type `desc`: each field set or left out."""
    parts = {}
    for field in desc.fields:
        if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            key, value = field.message_type.fields_by_name["key"], field.message_type.fields_by_name["value"]
            parts[field.name] = st.dictionaries(scalar(key), scalar(value), max_size=4)
        elif field.type == F.TYPE_MESSAGE:
            if depth > 3:
                continue
            inner = message(field.message_type, depth + 1)
            is_repeated = field.is_repeated
            parts[field.name] = st.lists(inner, max_size=4) if is_repeated else inner
        elif field.is_repeated:
            parts[field.name] = st.lists(scalar(field), max_size=6)
        else:
            parts[field.name] = scalar(field)
    return st.fixed_dictionaries({}, optional=parts).map(lambda values: build(desc, values))


def build(desc, values: dict):
    msg = GetMessageClass(desc)()
    for name, value in values.items():
        field = desc.fields_by_name[name]
        target = getattr(msg, name)
        if field.type == F.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            target.update(value)
        elif field.type == F.TYPE_MESSAGE and field.is_repeated:
            for item in value:
                target.add().CopyFrom(item)
        elif field.type == F.TYPE_MESSAGE:
            target.CopyFrom(value)
        elif field.is_repeated:
            target.extend(value)
        else:
            setattr(msg, name, value)
    return msg


@pytest.fixture(scope="module")
def server(grpc_server):
    return grpc_server


@pytest.fixture(scope="module")
def channel(server):
    ch = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=[("grpc.max_send_message_length", -1)])
    stub = pb_grpc.RankQStub(ch)
    stub.CreateQueue(
        pb.CreateQueueRequest(name="q", settings=pb.QueueSettings(visibility_timeout=3600, max_deliveries=2))
    )
    stub.CreateQueue(pb.CreateQueueRequest(name="fuzz-empty"))
    stub.EnqueueBatch(
        pb.EnqueueBatchRequest(
            queue="q", messages=[pb.NewMessage(payload=b"%d" % i, content_type="application/json") for i in range(50)]
        )
    )
    stub.Dequeue(pb.DequeueRequest(queue="q", max=20))
    yield ch
    ch.close()


def code_of(call) -> grpc.StatusCode:
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as err:
        return err.code()


UNARY = [m for m in SERVICE.methods if not m.client_streaming and not m.server_streaming]


@pytest.mark.parametrize("method", UNARY, ids=[m.name for m in UNARY])
def test_unary_requests_never_get_a_server_fault(channel, server, method):
    call = channel.unary_unary(
        f"/{SERVICE.full_name}/{method.name}",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=getattr(pb, method.output_type.name).FromString,
    )
    seen = set()

    @FUZZ
    @given(message(method.input_type))
    def run(request):
        code = code_of(lambda: call(request, timeout=30))
        seen.add(code)
        assert code not in SERVER_FAULTS, (method.name, request)

    run()
    assert "internal error" not in server.logs()


@pytest.mark.parametrize("method", list(SERVICE.methods), ids=[m.name for m in SERVICE.methods])
def test_bytes_that_are_no_request_are_invalid_argument(channel, method):
    raw = lambda data: data  # noqa: E731 - send the bytes as they are
    if method.client_streaming:
        call = channel.stream_stream(
            f"/{SERVICE.full_name}/{method.name}", request_serializer=raw, response_deserializer=raw
        )
        invoke = lambda data: list(call(iter([data]), timeout=5))  # noqa: E731
    else:
        call = channel.unary_unary(
            f"/{SERVICE.full_name}/{method.name}", request_serializer=raw, response_deserializer=raw
        )
        invoke = lambda data: call(data, timeout=30)  # noqa: E731

    @settings(max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(
        st.one_of(
            st.binary(min_size=1, max_size=64), st.sampled_from([b"\x0a\x02\xff\xfe", b"\x0a\x09garbage", b"\xff" * 8])
        )
    )
    def run(data):
        code = code_of(lambda: invoke(data))
        assert code not in SERVER_FAULTS, (method.name, data)

    run()


def test_enqueue_stream_frames_never_get_a_server_fault(channel, server):
    call = channel.stream_stream(
        f"/{SERVICE.full_name}/EnqueueStream",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=pb.EnqueueStreamResponse.FromString,
    )

    @FUZZ
    @given(st.lists(message(pb.EnqueueStreamRequest.DESCRIPTOR), min_size=1, max_size=3))
    def run(frames):
        acks = []
        code = code_of(lambda: acks.extend(call(iter(frames), timeout=30)))
        assert code not in SERVER_FAULTS, frames
        for frame in acks:
            for ack in frame.acks:
                assert ack.status < 500, ack

    run()
    assert "internal error" not in server.logs()


def test_dequeue_stream_grants_never_get_a_server_fault(channel):
    call = channel.stream_stream(
        f"/{SERVICE.full_name}/DequeueStream",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=pb.DequeueResponse.FromString,
    )

    @settings(max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck))
    @given(st.lists(message(pb.Grant.DESCRIPTOR), min_size=1, max_size=3))
    def run(grants):
        # A stream with credits long-polls for messages; the deadline ends it (not a server fault).
        code = code_of(lambda: list(call(iter(grants), timeout=1.5)))
        assert code not in SERVER_FAULTS, grants

    run()
