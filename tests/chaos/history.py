"""The history of a chaos run and the checker of its safety properties.

Clients record every operation with wall-clock timestamps (all processes share the machine's
clock): when it was invoked, when it completed, and its outcome — `ok` (the server acknowledged it),
`fail` (it certainly did not happen: a 4xx answer, or the connection was never made) or `unknown`
(503 "outcome unknown", a timeout, a dropped connection: it may have committed).

Deliveries carry the server's own times: `lease_expires_at` is the engine's time of the dequeue
plus the visibility timeout the consumer asked for, so the engine time of the delivery itself is
`lease_expires_at - visibility_timeout`, exactly. The engine's time never goes backwards along the
log, so comparing one delivery's time with an earlier lease's expiry needs only a small margin.

Properties (`check`):
  lost          every acknowledged enqueue was delivered or is in the DLQ, and its final state is
                acked or dead; nothing is dead-lettered before `max_deliveries` deliveries
  double        no message is delivered while another lease on it is live (engine times, compared
                exactly), unless that lease was released by a nack that may have committed early
                enough for the message to be available again by then
  ack_undone    a message whose ack was acknowledged is never delivered again and stays acked
  invented      every delivered or dead-lettered message was enqueued, with that payload, and one
                dedup key never became two messages; a message ends acked only if a consumer acked it

Only one ack or nack per lease can take effect (the next one finds the token stale). So when one
attempt on a lease was acknowledged, the attempts on it with an unknown outcome did nothing: they
release nothing and ack nothing.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"


def iso_ms(text: str) -> int:
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def canonical(payload) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


@dataclass
class EnqueueOp:
    process: str
    key: str
    payload: str  # canonical JSON of what was sent
    node: str
    t_invoke: float
    t_complete: float | None = None
    outcome: str | None = None
    id: int | None = None
    duplicate: bool | None = None
    status: int | None = None


@dataclass
class Delivery:
    consumer: str
    node: str
    id: int
    payload: str  # canonical JSON of what was received
    token: str
    expires_ms: int
    vt_ms: int
    deliveries: int
    t_invoke: float
    t_recv: float

    @property
    def t_server_ms(self) -> int:
        """Engine time of this delivery."""
        return self.expires_ms - self.vt_ms


@dataclass
class LeaseOp:
    kind: str  # "ack" or "nack"
    consumer: str
    node: str
    id: int
    token: str
    t_invoke: float
    t_complete: float | None = None
    outcome: str | None = None
    status: int | None = None
    detail: str | None = None
    delay_ms: int = 0  # a nack's delay: the message is available again only this long after it


@dataclass
class Violation:
    property: str
    id: int | None
    detail: str


@dataclass
class FinalState:
    dlq: dict[int, str] = field(default_factory=dict)  # id -> canonical payload
    dlq_deliveries: dict[int, int] = field(default_factory=dict)  # id -> deliveries the DLQ reports
    status: dict[int, str | None] = field(default_factory=dict)  # id -> state, None when not found
    drained: bool = False


class History:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.enqueues: list[EnqueueOp] = []
        self.deliveries: list[Delivery] = []
        self.lease_ops: list[LeaseOp] = []
        self.dequeues = Counter()  # outcome -> count of dequeue requests
        self.unexpected: list[dict] = []  # answers no correct server gives (5xx other than 503, odd 4xx)
        self.faults: list[dict] = []

    # ---- recording --------------------------------------------------------------------------------

    def enqueue_invoked(self, process: str, key: str, payload, node: str) -> EnqueueOp:
        op = EnqueueOp(process, key, canonical(payload), node, time.time())
        with self.lock:
            self.enqueues.append(op)
        return op

    @staticmethod
    def complete(op, outcome: str, status: int | None = None, **fields) -> None:
        op.t_complete = time.time()
        op.outcome = outcome
        op.status = status
        for k, v in fields.items():
            setattr(op, k, v)

    def delivered(
        self, consumer: str, node: str, message: dict, vt_ms: int, t_invoke: float, t_recv: float
    ) -> Delivery:
        d = Delivery(
            consumer=consumer,
            node=node,
            id=message["id"],
            payload=canonical(message.get("payload")),
            token=message["lease_token"],
            expires_ms=iso_ms(message["lease_expires_at"]),
            vt_ms=vt_ms,
            deliveries=message["deliveries"],
            t_invoke=t_invoke,
            t_recv=t_recv,
        )
        with self.lock:
            self.deliveries.append(d)
        return d

    def lease_invoked(self, kind: str, consumer: str, node: str, d: Delivery, delay_ms: int = 0) -> LeaseOp:
        op = LeaseOp(kind, consumer, node, d.id, d.token, time.time(), delay_ms=delay_ms)
        with self.lock:
            self.lease_ops.append(op)
        return op

    def dequeue_outcome(self, outcome: str) -> None:
        with self.lock:
            self.dequeues[outcome] += 1

    def unexpected_answer(self, what: str, node: str, status: int, body: str) -> None:
        with self.lock:
            self.unexpected.append({"op": what, "node": node, "status": status, "body": body[:300], "t": time.time()})

    def fault(self, kind: str, target: str, t_start: float, t_end: float) -> None:
        with self.lock:
            self.faults.append({"kind": kind, "target": target, "t_start": t_start, "t_end": t_end})

    # ---- summaries --------------------------------------------------------------------------------

    def operation_counts(self) -> dict:
        enq = Counter(op.outcome for op in self.enqueues)
        acks = Counter(op.outcome for op in self.lease_ops if op.kind == "ack")
        nacks = Counter(op.outcome for op in self.lease_ops if op.kind == "nack")
        acked_ids = {op.id for op in self.enqueues if op.outcome == OK}
        return {
            "enqueue_attempts": dict(enq),
            "enqueue_keys": len({op.key for op in self.enqueues}),
            "enqueued_acknowledged_ids": len(acked_ids),
            "dequeue_requests": dict(self.dequeues),
            "deliveries": len(self.deliveries),
            "redeliveries": sum(1 for d in self.deliveries if d.deliveries > 1),
            "acks": dict(acks),
            "nacks": dict(nacks),
            "unexpected_answers": len(self.unexpected),
        }

    def dump(self, path: str) -> None:
        """Write the whole history as JSON lines (for a post-mortem of a failing run)."""
        with open(path, "w") as fh:
            for kind, items in (("enqueue", self.enqueues), ("delivery", self.deliveries), ("lease", self.lease_ops)):
                for item in items:
                    fh.write(json.dumps({"type": kind, **asdict(item)}) + "\n")
            for f in self.faults:
                fh.write(json.dumps({"type": "fault", **f}) + "\n")
            for u in self.unexpected:
                fh.write(json.dumps({"type": "unexpected", **u}) + "\n")


def effective_lease_ops(ops: list[LeaseOp]) -> list[LeaseOp]:
    """The attempts on one lease that may have taken effect (see the module docstring)."""
    done = [op for op in ops if op.outcome == OK]
    return done[:1] if done else [op for op in ops if op.outcome == UNKNOWN]


def check(
    history: History,
    final: FinalState,
    margin_ms: int = 100,
    retention_s: float = 3600.0,
    max_deliveries: int | None = None,
) -> list[Violation]:
    """Every violation of the four properties, given the history and the state read after draining.

    `margin_ms` only covers comparisons between the clients' wall clock and engine time (same
    machine); engine times are compared with each other exactly.
    """
    out: list[Violation] = []
    enqueues = history.enqueues
    deliveries = sorted(history.deliveries, key=lambda d: (d.id, d.t_server_ms))
    by_id: dict[int, list[Delivery]] = defaultdict(list)
    for d in deliveries:
        by_id[d.id].append(d)
    lease_ops: dict[tuple[int, str], list[LeaseOp]] = defaultdict(list)
    for op in history.lease_ops:
        lease_ops[(op.id, op.token)].append(op)
    effective = {lease: effective_lease_ops(ops) for lease, ops in lease_ops.items()}
    acked_by_someone = {lease[0] for lease, ops in effective.items() if any(op.kind == "ack" for op in ops)}

    # ---- invented: payloads come from an enqueue, one key is one message ------------------------------
    sent: dict[str, str] = {}  # dedup key -> payload sent under it
    for op in enqueues:
        sent[op.key] = op.payload
    key_ids: dict[str, set[int]] = defaultdict(set)
    for op in enqueues:
        if op.outcome == OK:
            key_ids[op.key].add(op.id)
    id_payload: dict[int, str] = {}
    seen_items = [(d.id, d.payload, f"delivery to {d.consumer} at {d.t_server_ms}") for d in deliveries]
    seen_items += [(mid, payload, "dead-letter list") for mid, payload in final.dlq.items()]
    for mid, payload, where in seen_items:
        try:
            key = json.loads(payload).get("key")
        except (ValueError, AttributeError):
            key = None
        if key is None or key not in sent:
            out.append(Violation("invented", mid, f"{where}: payload {payload[:120]} was never enqueued"))
            continue
        if sent[key] != payload:
            out.append(
                Violation("invented", mid, f"{where}: payload {payload[:120]} differs from the one sent under {key}")
            )
        if mid in id_payload and id_payload[mid] != payload:
            out.append(
                Violation("invented", mid, f"{where}: payload changed from {id_payload[mid][:80]} to {payload[:80]}")
            )
        id_payload.setdefault(mid, payload)
        key_ids[key].add(mid)
    for key, ids in key_ids.items():
        if len(ids) > 1:
            out.append(Violation("invented", min(ids), f"dedup key {key} became several messages: {sorted(ids)}"))
    for mid, state in sorted(final.status.items()):
        if state == "acked" and mid not in acked_by_someone:
            out.append(Violation("invented", mid, "ends acked, but no consumer's ack of it can have taken effect"))

    # ---- lost: acknowledged enqueues end delivered (and acked) or dead ------------------------------
    acked_enqueue_ids = {op.id for op in enqueues if op.outcome == OK}
    for mid in sorted(acked_enqueue_ids):
        if mid not in by_id and mid not in final.dlq:
            out.append(Violation("lost", mid, "acknowledged enqueue never delivered and not in the DLQ"))
        state = final.status.get(mid, "unchecked")
        if state is None:
            out.append(Violation("lost", mid, "acknowledged enqueue is unknown to the leader at the end (404)"))
        elif state not in ("acked", "dead", "unchecked") and final.drained:
            out.append(Violation("lost", mid, f"still {state} after the queue was drained"))
    if max_deliveries:
        history_complete = history.dequeues.get(UNKNOWN, 0) == 0  # every delivery was recorded
        for mid in sorted(final.dlq):
            reported = final.dlq_deliveries.get(mid)
            seen = len({d.token for d in by_id.get(mid, [])})
            if reported is not None and reported < max_deliveries:
                out.append(
                    Violation(
                        "lost", mid, f"dead-lettered after {reported} deliveries (max_deliveries {max_deliveries})"
                    )
                )
            elif history_complete and seen < max_deliveries:
                out.append(
                    Violation(
                        "lost",
                        mid,
                        f"dead-lettered after {seen} recorded deliveries "
                        f"(max_deliveries {max_deliveries}, no dequeue outcome unknown)",
                    )
                )

    # ---- double: a second delivery while an earlier lease is live ------------------------------------
    for mid, ds in by_id.items():
        for j in range(1, len(ds)):
            later = ds[j]
            for earlier in ds[:j]:
                if later.t_server_ms >= earlier.expires_ms:
                    continue  # both engine times: exact (a lease that expires at t may go again at t)
                if (
                    later.token == earlier.token
                    and later.consumer == earlier.consumer
                    and later.t_recv == earlier.t_recv
                ):
                    continue  # the same record
                ops = effective.get((mid, earlier.token), [])
                released = [
                    op
                    for op in ops
                    if op.kind == "nack" and op.t_invoke * 1000 + op.delay_ms <= later.t_server_ms + margin_ms
                ]
                if released:
                    continue  # the nack may have committed and the delay passed by then
                acked = [op for op in ops if op.kind == "ack" and op.outcome == OK]
                if acked and later.t_server_ms > acked[0].t_complete * 1000 + margin_ms:
                    continue  # reported as ack_undone below
                out.append(
                    Violation(
                        "double",
                        mid,
                        f"delivered to {later.consumer} via {later.node} at engine time {later.t_server_ms} "
                        f"(token {later.token}, delivery #{later.deliveries}) while the lease of {earlier.consumer} "
                        f"via {earlier.node} (token {earlier.token}, delivery #{earlier.deliveries}, granted "
                        f"{earlier.t_server_ms}) was live until {earlier.expires_ms}",
                    )
                )

    # ---- ack_undone: nothing comes back after an acknowledged ack ------------------------------------
    run_end = time.time()
    for op in history.lease_ops:
        if op.kind != "ack" or op.outcome != OK:
            continue
        for d in by_id.get(op.id, []):
            if d.token != op.token and d.t_server_ms > op.t_complete * 1000 + margin_ms:
                out.append(
                    Violation(
                        "ack_undone",
                        op.id,
                        f"ack of token {op.token} by {op.consumer} acknowledged at {op.t_complete:.3f}, yet delivered "
                        f"again to {d.consumer} via {d.node} at engine time {d.t_server_ms} (token {d.token})",
                    )
                )
        state = final.status.get(op.id, "unchecked")
        aged_out = run_end - op.t_complete > retention_s
        if state not in ("acked", "unchecked") and not (state is None and aged_out):
            out.append(
                Violation("ack_undone", op.id, f"ack acknowledged at {op.t_complete:.3f} but final state is {state}")
            )
    return out


def summarize(violations: list[Violation], limit: int = 20) -> dict:
    counts = Counter(v.property for v in violations)
    return {
        "total": len(violations),
        "by_property": {p: counts.get(p, 0) for p in ("lost", "double", "ack_undone", "invented")},
        "examples": [asdict(v) for v in violations[:limit]],
    }
