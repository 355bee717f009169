"""A group's whole state as plain records, and those records applied back into an engine.

Why records and not the snapshot pickle: a backup outlives the build that wrote it and may be
carried between machines, so it is versioned JSON-compatible data that a restore validates field by
field (a pickle would run whatever code its bytes name). Why a restore goes through the log: every
member of the new group must hold the same state, so the records travel as ordinary commands
(`Restore`), chunk by chunk, and each replica applies them.

A restore is lease-free: a message that was leased when the backup was taken comes back ready with
its delivery count, so no consumer of the old group can ack it in the new one.
"""

from __future__ import annotations

import base64
import heapq
from collections.abc import Iterator
from typing import Any, overload

from .config import QueueConfig, check_queue_name
from .errors import Conflict, Invalid
from .message import DEAD, DELAYED, LEASED, READY, WAITING, Message

FORMAT = "rankq-backup"
VERSION = 1

Record = dict[str, Any]
JOB_FIELDS = ("rate", "total", "moved", "done", "started_at")  # integers of a paced redrive job
JOB_STATES = ("running", "done", "stopped")


# ---- export ---------------------------------------------------------------------------------------


def _payload_fields(payload: str | bytes) -> Record:
    if isinstance(payload, bytes):
        return {"payload_base64": base64.b64encode(payload).decode()}
    return {"payload_json": payload}


def _result_fields(result: Any) -> Record:
    if result is None:
        return {}
    if isinstance(result, bytes):
        return {"result_base64": base64.b64encode(result).decode()}
    return {"result": result}


def _message_record(queue: str, msg: Message, links: Any = None) -> Record:
    state = msg.state
    rec: Record = {
        "kind": "message",
        "queue": queue,
        "id": msg.id,
        "priority": msg.priority,
        "group": msg.group,
        "deliveries": msg.deliveries,
        "enqueued_at": msg.enqueued_at,
        # Leases do not survive a restore: a leased message comes back ready.
        "state": {READY: "ready", LEASED: "ready", DELAYED: "delayed", DEAD: "dead", WAITING: "waiting"}[state],
        **_payload_fields(msg.payload),
    }
    if state in (DELAYED, DEAD, WAITING) and msg.due is not None:
        rec["due"] = msg.due  # a waiting message's: its deliver-at
    for key in ("headers", "dedup_key", "last_error", "expires_at", "dead_reason"):
        value = msg.get_extra(key)
        if value is not None:
            rec[key] = value
    deps = msg.get_extra("depends_on")
    if deps is not None:
        rec["depends_on"] = [list(k) for k in deps]
        if state == WAITING and links is not None:
            # the dependencies not finished yet: exactly those it still waits for
            rec["waits_on"] = [list(k) for k in deps if links.status(k[0], k[1]) == "live"]
    return rec


def export_records(engine: Any) -> Iterator[Record]:
    """Every queue with its settings, messages (live and dead), retained results and dedup keys.

    The caller holds the state still (a lock, or a forked copy) while this runs.
    """
    yield {
        "kind": "header",
        "format": FORMAT,
        "version": VERSION,
        "seq": engine.seq,
        "now": engine.now,
        "queues": len(engine.queues),
    }
    for name, q in engine.queues.items():
        yield {
            "kind": "queue",
            "name": name,
            "settings": q.config.as_dict(),
            "secret": base64.b64encode(q.secret).decode(),
            "created_at": q.created_at,
            "totals": dict(q.totals),
        }
        links = getattr(engine, "links", None)
        for msg in q.messages.values():
            yield _message_record(name, msg, links)
        for msg in q.dead.values():
            yield _message_record(name, msg)
        for mid, (acked_at, deliveries, result) in q.acked.items():
            yield {
                "kind": "acked",
                "queue": name,
                "id": mid,
                "acked_at": acked_at,
                "deliveries": deliveries,
                **_result_fields(result),
            }
        for key, (mid, expires_at) in q.dedup.items():
            yield {"kind": "dedup", "queue": name, "key": key, "id": mid, "expires_at": expires_at}
        for mid, at in q.cancelled.items():
            yield {"kind": "cancelled", "queue": name, "id": mid, "at": at}
        job = q.redrive_job
        if job is not None:
            yield {
                "kind": "redrive",
                "queue": name,
                "id": 0,
                **{k: job[k] for k in JOB_FIELDS},
                "state": job["state"],
                "ids": list(job["ids"]),
            }
    yield {"kind": "end"}


# ---- restore --------------------------------------------------------------------------------------


@overload
def _int(rec: Record, key: str) -> int: ...
@overload
def _int(rec: Record, key: str, *, optional: bool) -> int | None: ...
def _int(rec: Record, key: str, *, optional: bool = False) -> int | None:
    value = rec.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not -(2**63) <= value < 2**63:
        raise Invalid(f"backup record {rec.get('kind')!r}: {key} must be a 64-bit integer")
    return value


def _str(rec: Record, key: str, *, optional: bool = False) -> str | None:
    value = rec.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise Invalid(f"backup record {rec.get('kind')!r}: {key} must be a string")
    return value


def _b64(rec: Record, key: str) -> bytes:
    try:
        return base64.b64decode(_str(rec, key) or "", validate=True)
    except ValueError as err:
        raise Invalid(f"backup record {rec.get('kind')!r}: {key} is not base64") from err


def _payload(rec: Record) -> str | bytes:
    if "payload_base64" in rec:
        return _b64(rec, "payload_base64")
    payload = _str(rec, "payload_json")
    assert payload is not None
    return payload


def apply_records(engine: Any, records: list[Record], woke: set[str]) -> int:
    """Apply backup records to `engine`; returns how many were applied.

    A queue named in the backup must not exist yet (restore into a new group); messages, results
    and dedup keys must belong to a queue restored earlier in the same stream.
    """
    from .queue import QueueState  # the queue module imports this one's neighbours

    for rec in records:
        if not isinstance(rec, dict):
            raise Invalid("backup record must be an object")
        kind = rec.get("kind")
        if kind == "header":
            if rec.get("format") != FORMAT or rec.get("version") != VERSION:
                raise Invalid(f"not a {FORMAT} version {VERSION} stream")
            # New ids must never collide with restored ones.
            engine.seq = max(engine.seq, _int(rec, "seq") or 0)
        elif kind == "queue":
            name = check_queue_name(_str(rec, "name") or "")
            if name in engine.queues:
                raise Conflict(f"queue {name!r} already exists; restore into a new group")
            settings = rec.get("settings")
            if not isinstance(settings, dict):
                raise Invalid("backup record 'queue': settings must be an object")
            settings = dict(settings)
            if isinstance(settings.get("weights"), dict):
                settings["weights"] = {int(k): v for k, v in settings["weights"].items()}
            config = QueueConfig().with_changes(settings)
            q = QueueState(
                name, config, _b64(rec, "secret"), _int(rec, "created_at") or 0, engine.outbox(), engine.links
            )
            totals = rec.get("totals")
            if isinstance(totals, dict):
                q.totals.update({k: v for k, v in totals.items() if k in q.totals and isinstance(v, int)})
            engine.queues[name] = q
        elif kind in ("message", "acked", "dedup", "cancelled", "redrive"):
            name = _str(rec, "queue") or ""
            q = engine.queues.get(name)
            if q is None:
                raise Invalid(f"backup record {kind!r} names queue {name!r} before its queue record")
            _apply_to_queue(q, kind, rec, woke)
        elif kind == "end":
            pass
        else:
            raise Invalid(f"unknown backup record kind {kind!r}")
    return len(records)


def _apply_to_queue(q: Any, kind: str, rec: Record, woke: set[str]) -> None:
    mid = _int(rec, "id")
    assert mid is not None
    if kind == "acked":
        result: Any = _b64(rec, "result_base64") if "result_base64" in rec else rec.get("result")
        acked_at = _int(rec, "acked_at")
        assert acked_at is not None
        q.acked[mid] = (acked_at, _int(rec, "deliveries"), result)
        heapq.heappush(q.acked_purge, (acked_at + q.config.retention_ms, mid))
        return
    if kind == "dedup":
        key = _str(rec, "key")
        expires_at = _int(rec, "expires_at")
        assert key is not None and expires_at is not None
        q.dedup[key] = (mid, expires_at)
        heapq.heappush(q.dedup_purge, (expires_at, key))
        return
    if kind == "cancelled":
        at = _int(rec, "at")
        q.cancelled[mid] = at
        heapq.heappush(q.cancelled_purge, (at + q.config.retention_ms, mid))
        return
    if kind == "redrive":
        _apply_job(q, rec)
        return
    if mid in q.messages or mid in q.dead:
        raise Conflict(f"message {mid} appears twice in the backup of queue {q.name!r}")
    extra: dict[str, Any] = {}
    headers = rec.get("headers")
    if headers is not None:
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise Invalid("backup record 'message': headers must map strings to strings")
        extra["headers"] = headers
    for key in ("dedup_key", "last_error", "dead_reason"):
        text = _str(rec, key, optional=True)
        if text is not None:
            extra[key] = text
    expiry = _int(rec, "expires_at", optional=True)
    if expiry is not None:
        extra["expires_at"] = expiry
    deps = _keys(rec, "depends_on")
    if deps:
        extra["depends_on"] = tuple(deps)
    state = rec.get("state")
    due = _int(rec, "due", optional=True)
    group = _str(rec, "group") or "default"
    msg = Message(
        mid,
        _payload(rec),
        _int(rec, "priority"),
        group,
        READY,
        _int(rec, "deliveries"),
        None,
        None,
        _int(rec, "enqueued_at"),
        extra or None,
    )
    if state != "dead" and expiry is not None:
        heapq.heappush(q.expiries, (expiry, mid))
    waits_on = _keys(rec, "waits_on") if state == "waiting" else []
    if state == "dead":
        msg.state = DEAD
        msg.due = due
        q.dead[mid] = msg
        if due is not None:
            heapq.heappush(q.dead_purge, (due, mid))
    elif waits_on:
        q.messages[mid] = msg
        msg.state = WAITING
        msg.due = due
        msg.set_extra("waiting_for", len(waits_on))
        q.n_waiting += 1
        for dep in waits_on:
            q.links.wait(dep, (q.name, mid))
    elif state == "waiting":  # nothing left to wait for
        q.messages[mid] = msg
        if due is not None:
            q._delay(msg, due)
        else:
            q.ready.add(msg)
            woke.add(q.name)
    elif state == "delayed" and due is not None:
        q.messages[mid] = msg
        q._delay(msg, due)
    elif state in ("ready", "delayed"):
        q.messages[mid] = msg
        q.ready.add(msg)
        woke.add(q.name)
    else:
        raise Invalid(f"backup record 'message': unknown state {state!r}")


def _keys(rec: Record, field: str) -> list[tuple[str, int]]:
    """A list of [queue, id] pairs (depends_on, waits_on)."""
    value = rec.get(field)
    if value is None:
        return []
    if not isinstance(value, list) or not all(
        isinstance(k, list)
        and len(k) == 2
        and isinstance(k[0], str)
        and isinstance(k[1], int)
        and not isinstance(k[1], bool)
        for k in value
    ):
        raise Invalid(f"backup record 'message': {field} must be a list of [queue, id] pairs")
    return [(k[0], k[1]) for k in value]


def _apply_job(q: Any, rec: Record) -> None:
    job: dict[str, Any] = {k: _int(rec, k) for k in JOB_FIELDS}
    state = rec.get("state")
    if state not in JOB_STATES:
        raise Invalid(f"backup record 'redrive': state must be one of {', '.join(JOB_STATES)}")
    ids = rec.get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise Invalid("backup record 'redrive': ids must be a list of integers")
    if job["rate"] < 1 or not 0 <= job["done"] <= job["total"] or (state == "running" and len(ids) != job["total"]):
        raise Invalid("backup record 'redrive': rate, done, total and ids do not fit together")
    job["state"] = state
    job["ids"] = ids
    q.redrive_job = job
