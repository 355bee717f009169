"""Checks both APIs apply at the edge, before a request becomes a command for the log.

HTTP (through the pydantic models in `rankq.schemas`) and gRPC (in `rankq.server.grpc_api`) call
the same functions with the same limits (declared in `rankq.engine.config`), so a value one API
accepts the other accepts too, and nothing reaches the log that the engine could not store, or
store but not deliver: JSON only (no NaN or Infinity), nested at most MAX_JSON_DEPTH deep, text
that has a UTF-8 form, numbers inside their documented bounds. Failures raise the engine's
`Invalid`, which both APIs answer with 422 / INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .engine.config import MAX_DEPENDENCIES, MAX_JSON_DEPTH, QueueConfig, check_queue_name
from .engine.errors import Invalid


def check_text(name: str, value: str) -> str:
    """Text must have a UTF-8 form: a lone surrogate (JSON `"\\ud800"`) could never be sent back."""
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise Invalid(f"{name} holds a lone surrogate, which is not valid Unicode") from None
    return value


def check_json(name: str, value: Any) -> Any:
    """A JSON value as a client sent it: finite numbers, valid text, at most MAX_JSON_DEPTH deep."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:
            check_text(name, item)
        elif kind is dict or kind is list:
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise Invalid(f"{name} is nested deeper than {MAX_JSON_DEPTH} levels")
            if kind is dict:
                for key, child in item.items():
                    if type(key) is not str:
                        raise Invalid(f"{name} has a non-text object key")
                    check_text(name, key)
                    stack.append((child, depth))
            else:
                stack.extend((child, depth) for child in item)
        elif kind is float:
            if not math.isfinite(item):
                raise Invalid(f"{name} must not hold NaN or Infinity (they are not JSON)")
        elif item is not None and kind is not int and kind is not bool:
            raise Invalid(f"{name} is not a JSON value")
    return value


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


# One encoder and one decoder for all calls: json with options builds a new one each time.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)
_DECODER = json.JSONDecoder(parse_constant=_no_constant)


def json_text(name: str, value: Any) -> str:
    """The compact JSON text a payload is stored as, once it is known to be deliverable."""
    try:
        text = _ENCODER.encode(value)
    except ValueError:
        raise Invalid(f"{name} must not hold NaN or Infinity (they are not JSON)") from None
    except RecursionError:
        raise Invalid(f"{name} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    if not text.isascii():
        check_text(name, text)
    # Deeper than MAX_JSON_DEPTH takes more brackets than that: count them (cheap) before walking.
    if len(text) > 2 * MAX_JSON_DEPTH and text.count("[") + text.count("{") > MAX_JSON_DEPTH:
        check_json(name, value)
    return text


def parse_json(name: str, data: bytes | str) -> Any:
    """Parse JSON text a client sent (gRPC carries it in string and bytes fields)."""
    try:
        value = _DECODER.decode(data.decode() if isinstance(data, bytes) else data)
    except (ValueError, UnicodeDecodeError) as err:
        raise Invalid(f"{name} is not valid JSON: {err}") from None
    except RecursionError:
        raise Invalid(f"{name} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    return check_json(name, value)


def seconds_ms(name: str, value: float, high: float, low: float = 0.0, open_low: bool = False) -> int:
    """Seconds on the wire to the engine's integer milliseconds, inside [low, high]."""
    if not math.isfinite(value) or value < low or (open_low and value == low) or value > high:
        bound = f"more than {low:g}" if open_low else f"at least {low:g}"
        raise Invalid(f"{name} must be {bound} and at most {high:g} seconds, not {value!r}")
    return int(round(value * 1000))


def check_settings(name: str, current: dict | None, changes: dict) -> None:
    """Queue settings the engine would refuse, refused before they are proposed: against the
    defaults for a new queue (`current` None), or against this node's copy of its settings."""
    if current is None:
        check_queue_name(name)
    (QueueConfig() if current is None else QueueConfig(**current)).with_changes(changes)


def check_depends_on(
    where: str, index: int | None, deps: list[tuple[str, int] | int]
) -> tuple[tuple[str, int] | int, ...] | None:
    """A message's dependencies as the engine takes them: `(queue, id)` pairs and indexes of earlier
    items of the same batch. `index` is the message's place in its batch (None: a single enqueue,
    where batch indexes mean nothing). A batch item may only depend on an earlier one, which is
    what makes a cycle impossible."""
    if not deps:
        return None
    if len(deps) > MAX_DEPENDENCIES:
        raise Invalid(f"{where}: at most {MAX_DEPENDENCIES} dependencies per message, not {len(deps)}")
    for dep in deps:
        if isinstance(dep, int):
            if index is None:
                raise Invalid(f"{where}: batch_index refers to an item of the same batch; use it in a batch enqueue")
            if not 0 <= dep < index:
                raise Invalid(
                    f"{where}: batch_index {dep} is not an earlier item of the batch (this is item {index}); "
                    "a message can only depend on the items before it"
                )
        else:
            check_queue_name(dep[0])
    return tuple(deps)
