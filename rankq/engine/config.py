"""Per-queue settings as the engine keeps them (times in integer milliseconds).

The API layer speaks seconds; the engine speaks milliseconds so that every replica computes the
same deadlines from the same integers.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field

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


@dataclass(slots=True)
class QueueConfig:
    policy: str = STRICT
    # Priority class -> weight; used by the weighted policy only.
    weights: dict[int, int] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))
    default_priority: int = 3
    fair_groups: bool = False
    # Cap on leased messages per group (fair groups only); None means no cap.
    group_max_inflight: int | None = None
    visibility_timeout_ms: int = 30_000
    # Deliveries after which a message is dead-lettered; 0 means retry forever.
    max_deliveries: int = 5
    dead_letter: bool = True
    # How long dead letters are kept; None keeps them until redriven or deleted.
    dead_letter_retention_ms: int | None = 14 * 24 * 3600 * 1000
    # How long an acked message's status and result stay readable.
    retention_ms: int = 3600 * 1000
    max_length: int | None = None
    max_payload_bytes: int = 256 * 1024
    dedup_window_ms: int = 5 * 60 * 1000
    retry_base_ms: int = 1000
    retry_max_ms: int = 5 * 60 * 1000
    # Copy finished messages (acked, dead-lettered, cancelled) to the group's archive store.
    archive: bool = False

    def validate(self) -> "QueueConfig":
        if self.policy not in POLICIES:
            raise Invalid(f"policy must be one of {', '.join(POLICIES)}, not {self.policy!r}")
        if not self.weights:
            raise Invalid("weights must name at least one priority class")
        for cls, weight in self.weights.items():
            check_int64("priority class", cls)
            _positive(f"weight of class {cls}", weight, upper=INT64_MAX)
        check_int64("default_priority", self.default_priority)
        if self.policy == WEIGHTED and self.default_priority not in self.weights:
            raise Invalid(
                f"default_priority {self.default_priority} is not one of the weighted classes "
                f"{sorted(self.weights)}"
            )
        if not isinstance(self.fair_groups, bool) or not isinstance(self.dead_letter, bool):
            raise Invalid("fair_groups and dead_letter must be true or false")
        _positive("visibility_timeout_ms", self.visibility_timeout_ms, upper=MAX_VISIBILITY_MS)
        _non_negative("max_deliveries", self.max_deliveries, upper=INT64_MAX)
        _non_negative("retention_ms", self.retention_ms, upper=MAX_DURATION_MS)
        _non_negative("dedup_window_ms", self.dedup_window_ms, upper=MAX_DURATION_MS)
        _non_negative("retry_base_ms", self.retry_base_ms, upper=MAX_DURATION_MS)
        _non_negative("retry_max_ms", self.retry_max_ms, upper=MAX_DURATION_MS)
        if self.dead_letter_retention_ms is not None:
            _non_negative("dead_letter_retention_ms", self.dead_letter_retention_ms, upper=MAX_DURATION_MS)
        if self.max_length is not None:
            _positive("max_length", self.max_length, upper=INT64_MAX)
        if self.group_max_inflight is not None:
            _positive("group_max_inflight", self.group_max_inflight, upper=INT64_MAX)
        _positive("max_payload_bytes", self.max_payload_bytes, upper=MAX_PAYLOAD_BYTES)
        if not isinstance(self.archive, bool):
            raise Invalid("archive must be true or false")
        return self

    def with_changes(self, changes: dict) -> "QueueConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise Invalid(f"unknown queue settings: {', '.join(sorted(unknown))}")
        new = dataclasses.replace(self, **changes)
        if "weights" in changes:
            new.weights = dict(changes["weights"])
        return new.validate()

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["weights"] = dict(self.weights)
        return out


def _positive(name: str, value, upper: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise Invalid(f"{name} must be a positive integer")
    if upper is not None and value > upper:
        raise Invalid(f"{name} must be at most {upper}")


def _non_negative(name: str, value, upper: int | None = None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Invalid(f"{name} must be a non-negative integer")
    if upper is not None and value > upper:
        raise Invalid(f"{name} must be at most {upper}")


def check_int64(name: str, value) -> int:
    """An integer a protobuf int64 can carry (priorities, times): larger ones could not be delivered."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise Invalid(f"{name} must be an integer")
    if not INT64_MIN <= value <= INT64_MAX:
        raise Invalid(f"{name} must be between {INT64_MIN} and {INT64_MAX}")
    return value


def check_time_ms(name: str, value) -> int:
    """A timestamp in ms that can be written back as ISO 8601 (years 0001 to 9999)."""
    if not isinstance(value, int) or isinstance(value, bool) or not MIN_TIME_MS <= value <= MAX_TIME_MS:
        raise Invalid(f"{name} must be a time between years 0001 and 9999 (ms {MIN_TIME_MS} to {MAX_TIME_MS})")
    return value


def check_queue_name(name: str) -> str:
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        raise Invalid(
            "queue name must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name
