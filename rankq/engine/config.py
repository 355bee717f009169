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
            if not isinstance(cls, int) or isinstance(cls, bool):
                raise Invalid(f"priority class {cls!r} is not an integer")
            if not isinstance(weight, int) or weight < 1:
                raise Invalid(f"weight of class {cls} must be a positive integer")
        if self.policy == WEIGHTED and self.default_priority not in self.weights:
            raise Invalid(
                f"default_priority {self.default_priority} is not one of the weighted classes "
                f"{sorted(self.weights)}"
            )
        _positive("visibility_timeout_ms", self.visibility_timeout_ms, upper=12 * 3600 * 1000)
        _non_negative("max_deliveries", self.max_deliveries)
        _non_negative("retention_ms", self.retention_ms)
        _non_negative("dedup_window_ms", self.dedup_window_ms)
        _non_negative("retry_base_ms", self.retry_base_ms)
        _non_negative("retry_max_ms", self.retry_max_ms)
        if self.dead_letter_retention_ms is not None:
            _non_negative("dead_letter_retention_ms", self.dead_letter_retention_ms)
        if self.max_length is not None:
            _positive("max_length", self.max_length)
        if self.group_max_inflight is not None:
            _positive("group_max_inflight", self.group_max_inflight)
        _positive("max_payload_bytes", self.max_payload_bytes, upper=64 * 1024 * 1024)
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


def _non_negative(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise Invalid(f"{name} must be a non-negative integer")


def check_queue_name(name: str) -> str:
    if not isinstance(name, str) or not QUEUE_NAME.match(name):
        raise Invalid(
            "queue name must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name
