"""Wire models of the HTTP API (pydantic v2), shared by the server and the Python client.

Durations are seconds (floats) and timestamps are ISO 8601 in UTC on the wire; the engine keeps
integer milliseconds. Conversions live here so both sides agree on them.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    create_model,
)
from pydantic import Strict as StrictMode

from .engine import config as limits
from .engine.errors import Invalid
from .validation import check_json

MAX_WAIT = limits.MAX_WAIT_MS / 1000
MAX_BATCH = limits.MAX_BATCH
MAX_VISIBILITY = limits.MAX_VISIBILITY_MS / 1000
MAX_DURATION = limits.MAX_DURATION_MS / 1000


def json_int(low: int, high: int) -> Any:
    """A strict integer (no "1", true or 1.0 for 1) within [low, high]."""
    return Annotated[int, Field(ge=low, le=high)]


# Request field types, bounded as the engine and gRPC are.
Int64 = Annotated[int, Field(ge=limits.INT64_MIN, le=limits.INT64_MAX)]
Count = Annotated[int, Field(ge=1, le=limits.INT64_MAX)]
PriorityClass = Annotated[int, StrictMode(False), Field(ge=limits.INT64_MIN, le=limits.INT64_MAX)]  # JSON keys are text
Seconds = Annotated[float, Field(ge=0, le=MAX_DURATION)]
GroupName = Annotated[str, Field(min_length=1, max_length=limits.MAX_TEXT)]
QueueName = Annotated[str, Field(pattern=limits.QUEUE_NAME.pattern)]


def _json_value(value: Any) -> Any:
    try:
        return check_json("value", value)
    except Invalid as err:
        raise ValueError(err.detail) from None


Json = Annotated[Any, AfterValidator(_json_value)]


def _timestamp_text(value: Any) -> Any:
    if not isinstance(value, (str, datetime)):
        raise ValueError("must be an ISO 8601 date-time string with a time zone")
    return value


# A time with its zone (`Z` or an offset); a time without one is refused rather than guessed.
Timestamp = Annotated[AwareDatetime, StrictMode(False), BeforeValidator(_timestamp_text)]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp_ms(at: datetime | None) -> int | None:
    """Exact milliseconds since the epoch (float seconds would round near year 9999)."""
    return None if at is None else (at - _EPOCH) // timedelta(milliseconds=1)


# Settings whose wire value is seconds and whose engine value is milliseconds.
SECONDS_FIELDS = {spec.wire: spec.name for spec in limits.SETTINGS.values() if spec.is_duration}


def to_ms(seconds: float | None) -> int | None:
    return None if seconds is None else int(round(seconds * 1000))


def from_ms(ms: int | None) -> float | None:
    return None if ms is None else ms / 1000


def ts(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


_seconds: dict[int, str] = {}  # second -> its text; stamps in a response share a few seconds


def iso(ms: int | None) -> str | None:
    """`2026-01-02T03:04:05.678Z` for milliseconds since the epoch."""
    if ms is None:
        return None
    second, milli = divmod(ms, 1000)
    text = _seconds.get(second)
    if text is None:
        if len(_seconds) > 256:
            _seconds.clear()
        text = _seconds[second] = datetime.fromtimestamp(second, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return "%s.%03dZ" % (text, milli)


class Strict(BaseModel):
    """Request models: unknown fields, coercions ("1" or true for 1) and NaN/Infinity are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _default_text(spec: limits.Setting) -> str:
    if spec.default is None:
        return ""
    value = spec.wire_value(spec.default)
    if isinstance(value, bool):
        value = str(value).lower()
    elif isinstance(value, dict):
        value = "{" + ", ".join(f"{k}:{v}" for k, v in value.items()) + "}"
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    return f" (default {value})"


def setting_field(spec: limits.Setting) -> tuple[Any, Any]:
    """The wire type and Field of one queue setting, from its definition in the engine."""
    description = spec.doc + _default_text(spec)
    kind: Any
    if spec.kind is bool:
        kind = bool
    elif spec.choices:
        kind = Literal[spec.choices]  # type: ignore[valid-type]
    elif spec.kind is dict and spec.keys is str:
        kind = dict[GroupName, json_int(spec.low or 1, spec.high or limits.INT64_MAX)]  # type: ignore[misc]
        return kind | None, Field(None, description=description)
    elif spec.kind is str:
        return QueueName | None, Field(None, description=description)
    elif spec.kind is dict:
        kind = dict[PriorityClass, json_int(spec.low or 1, spec.high or limits.INT64_MAX)]  # type: ignore[misc]
        return kind | None, Field(
            None, description=description, json_schema_extra={"propertyNames": {"pattern": "^-?[1-9][0-9]{0,17}$|^0$"}}
        )
    elif spec.is_duration:
        low = (spec.low or 0) / 1000
        bounds = {"gt": 0} if low > 0 else {"ge": low}
        return float | None, Field(
            None, **bounds, le=(spec.high or limits.MAX_DURATION_MS) / 1000, description=description
        )
    else:
        kind = json_int(limits.INT64_MIN if spec.low is None else spec.low, spec.high or limits.INT64_MAX)
    return kind | None, Field(None, description=description)


class _QueueSettings(Strict):
    def to_engine(self) -> dict:
        """The fields that were given, in engine units; `null` kept only where the engine allows None."""
        out = {}
        for key, value in self.model_dump(exclude_unset=True).items():
            spec = limits.SETTINGS_BY_WIRE[key]
            if value is None and not spec.nullable:
                continue
            out[spec.name] = to_ms(value) if spec.is_duration else value
        return out

    @classmethod
    def from_engine(cls, config: dict[str, Any]) -> _QueueSettings:
        values: dict[str, Any] = {
            limits.SETTINGS[k].wire if k in limits.SETTINGS else k: from_ms(v) if k in SECONDS_FIELDS.values() else v
            for k, v in config.items()
        }
        return cls.model_construct(**values)


# Queue settings on the wire: one optional field per setting of rankq.engine.config.QueueConfig.
QueueSettings: type[_QueueSettings] = create_model(  # type: ignore[call-overload]
    "QueueSettings",
    __base__=_QueueSettings,
    __module__=__name__,
    __doc__="Queue settings. Every field is optional: unset fields keep their current (or default) value.",
    **{spec.wire: setting_field(spec) for spec in limits.SETTINGS.values()},
)


class CreateQueue(QueueSettings):
    name: str = Field(..., min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class QueueCounts(BaseModel):
    ready: int
    delayed: int
    leased: int
    dead: int
    waiting: int = Field(0, description="messages waiting for their dependencies to be acked")
    acked_retained: int = 0
    backlog: int = Field(
        0, description="ready + leased + delayed messages already due: the work consumers have (for autoscalers)"
    )


class QueueInfo(BaseModel):
    name: str
    settings: QueueSettings
    counts: QueueCounts
    totals: dict[str, int] = {}
    created_at: datetime | None = None


class QueueList(BaseModel):
    queues: list[QueueInfo]


class DependsOnMessage(Strict):
    """A dependency on a message already enqueued: in this queue, or in another queue of the group."""

    id: Int64
    queue: QueueName | None = Field(None, description="default: the queue enqueued to")


class DependsOnBatchItem(Strict):
    """A dependency on an earlier message of the same batch (batch enqueue only)."""

    batch_index: Annotated[int, Field(ge=0, lt=MAX_BATCH)] = Field(
        ..., description="0-based index of an earlier message of this batch"
    )


def _dependency_kind(value: Any) -> str:
    """Which of the two forms a depends_on item means, so that a mistake is reported against it alone."""
    if isinstance(value, dict):
        return "batch_index" if "batch_index" in value else "message"
    return "batch_index" if isinstance(value, DependsOnBatchItem) else "message"


Dependency = Annotated[
    Annotated[DependsOnMessage, Tag("message")] | Annotated[DependsOnBatchItem, Tag("batch_index")],
    Discriminator(_dependency_kind),
]


class EnqueueRequest(Strict):
    payload: Any = Field(..., description="any JSON value (no NaN or Infinity, nested at most 64 deep)")
    priority: Int64 | None = Field(None, description="lower is served sooner; default: the queue's default_priority")
    group: str | None = Field(
        None, min_length=1, max_length=limits.MAX_TEXT, description="fairness key (default 'default')"
    )
    delay: Seconds | None = Field(None, description="seconds before the message becomes ready")
    deliver_at: Timestamp | None = Field(
        None, description="time at which the message becomes ready, with its zone (`Z` or an offset)"
    )
    headers: dict[str, str] | None = Field(None, description="text headers; their bytes count toward max_payload_bytes")
    dedup_key: str | None = Field(
        None,
        min_length=1,
        max_length=limits.MAX_TEXT,
        description="an enqueue with a key seen within the dedup window returns the first id",
    )
    ttl: Annotated[float, Field(gt=0, le=MAX_DURATION)] | None = Field(
        None,
        description="seconds the message may wait to be acked; then it is dead-lettered with reason `expired` "
        "(default: the queue's message_ttl)",
    )
    expires_at: Timestamp | None = Field(
        None, description="time at which the message expires, with its zone; the earlier of ttl and expires_at wins"
    )
    depends_on: list[Dependency] | None = Field(
        None,
        max_length=limits.MAX_DEPENDENCIES,
        description="messages that must be acked first; the message waits (state `waiting`) until they are",
    )


class EnqueueResult(BaseModel):
    id: int
    seq: int
    duplicate: bool = False


class EnqueueBatchRequest(Strict):
    messages: list[EnqueueRequest] = Field(..., min_length=1, max_length=MAX_BATCH)


class EnqueueBatchResult(BaseModel):
    results: list[EnqueueResult]


class DequeueRequest(Strict):
    max: Annotated[int, Field(ge=1, le=MAX_BATCH)] = Field(1, description="most messages to lease")
    wait: float = Field(
        0, ge=0, le=MAX_WAIT, description="seconds to wait for a message when none is ready (long poll)"
    )
    visibility_timeout: float | None = Field(
        None, gt=0, le=MAX_VISIBILITY, description="lease length for these messages; default: the queue's"
    )


class Delivered(BaseModel):
    id: int
    seq: int
    payload: Any = None
    payload_base64: str | None = Field(
        None, description="set instead of payload for a binary message (enqueued over gRPC)"
    )
    priority: int
    group: str
    deliveries: int
    lease_token: str
    lease_expires_at: datetime
    enqueued_at: datetime
    headers: dict[str, str] | None = None


class DequeueResult(BaseModel):
    messages: list[Delivered]


class AckRequest(Strict):
    lease_token: str = Field(..., min_length=1, max_length=limits.MAX_TOKEN)
    result: Json = Field(
        None, description="JSON kept with the message status for the queue's retention (nested at most 64 deep)"
    )


class AckBatchItem(AckRequest):
    id: Int64


class AckBatchRequest(Strict):
    items: list[AckBatchItem] = Field(..., min_length=1, max_length=MAX_BATCH)


class AckItemResult(BaseModel):
    id: int
    ok: bool
    status: int = 200
    detail: str | None = None


class AckBatchResult(BaseModel):
    results: list[AckItemResult]


class AckResult(BaseModel):
    id: int
    state: Literal["acked"] = "acked"


class NackRequest(Strict):
    lease_token: str = Field(..., min_length=1, max_length=limits.MAX_TOKEN)
    delay: Seconds | None = Field(
        None, description="seconds before redelivery; default: exponential backoff with jitter"
    )
    error: str | None = Field(None, max_length=limits.MAX_ERROR, description="why it failed; kept as last_error")
    dead: bool = Field(False, description="dead-letter it now (reject), whatever deliveries are left")


class NackResult(BaseModel):
    id: int
    state: Literal["ready", "delayed", "dead"]
    available_at: datetime | None = None


class ReleaseRequest(Strict):
    lease_token: str = Field(..., min_length=1, max_length=limits.MAX_TOKEN)


class ReleaseResult(BaseModel):
    id: int
    state: Literal["ready"] = "ready"


class ExtendRequest(Strict):
    lease_token: str = Field(..., min_length=1, max_length=limits.MAX_TOKEN)
    visibility_timeout: float | None = Field(
        None, gt=0, le=MAX_VISIBILITY, description="new lease length from now; default: the queue's"
    )


class ExtendResult(BaseModel):
    id: int
    lease_expires_at: datetime


class PriorityRequest(Strict):
    priority: Int64


class MessageRef(BaseModel):
    queue: str
    id: int


class MessageStatus(BaseModel):
    id: int
    seq: int
    queue: str
    state: Literal["ready", "delayed", "waiting", "leased", "dead", "acked"]
    priority: int | None = None
    group: str | None = None
    deliveries: int = 0
    enqueued_at: datetime | None = None
    available_at: datetime | None = None
    lease_expires_at: datetime | None = None
    acked_at: datetime | None = None
    last_error: str | None = None
    result: Any = None
    headers: dict[str, str] | None = None
    dedup_key: str | None = None
    payload: Any = None
    payload_base64: str | None = None
    depends_on: list[MessageRef] | None = Field(
        None, description="its dependencies, as enqueued (batch items resolved to ids)"
    )
    expires_at: datetime | None = None
    dead_reason: Literal["max_deliveries", "rejected", "expired", "dependency_failed"] | None = Field(
        None, description="why a dead letter is dead (last_error gives the detail)"
    )


class DeadLetterPage(BaseModel):
    messages: list[MessageStatus]
    next_after: int | None = Field(None, description="pass as `after` for the next page; null at the end")


class RedriveRequest(Strict):
    ids: list[Int64] | None = Field(
        None, max_length=limits.MAX_REDRIVE_IDS, description="ids to move back; null or absent: all dead letters"
    )
    rate: Count | None = Field(
        None,
        description="messages per second: a paced redrive that runs in the group "
        "(watch it with GET, stop it with DELETE /queues/{name}/redrive); "
        "absent: all at once",
    )


class RedriveJob(BaseModel):
    rate: int = Field(..., description="messages per second")
    total: int
    moved: int
    remaining: int
    started_at: datetime
    state: Literal["running", "done", "stopped"]


class RedriveResult(BaseModel):
    redriven: list[int] = Field([], description="moved now (a redrive without rate)")
    not_found: list[int] = Field([], description="ids that were not dead letters")
    job: RedriveJob | None = Field(None, description="the paced redrive started (a redrive with rate)")


class CancelResult(BaseModel):
    id: int
    state: Literal["cancelled"] = "cancelled"
    was: str


class ErrorBody(BaseModel):
    detail: str
    errors: list[dict] | None = None


class Member(BaseModel):
    id: str
    address: str = Field(..., description="Raft address host:port")
    http_url: str | None = None
    grpc_target: str | None = None
    role: Literal["leader", "follower"]
    self: bool = Field(False, description="the node that answered")
    healthy: bool = Field(..., description="connected to the answering node")
    match_index: int | None = Field(None, description="last log index known replicated there (from the leader)")
    lag: int | None = Field(None, description="entries behind the commit index (from the leader)")


class ClusterStatus(BaseModel):
    leader: str | None
    leader_address: str | None
    term: int
    commit_index: int
    last_applied: int
    has_quorum: bool | None = None
    self: str
    members: list[Member]


class AddMember(Strict):
    address: str = Field(
        ...,
        pattern=r"^[^\s:]+:\d{1,5}$",
        description="Raft address host:port of the new member (already started with the full peer list)",
    )


class TransferLeader(Strict):
    to: str | None = Field(
        None,
        min_length=1,
        max_length=limits.MAX_TEXT,
        description="node id or Raft address; default: the most caught-up follower",
    )


class RestoreChunk(Strict):
    restore_id: str = Field(
        ...,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="the same for every chunk of one restore (the CLI makes one)",
    )
    index: int = Field(..., ge=0, le=2**31, description="chunk number from 0; a chunk sent again is applied once")
    records: list[dict] = Field(
        ..., min_length=1, max_length=10_000, description="backup records (JSON lines of a backup file), in file order"
    )


class RestoreResult(BaseModel):
    applied: int = Field(..., description="records applied by this chunk (0 for a repeat)")
    duplicate: bool
