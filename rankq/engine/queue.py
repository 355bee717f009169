"""One named queue: its messages, leases, delays, dead letters and retained results.

Every method takes the command time `now` (ms) from the caller and never reads a clock. Deadlines
(delays, lease expiry, retention) sit in min-heaps of (time, key) that are cleaned lazily: an entry
whose message has moved on is skipped when it reaches the top.
"""

from __future__ import annotations

import hashlib
import heapq
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import commands as c
from .archive import ArchiveOutbox
from .config import (
    INT64_MAX,
    INT64_MIN,
    MAX_BATCH,
    MAX_DURATION_MS,
    MAX_PAYLOAD_BYTES,
    MAX_TIME_MS,
    MAX_VISIBILITY_MS,
    MIN_TIME_MS,
    WEIGHTED,
    QueueConfig,
)
from .errors import Conflict, Full, Invalid, NotFound, TooLarge
from .message import (
    DEAD,
    DELAYED,
    LEASED,
    READY,
    Delivery,
    Message,
    MessageInfo,
    info_of,
)
from .scheduler import ReadySet

MAX_DEQUEUE = MAX_BATCH
GROUP_MAX_LEN = 256
DEDUP_KEY_MAX_LEN = 256


def message_size(m: c.NewMessage) -> int:
    """Bytes a message counts against max_payload_bytes: its payload and its headers, as UTF-8.

    Text that has no UTF-8 form (a lone surrogate) is refused here: it could never be delivered.
    """
    payload = m.payload
    try:
        # isascii() reads a flag CPython keeps on every str: ASCII text is counted without encoding.
        size = len(payload) if isinstance(payload, bytes) or payload.isascii() else len(payload.encode())
        if m.headers:
            for key, value in m.headers.items():
                size += (len(key) if key.isascii() else len(key.encode())) + (len(value) if value.isascii() else len(value.encode()))
    except UnicodeEncodeError:
        raise Invalid("payload and headers must be valid Unicode (no lone surrogates)") from None
    except (AttributeError, TypeError):
        raise Invalid("headers must map text to text") from None
    return size


def check_messages(name: str, config: QueueConfig | None, messages: Sequence[c.NewMessage]) -> None:
    """Refuse messages no API could deliver or list, and payloads over the queue's limit.

    The engine runs this on apply; the service runs it before proposing, against its own copy of
    the queue's settings (`config` None: the queue is not known here yet), so that a refused
    message is not written to the log.
    """
    limit = MAX_PAYLOAD_BYTES if config is None else config.max_payload_bytes
    for i, m in enumerate(messages):
        size = message_size(m)
        if size > limit:
            where = f"message {i}: " if len(messages) > 1 else ""
            raise TooLarge(f"{where}payload and headers are {size} bytes; queue {name!r} allows {limit}")
        if m.priority is not None and not INT64_MIN <= m.priority <= INT64_MAX:
            raise Invalid(f"priority must be between {INT64_MIN} and {INT64_MAX}")
        if m.delay_ms is not None and not 0 <= m.delay_ms <= MAX_DURATION_MS:
            raise Invalid(f"delay must be between 0 and {MAX_DURATION_MS // 1000} seconds")
        if m.deliver_at_ms is not None and not MIN_TIME_MS <= m.deliver_at_ms <= MAX_TIME_MS:
            raise Invalid("deliver_at must be a time between years 0001 and 9999")


class QueueState:
    def __init__(self, name: str, config: QueueConfig, secret: bytes, created_at: int,
                 outbox: ArchiveOutbox | None = None) -> None:
        self.name = name
        self.outbox = outbox  # the engine's archive outbox; used while config.archive is on
        self.config = config
        self.secret = secret
        self.created_at = created_at
        self.messages: dict[int, Message] = {}  # ready, delayed and leased
        self.ready = ReadySet(config.fair_groups)
        self.n_delayed = 0
        self.n_leased = 0
        self.delays: list[tuple[int, int]] = []  # (deliver_at, id)
        self.leases: list[tuple[int, int]] = []  # (expires_at, id)
        self.inflight_by_group: dict[str, int] = {}
        self.dead: dict[int, Message] = {}
        self.dead_purge: list[tuple[int, int]] = []  # (purge_at, id)
        self.acked: dict[int, tuple[int, int, Any]] = {}  # id -> (acked_at, deliveries, result)
        self.acked_purge: list[tuple[int, int]] = []
        self.dedup: dict[str, tuple[int, int]] = {}  # key -> (id, expires_at)
        self.dedup_purge: list[tuple[int, str]] = []
        self.totals = {"enqueued": 0, "dequeued": 0, "acked": 0, "nacked": 0, "expired": 0, "dead_lettered": 0, "released": 0}

    # ---- counts -------------------------------------------------------------------------------

    @property
    def n_ready(self) -> int:
        return len(self.ready)

    def depth(self) -> int:
        return len(self.messages)

    def counts(self) -> dict[str, int]:
        return {
            "ready": self.n_ready,
            "delayed": self.n_delayed,
            "leased": self.n_leased,
            "dead": len(self.dead),
            "acked_retained": len(self.acked),
            "waiting": 0,
        }

    def backlog(self, now: int) -> int:
        """Work for consumers at `now`: ready + leased + delayed messages already due (what an
        autoscaler should count; ready alone would scale busy workers away)."""
        due = 0
        heap = self.delays
        stack = [0] if heap else []
        while stack:  # only the heap's top part holds entries due at `now`
            i = stack.pop()
            at, mid = heap[i]
            if at > now:
                continue
            msg = self.messages.get(mid)
            if msg is not None and msg.state == DELAYED and msg.due == at:
                due += 1
            stack.extend(j for j in (2 * i + 1, 2 * i + 2) if j < len(heap))
        return self.n_ready + self.n_leased + due

    def next_deadline(self) -> int | None:
        """The earliest time at which a Tick would change something here."""
        tops = [h[0][0] for h in (self.delays, self.leases, self.dead_purge, self.acked_purge, self.dedup_purge) if h]
        return min(tops) if tops else None

    # ---- time ---------------------------------------------------------------------------------

    def advance(self, now: int, woke: set[str]) -> None:
        """Apply everything due at `now`; adds this queue's name to `woke` if messages became ready."""
        delays = self.delays
        while delays and delays[0][0] <= now:
            at, mid = heapq.heappop(delays)
            msg = self.messages.get(mid)
            if msg is not None and msg.state == DELAYED and msg.due == at:
                self.n_delayed -= 1
                self._make_ready(msg)
                woke.add(self.name)
        leases = self.leases
        while leases and leases[0][0] <= now:
            at, mid = heapq.heappop(leases)
            msg = self.messages.get(mid)
            if msg is not None and msg.state == LEASED and msg.due == at:
                self.totals["expired"] += 1
                self._release(msg)
                if self._exhausted(msg):
                    self._dead_letter(msg, "lease expired", now)
                else:
                    self._make_ready(msg)
                    woke.add(self.name)
        self._purge(now)

    def _purge(self, now: int) -> None:
        while self.dead_purge and self.dead_purge[0][0] <= now:
            at, mid = heapq.heappop(self.dead_purge)
            msg = self.dead.get(mid)
            if msg is not None and msg.due == at:
                del self.dead[mid]
        while self.acked_purge and self.acked_purge[0][0] <= now:
            at, mid = heapq.heappop(self.acked_purge)
            rec = self.acked.get(mid)
            if rec is not None and rec[0] + self.config.retention_ms <= now:
                del self.acked[mid]
            elif rec is not None:  # retention was raised since: look again later
                heapq.heappush(self.acked_purge, (rec[0] + self.config.retention_ms, mid))
        while self.dedup_purge and self.dedup_purge[0][0] <= now:
            at, key = heapq.heappop(self.dedup_purge)
            dedup = self.dedup.get(key)
            if dedup is not None and dedup[1] == at:
                del self.dedup[key]

    # ---- transitions --------------------------------------------------------------------------

    def _make_ready(self, msg: Message) -> None:
        msg.state = READY
        msg.due = None
        self.ready.add(msg)

    def _lease(self, msg: Message, now: int, vt: int, seq: int) -> None:
        msg.state = LEASED
        msg.deliveries += 1
        msg.due = now + vt
        msg.token = self._token(msg.id, seq)
        self.n_leased += 1
        self.inflight_by_group[msg.group] = self.inflight_by_group.get(msg.group, 0) + 1
        heapq.heappush(self.leases, (msg.due, msg.id))

    def _release(self, msg: Message) -> None:
        """Leased -> (about to be) something else."""
        self.n_leased -= 1
        left = self.inflight_by_group[msg.group] - 1
        if left:
            self.inflight_by_group[msg.group] = left
        else:
            del self.inflight_by_group[msg.group]
        msg.token = None

    def _delay(self, msg: Message, at: int) -> None:
        msg.state = DELAYED
        msg.due = at
        self.n_delayed += 1
        heapq.heappush(self.delays, (at, msg.id))

    def _exhausted(self, msg: Message) -> bool:
        limit = self.config.max_deliveries
        return limit > 0 and msg.deliveries >= limit

    def _archive(self, msg: Message, state: str, now: int, result: Any = None) -> None:
        if self.config.archive:
            outbox = getattr(self, "outbox", None)  # queues from snapshots of earlier builds have none
            if outbox is not None:
                outbox.add(self.name, msg, state, now, result)

    def _dead_letter(self, msg: Message, error: str | None, now: int) -> None:
        """Out of deliveries: into the dead-letter list, or gone when the queue keeps none."""
        del self.messages[msg.id]
        if error:
            msg.set_extra("last_error", error)
        self._archive(msg, "dead", now)
        if not self.config.dead_letter:
            return
        self.totals["dead_lettered"] += 1
        msg.state = DEAD
        retention = self.config.dead_letter_retention_ms
        msg.due = None if retention is None else now + retention
        self.dead[msg.id] = msg
        if msg.due is not None:
            heapq.heappush(self.dead_purge, (msg.due, msg.id))

    def _token(self, mid: int, seq: int) -> str:
        return hashlib.blake2b(b"%d:%d" % (mid, seq), key=self.secret, digest_size=12).hexdigest()

    def _live(self, mid: int, if_dead: str) -> Message:
        """A ready, delayed or leased message, or the error that says where it went."""
        msg = self.messages.get(mid)
        if msg is None:
            if mid in self.acked:
                raise Conflict(f"message {mid} was already acked")
            if mid in self.dead:
                raise Conflict(f"message {mid} is dead-lettered; {if_dead}")
            raise NotFound(f"message {mid} not found in queue {self.name!r}")
        return msg

    def _leased(self, mid: int, token: str) -> Message:
        msg = self._live(mid, "its lease is gone")
        if msg.state != LEASED:
            raise Conflict(f"message {mid} is not leased (its lease expired or was released)")
        if msg.token != token:
            raise Conflict(f"lease token for message {mid} is stale or wrong")
        return msg

    # ---- commands -----------------------------------------------------------------------------

    def enqueue(self, cmd: c.Enqueue, now: int, next_id: Callable[[], int], woke: set[str]) -> list[tuple[int, bool]]:
        cfg = self.config
        checked = []
        fresh = 0
        batch_keys: dict[str, int] = {}
        check_messages(self.name, cfg, cmd.messages)
        for i, m in enumerate(cmd.messages):
            priority = cfg.default_priority if m.priority is None else m.priority
            if cfg.policy == WEIGHTED and priority not in cfg.weights:
                raise Invalid(f"priority {priority} is not a class of weighted queue {self.name!r}: {sorted(cfg.weights)}")
            group = m.group or "default"
            if len(group) > GROUP_MAX_LEN:
                raise Invalid(f"group is longer than {GROUP_MAX_LEN} characters")
            if m.dedup_key is not None and len(m.dedup_key) > DEDUP_KEY_MAX_LEN:
                raise Invalid(f"dedup_key is longer than {DEDUP_KEY_MAX_LEN} characters")
            dup = None
            if m.dedup_key is not None:
                rec = self.dedup.get(m.dedup_key)
                if rec is not None and rec[1] > now:
                    dup = rec[0]
                elif m.dedup_key in batch_keys:
                    dup = -1 - batch_keys[m.dedup_key]  # refers to an earlier item of this batch
                else:
                    batch_keys[m.dedup_key] = i
            if dup is None:
                fresh += 1
            checked.append((m, priority, sys.intern(group), dup))
        if cfg.max_length is not None and self.depth() + fresh > cfg.max_length:
            raise Full(
                f"queue {self.name!r} is full ({self.depth()} of max_length {cfg.max_length}); "
                f"{fresh} more would not fit"
            )
        out: list[tuple[int, bool]] = []
        for m, priority, group, dup in checked:
            if dup is not None:
                out.append((out[-1 - dup][0] if dup < 0 else dup, True))
                continue
            mid = next_id()
            extra: dict[str, Any] | None = None
            if m.headers or m.dedup_key is not None:
                extra = {}
                if m.headers:
                    extra["headers"] = m.headers
                if m.dedup_key is not None:
                    extra["dedup_key"] = m.dedup_key
            msg = Message(mid, m.payload, priority, group, READY, 0, None, None, now, extra)
            self.messages[mid] = msg
            self.totals["enqueued"] += 1
            at = max(now + (m.delay_ms or 0), m.deliver_at_ms or 0)
            if at > now:
                self._delay(msg, at)
            else:
                self.ready.add(msg)
                woke.add(self.name)
            if m.dedup_key is not None and cfg.dedup_window_ms > 0:
                expires = now + cfg.dedup_window_ms
                self.dedup[m.dedup_key] = (mid, expires)
                heapq.heappush(self.dedup_purge, (expires, m.dedup_key))
            out.append((mid, False))
        return out

    def dequeue(self, cmd: c.Dequeue, now: int, seq: int) -> list[Delivery]:
        if not 1 <= cmd.max <= MAX_DEQUEUE:
            raise Invalid(f"max must be between 1 and {MAX_DEQUEUE}")
        cfg = self.config
        vt = cfg.visibility_timeout_ms if cmd.visibility_timeout_ms is None else cmd.visibility_timeout_ms
        if not 1 <= vt <= MAX_VISIBILITY_MS:
            raise Invalid("visibility_timeout must be more than 0 and at most 12 hours")
        eligible = None
        cap = cfg.group_max_inflight
        if cfg.fair_groups and cap is not None:
            inflight = self.inflight_by_group

            def eligible(slot: str) -> bool:
                return inflight.get(slot, 0) < cap

        out = []
        weighted = cfg.policy == WEIGHTED
        for _ in range(cmd.max):
            if weighted:
                msg = self.ready.take_weighted(self.messages, cfg.weights, eligible)
            else:
                msg = self.ready.take_strict(self.messages, eligible)
            if msg is None:
                break
            self._lease(msg, now, vt, seq)
            self.totals["dequeued"] += 1
            out.append(
                Delivery(
                    id=msg.id,
                    payload=msg.payload,
                    priority=msg.priority,
                    group=msg.group,
                    deliveries=msg.deliveries,
                    lease_token=msg.token,
                    lease_expires_at=msg.due,
                    enqueued_at=msg.enqueued_at,
                    headers=msg.get_extra("headers"),
                )
            )
        return out

    def ack(self, item: c.AckItem, now: int) -> None:
        msg = self._leased(item.id, item.token)
        self._release(msg)
        del self.messages[msg.id]
        self.totals["acked"] += 1
        self._archive(msg, "acked", now, item.result)
        if self.config.retention_ms > 0:
            self.acked[msg.id] = (now, msg.deliveries, item.result)
            heapq.heappush(self.acked_purge, (now + self.config.retention_ms, msg.id))

    def nack(self, cmd: c.Nack, now: int, woke: set[str]) -> dict[str, Any]:
        if cmd.delay_ms is not None and not 0 <= cmd.delay_ms <= MAX_DURATION_MS:
            raise Invalid(f"delay must be between 0 and {MAX_DURATION_MS // 1000} seconds")
        msg = self._leased(cmd.id, cmd.token)
        self._release(msg)
        self.totals["nacked"] += 1
        if cmd.error is not None:
            msg.set_extra("last_error", cmd.error)
        if cmd.dead or self._exhausted(msg):
            self._dead_letter(msg, None, now)
            return {"state": "dead", "available_at": None}
        if cmd.delay_ms is None:
            cfg = self.config
            backoff = min(cfg.retry_max_ms, cfg.retry_base_ms * (1 << min(msg.deliveries - 1, 40)))
            delay = int(backoff * (0.5 + 0.5 * cmd.jitter))  # "equal jitter"
        else:
            delay = cmd.delay_ms
        if delay > 0:
            self._delay(msg, now + delay)
            return {"state": "delayed", "available_at": msg.due}
        self._make_ready(msg)
        woke.add(self.name)
        return {"state": "ready", "available_at": None}

    def extend(self, cmd: c.Extend, now: int) -> int:
        msg = self._leased(cmd.id, cmd.token)
        vt: int = self.config.visibility_timeout_ms if cmd.visibility_timeout_ms is None else cmd.visibility_timeout_ms
        if not 1 <= vt <= MAX_VISIBILITY_MS:
            raise Invalid("visibility_timeout must be more than 0 and at most 12 hours")
        due = msg.due = now + vt
        heapq.heappush(self.leases, (due, msg.id))
        return due

    def release(self, cmd: c.Release, woke: set[str]) -> None:
        """Leased -> ready, and the delivery it had is not counted."""
        msg = self._leased(cmd.id, cmd.token)
        self._release(msg)
        msg.deliveries -= 1
        self.totals["released"] = self.totals.get("released", 0) + 1  # absent in older snapshots
        self._make_ready(msg)
        woke.add(self.name)

    def set_priority(self, cmd: c.SetPriority, woke: set[str]) -> None:
        msg = self._queued(cmd.id)
        cfg = self.config
        if not INT64_MIN <= cmd.priority <= INT64_MAX:
            raise Invalid(f"priority must be between {INT64_MIN} and {INT64_MAX}")
        if cfg.policy == WEIGHTED and cmd.priority not in cfg.weights:
            raise Invalid(f"priority {cmd.priority} is not a class of weighted queue {self.name!r}: {sorted(cfg.weights)}")
        if msg.priority == cmd.priority:
            return
        if msg.state == READY:
            self.ready.discard(msg)
            msg.priority = cmd.priority
            self.ready.add(msg)
            woke.add(self.name)
        else:
            msg.priority = cmd.priority

    def cancel(self, cmd: c.Cancel, now: int = 0) -> str:
        dead = self.dead.pop(cmd.id, None)
        if dead is not None:
            return "dead"  # archived when it was dead-lettered
        msg = self._queued(cmd.id)
        if msg.state == READY:
            self.ready.discard(msg)
        else:
            self.n_delayed -= 1
        del self.messages[msg.id]
        self._archive(msg, "cancelled", now)
        return "ready" if msg.state == READY else "delayed"

    def _queued(self, mid: int) -> Message:
        msg = self._live(mid, "redrive it first")
        if msg.state == LEASED:
            raise Conflict(f"message {mid} is leased by a consumer; wait for its ack, nack or expiry")
        return msg

    def redrive(self, cmd: c.Redrive, woke: set[str]) -> dict[str, Any]:
        ids = list(self.dead) if cmd.ids is None else list(dict.fromkeys(cmd.ids))
        moved, missing = [], []
        for mid in ids:
            msg = self.dead.pop(mid, None)
            if msg is None:
                missing.append(mid)
                continue
            msg.deliveries = 0
            msg.due = None
            self.messages[mid] = msg
            self._make_ready(msg)
            moved.append(mid)
        if moved:
            woke.add(self.name)
        return {"redriven": moved, "not_found": missing}

    def stop_redrive(self) -> dict[str, Any]:
        raise NotFound(f"queue {self.name!r} has no redrive job")

    def redrive_status(self) -> dict[str, Any] | None:
        """The paced redrive job's progress, or None when there has been none."""
        return None

    def update(self, new: QueueConfig) -> None:
        old = self.config
        self.config = new
        if new.fair_groups != old.fair_groups:
            ready = [m for m in self.messages.values() if m.state == READY]
            self.ready = self.ready.rebuilt(new.fair_groups, ready)

    # ---- reads --------------------------------------------------------------------------------

    def info(self, mid: int) -> MessageInfo:
        msg = self.messages.get(mid) or self.dead.get(mid)
        if msg is not None:
            return info_of(self.name, msg)
        rec = self.acked.get(mid)
        if rec is not None:
            acked_at, deliveries, result = rec
            return MessageInfo(
                id=mid, queue=self.name, state="acked", priority=None, group=None,
                deliveries=deliveries, enqueued_at=None, available_at=None,
                lease_expires_at=None, last_error=None, result=result, headers=None,
                dedup_key=None, payload=None, acked_at=acked_at,
            )
        raise NotFound(f"message {mid} not found in queue {self.name!r}")

    def peek(self, limit: int) -> list[MessageInfo]:
        """The next `limit` ready messages in the order a dequeue would lease them, leasing nothing.

        Runs the real selection on a shadow of the ready set, counting each message as if it were
        leased (so per-group caps apply as they would)."""
        if not 1 <= limit <= MAX_DEQUEUE:
            raise Invalid(f"limit must be between 1 and {MAX_DEQUEUE}")
        cfg = self.config
        shadow = self.ready.shadow(self.messages, limit)
        inflight = dict(self.inflight_by_group)
        cap = cfg.group_max_inflight
        eligible = None
        if cfg.fair_groups and cap is not None:
            def eligible(slot: str) -> bool:
                return inflight.get(slot, 0) < cap
        out = []
        for _ in range(limit):
            if cfg.policy == WEIGHTED:
                msg = shadow.take_weighted(self.messages, cfg.weights, eligible)
            else:
                msg = shadow.take_strict(self.messages, eligible)
            if msg is None:
                break
            inflight[msg.group] = inflight.get(msg.group, 0) + 1
            out.append(info_of(self.name, msg))
        return out

    def oldest_ready_at(self) -> int | None:
        """When the longest-waiting ready message was enqueued (ms), or None."""
        mid = self.ready.oldest_id(self.messages)
        return None if mid is None else self.messages[mid].enqueued_at

    def dead_letters(self, after: int | None, limit: int) -> list[MessageInfo]:
        out = []
        for mid, msg in self.dead.items():
            if after is not None and mid <= after:
                continue
            out.append(info_of(self.name, msg))
            if len(out) >= limit:
                break
        return out
