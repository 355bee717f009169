"""Per-queue settings as the engine keeps them (times in integer milliseconds).

The API layer speaks seconds; the engine speaks milliseconds so that every replica computes the
same deadlines from the same integers.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import Invalid

QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

STRICT = "strict"
WEIGHTED = "weighted"
POLICIES = (STRICT, WEIGHTED)

DEFAULT_WEIGHTS = {1: 30, 2: 25, 3: 20, 4: 15, 5: 10}

# ---- limits: declared here once; the HTTP schemas, the gRPC checks and the engine import them ----
INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1  # priorities, weights, counts and times fit a protobuf int64
# Timestamps (ms since the epoch) must name an instant ISO 8601 can write: years 0001 to 9999.
MIN_TIME_MS = -62_135_596_800_000
MAX_TIME_MS = 253_402_300_799_999
MAX_PAYLOAD_BYTES = 64 * 1024 * 1024  # largest max_payload_bytes; also the HTTP body cap
MAX_JSON_DEPTH = 64  # nesting of a JSON payload or ack result
MAX_BATCH = 1000  # messages per enqueue batch, per dequeue, items per batch ack
MAX_WAIT_MS = 20_000  # long-poll wait
MAX_VISIBILITY_MS = 12 * 3600 * 1000  # lease length
MAX_DURATION_MS = 365 * 24 * 3600 * 1000  # delays, retention, dedup window, retry backoff
MAX_TEXT = 256  # group, dedup key, node reference
MAX_TOKEN = 128  # lease token
MAX_ERROR = 4096  # nack error text
MAX_REDRIVE_IDS = 100_000
MAX_DEPENDENCIES = 100  # depends_on entries of one message

DEAD_LETTER = "dead_letter"
CANCEL = "cancel"
DEPENDENCY_FAILURES = (DEAD_LETTER, CANCEL)


# ---- queue settings: each declared once, as a field of QueueConfig --------------------------------
#
# A setting is one `setting(...)` field below: engine name, type, default, bounds and doc. From these
# come the engine's checks (`QueueConfig.validate`), the HTTP schema (`rankq.schemas.QueueSettings`),
# gRPC's unit conversion and bounds (`rankq.server.grpc_api`), the CLI's `queue create/update`
# options (`rankq.cli`) and the checks on the Queue resource's fields (`rankq.operator.models`).
# Durations end in `_ms` here and are seconds (without the suffix) everywhere else.


@dataclass(frozen=True, slots=True)
class Setting:
    """The definition of one queue setting (`SETTINGS[name]`)."""

    name: str  # engine name; a duration's ends in _ms
    kind: type  # int, bool, str (with choices, or a queue name) or dict (see keys)
    doc: str  # one line, for API docs and --help; says what None means when it is allowed
    default: Any = None
    low: int | None = None  # inclusive bounds of an int (milliseconds for a duration)
    high: int | None = None
    nullable: bool = False  # None is a value: "no cap", "keep forever"
    choices: tuple[str, ...] = ()
    keys: type = int  # a dict's keys: int (priority classes, at least one) or str (group names, may be empty)

    @property
    def is_duration(self) -> bool:
        return self.name.endswith("_ms")

    @property
    def wire(self) -> str:
        """The name in the HTTP and gRPC APIs, the client and the CLI (seconds for a duration)."""
        return self.name[:-3] if self.is_duration else self.name

    def wire_value(self, value: Any) -> Any:
        """An engine value in API units (seconds for durations)."""
        return value / 1000 if self.is_duration and value is not None else value


def setting(
    default: Any,
    kind: type,
    doc: str,
    *,
    low: int | None = None,
    high: int | None = None,
    nullable: bool = False,
    choices: tuple[str, ...] = (),
    keys: type = int,
) -> Any:
    """A QueueConfig field that is a queue setting; its name is filled in from the field."""
    spec = Setting("", kind, doc, default, low, high, nullable, choices, keys)
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"setting": spec})
    return field(default=default, metadata={"setting": spec})


DAY_MS = 24 * 3600 * 1000


@dataclass(slots=True)
class QueueConfig:
    policy: str = setting(
        STRICT,
        str,
        "strict: lowest priority number first; weighted: smooth weighted round robin over priority classes",
        choices=POLICIES,
    )
    weights: dict[int, int] = setting(
        DEFAULT_WEIGHTS, dict, "priority class -> weight (weighted policy)", low=1, high=INT64_MAX
    )
    default_priority: int = setting(3, int, "priority of a message that names none", low=INT64_MIN, high=INT64_MAX)
    fair_groups: bool = setting(False, bool, "serve the groups of one priority round robin")
    group_max_inflight: int | None = setting(
        None, int, "cap on leased messages per group (fair groups); null: no cap", low=1, high=INT64_MAX, nullable=True
    )
    visibility_timeout_ms: int = setting(
        30_000, int, "seconds a dequeued message stays leased", low=1, high=MAX_VISIBILITY_MS
    )
    max_deliveries: int = setting(
        5, int, "deliveries before a message is dead-lettered; 0: retry forever", low=0, high=INT64_MAX
    )
    dead_letter: bool = setting(
        True, bool, "keep messages that ran out of deliveries in the dead-letter queue; false drops them"
    )
    dead_letter_retention_ms: int | None = setting(
        14 * DAY_MS,
        int,
        "seconds dead letters are kept; null: until redriven or deleted",
        low=0,
        high=MAX_DURATION_MS,
        nullable=True,
    )
    retention_ms: int = setting(
        3600 * 1000, int, "seconds an acked message's status and result stay readable", low=0, high=MAX_DURATION_MS
    )
    max_length: int | None = setting(
        None,
        int,
        "most messages (ready, delayed, leased, waiting); an enqueue beyond it gets 429; null: unbounded",
        low=1,
        high=INT64_MAX,
        nullable=True,
    )
    max_payload_bytes: int = setting(
        256 * 1024, int, "largest payload plus headers in bytes", low=1, high=MAX_PAYLOAD_BYTES
    )
    dedup_window_ms: int = setting(5 * 60 * 1000, int, "seconds a dedup key is remembered", low=0, high=MAX_DURATION_MS)
    retry_base_ms: int = setting(
        1000, int, "first retry delay after a nack without delay, doubling per delivery", low=0, high=MAX_DURATION_MS
    )
    retry_max_ms: int = setting(5 * 60 * 1000, int, "longest retry delay", low=0, high=MAX_DURATION_MS)
    archive: bool = setting(
        False,
        bool,
        "copy finished messages (acked with result, dead-lettered, cancelled) to the group's PostgreSQL archive",
    )
    rate_limit: int | None = setting(
        None,
        int,
        "deliveries per second (token bucket); a dequeue gets fewer messages when it runs dry; null: no limit",
        low=1,
        high=INT64_MAX,
        nullable=True,
    )
    rate_burst: int | None = setting(
        None,
        int,
        "deliveries the rate limit lets through at once (bucket size); null: rate_limit",
        low=1,
        high=INT64_MAX,
        nullable=True,
    )
    group_rate_limit: int | None = setting(
        None,
        int,
        "deliveries per second per group (fair groups; bucket size the same); null: no limit",
        low=1,
        high=INT64_MAX,
        nullable=True,
    )
    max_inflight: int | None = setting(
        None, int, "cap on leased messages of the queue; null: no cap", low=1, high=INT64_MAX, nullable=True
    )
    group_weights: dict[str, int] = setting(
        {}, dict, "group -> weight for fair groups (groups not named weigh 1)", low=1, high=INT64_MAX, keys=str
    )
    message_ttl_ms: int | None = setting(
        None,
        int,
        "seconds a message may wait before it expires (to the dead letters with reason expired); null: no limit",
        low=1,
        high=MAX_DURATION_MS,
        nullable=True,
    )
    dependency_failure: str = setting(
        DEAD_LETTER,
        str,
        "what befalls the dependents of a message that was dead-lettered or cancelled",
        choices=DEPENDENCY_FAILURES,
    )
    dead_letter_queue: str | None = setting(
        None,
        str,
        "another queue of the group that receives this queue's dead "
        "letters as new messages (while it exists); null: keep them here",
        nullable=True,
    )

    def validate(self) -> QueueConfig:
        for spec in SETTINGS.values():
            check_setting(spec, getattr(self, spec.name))
        if self.policy == WEIGHTED and self.default_priority not in self.weights:
            raise Invalid(
                f"default_priority {self.default_priority} is not one of the weighted classes {sorted(self.weights)}"
            )
        return self

    def with_changes(self, changes: dict[str, Any]) -> QueueConfig:
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise Invalid(f"unknown queue settings: {', '.join(sorted(unknown))}")
        new = dataclasses.replace(self, **changes)
        for name in DICT_SETTINGS:
            if name in changes and isinstance(changes[name], dict):
                setattr(new, name, dict(changes[name]))
        return new.validate()

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for name in DICT_SETTINGS:
            out[name] = dict(out[name])
        return out


SETTINGS: dict[str, Setting] = {
    f.name: dataclasses.replace(
        f.metadata["setting"], name=f.name, default=f.default_factory() if callable(f.default_factory) else f.default
    )
    for f in dataclasses.fields(QueueConfig)
    if "setting" in f.metadata
}
SETTINGS_BY_WIRE: dict[str, Setting] = {spec.wire: spec for spec in SETTINGS.values()}
DICT_SETTINGS = tuple(spec.name for spec in SETTINGS.values() if spec.kind is dict)


def check_setting(spec: Setting, value: Any) -> None:
    """The engine's rule for one setting's value; raises Invalid naming the setting."""
    name = spec.name
    if value is None and spec.nullable:
        return
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise Invalid(f"{name} must be true or false")
    elif spec.choices:
        if value not in spec.choices:
            raise Invalid(f"{name} must be one of {', '.join(spec.choices)}, not {value!r}")
    elif spec.kind is dict and spec.keys is str:
        if not isinstance(value, dict):
            raise Invalid(f"{name} must map group names to weights")
        for group, weight in value.items():
            if not isinstance(group, str) or not 1 <= len(group) <= MAX_TEXT:
                raise Invalid(f"{name}: a group name is 1 to {MAX_TEXT} characters")
            _bounded(f"weight of group {group!r}", weight, spec.low, spec.high)
    elif spec.kind is dict:
        if not isinstance(value, dict) or not value:
            raise Invalid(f"{name} must name at least one priority class")
        for cls, weight in value.items():
            check_int64("priority class", cls)
            _bounded(f"weight of class {cls}", weight, spec.low, spec.high)
    elif spec.kind is str:
        try:
            check_queue_name(value)
        except Invalid:
            raise Invalid(f"{name} must be a queue name (1-128 letters, digits, '.', '_' or '-')") from None
    else:
        _bounded(name, value, spec.low, spec.high)


def _bounded(name: str, value: Any, low: int | None, high: int | None) -> None:
    if low is not None and low <= INT64_MIN:
        check_int64(name, value)
    elif low == 1:
        _positive(name, value, upper=high)
    else:
        _non_negative(name, value, upper=high)


def _positive(name: str, value: Any, upper: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise Invalid(f"{name} must be a positive integer")
    if upper is not None and value > upper:
        raise Invalid(f"{name} must be at most {upper}")


def _non_negative(name: str, value: Any, upper: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Invalid(f"{name} must be a non-negative integer")
    if upper is not None and value > upper:
        raise Invalid(f"{name} must be at most {upper}")


def check_int64(name: str, value: Any) -> int:
    """An integer a protobuf int64 can carry (priorities, times): larger ones could not be delivered."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(f"{name} must be an integer")
    if not INT64_MIN <= value <= INT64_MAX:
        raise Invalid(f"{name} must be between {INT64_MIN} and {INT64_MAX}")
    return value


def check_time_ms(name: str, value: Any) -> int:
    """A timestamp in ms that can be written back as ISO 8601 (years 0001 to 9999)."""
    if not isinstance(value, int) or isinstance(value, bool) or not MIN_TIME_MS <= value <= MAX_TIME_MS:
        raise Invalid(f"{name} must be a time between years 0001 and 9999 (ms {MIN_TIME_MS} to {MAX_TIME_MS})")
    return value


def check_queue_name(name: str) -> str:
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        raise Invalid(
            "queue name must be 1-128 characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name
