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
    CANCEL,
    INT64_MAX,
    INT64_MIN,
    MAX_BATCH,
    MAX_DEPENDENCIES,
    MAX_DURATION_MS,
    MAX_PAYLOAD_BYTES,
    MAX_REDRIVE_IDS,
    MAX_TIME_MS,
    MAX_VISIBILITY_MS,
    MIN_TIME_MS,
    WEIGHTED,
    QueueConfig,
)
from .errors import Conflict, Full, Invalid, NotFound, TooLarge
from .links import ACKED, OUTCOME_TEXT, Links, message_status
from .message import (
    DEAD,
    DELAYED,
    DEPENDENCY_FAILED,
    EXPIRED,
    LEASED,
    MAX_DELIVERIES,
    READY,
    REJECTED,
    STATE_NAMES,
    WAITING,
    Delivery,
    Message,
    MessageInfo,
    info_of,
)
from .scheduler import ReadySet

MAX_DEQUEUE = MAX_BATCH
_MILLI = 1000  # a token bucket counts thousandths of a token: a rate of r per second adds r per ms
_GROUP_BUCKETS_KEPT = 1024  # past this many group buckets, full ones are dropped (absent means full)
_FAILED_STATUS = {"dead": "dead-lettered", "cancelled": "cancelled"}
_NO_TASK_FIELDS = (None, None, None)  # NewMessage's ttl_ms, expires_at_ms, depends_on left out
GROUP_MAX_LEN = 256
DEDUP_KEY_MAX_LEN = 256


def _job_status(job: dict[str, Any]) -> dict[str, Any]:
    return {
        "rate": job["rate"],
        "total": job["total"],
        "moved": job["moved"],
        "remaining": job["total"] - job["done"],
        "started_at": job["started_at"],
        "state": job["state"],
    }


def _redrive_due(job: dict[str, Any]) -> int:
    """When the next id of a running job is due: the least t with (t - start) * rate // 1000 > done."""
    return int(job["started_at"] + -(-(job["done"] + 1) * 1000 // job["rate"]))


def _refill(bucket: list[int], now: int, rate: int, size: int) -> None:
    level, at = bucket
    if now > at:
        bucket[0] = min(size, level + (now - at) * rate)
        bucket[1] = now
    elif level > size:  # the bucket shrank (a smaller burst was set)
        bucket[0] = size


def _token_at(bucket: list[int], rate: int) -> int:
    """When a bucket below one token holds one again."""
    return bucket[1] + -(-(_MILLI - bucket[0]) // rate)


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
                size += (len(key) if key.isascii() else len(key.encode())) + (
                    len(value) if value.isascii() else len(value.encode())
                )
    except UnicodeEncodeError:
        raise Invalid("payload and headers must be valid Unicode (no lone surrogates)") from None
    except (AttributeError, TypeError):
        raise Invalid("headers must map text to text") from None
    return size


def check_messages(name: str, config: QueueConfig | None, messages: Sequence[c.NewMessage]) -> bool:
    """Refuse messages no API could deliver or list, and payloads over the queue's limit.

    The engine runs this on apply; the service runs it before proposing, against its own copy of
    the queue's settings (`config` None: the queue is not known here yet), so that a refused
    message is not written to the log. True when a message has a ttl, an expiry or dependencies.
    """
    limit = MAX_PAYLOAD_BYTES if config is None else config.max_payload_bytes
    task_fields = False
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
        if m[7:] != _NO_TASK_FIELDS:  # one look for the three fields most messages leave out
            task_fields = True
            if m.ttl_ms is not None and not 1 <= m.ttl_ms <= MAX_DURATION_MS:
                raise Invalid(f"ttl must be more than 0 and at most {MAX_DURATION_MS // 1000} seconds")
            if m.expires_at_ms is not None and not MIN_TIME_MS <= m.expires_at_ms <= MAX_TIME_MS:
                raise Invalid("expires_at must be a time between years 0001 and 9999")
            if m.depends_on is not None:
                check_dependencies(i, m.depends_on)
    return task_fields


def check_dependencies(index: int, deps: Any) -> None:
    """The shape of one message's depends_on: (queue, id) pairs, or indexes of earlier batch items."""
    where = f"message {index}: " if index else ""
    if not isinstance(deps, (tuple, list)):
        raise Invalid(f"{where}depends_on must be a list")
    if len(deps) > MAX_DEPENDENCIES:
        raise Invalid(f"{where}depends_on names {len(deps)} messages; at most {MAX_DEPENDENCIES} are allowed")
    for dep in deps:
        if isinstance(dep, int) and not isinstance(dep, bool):
            if not 0 <= dep < index:
                raise Invalid(
                    f"{where}depends_on batch index {dep} must name an earlier item of the batch (0 to {index - 1})"
                    if index
                    else f"{where}the first item of a batch has no earlier item to depend on"
                )
        elif (
            isinstance(dep, (tuple, list))
            and len(dep) == 2
            and isinstance(dep[0], str)
            and isinstance(dep[1], int)
            and not isinstance(dep[1], bool)
        ):
            if not INT64_MIN <= dep[1] <= INT64_MAX:
                raise Invalid(f"{where}depends_on id must fit a 64-bit integer")
        else:
            raise Invalid(f"{where}each depends_on entry is a (queue, id) pair or a batch index")


class QueueState:
    def __init__(
        self,
        name: str,
        config: QueueConfig,
        secret: bytes,
        created_at: int,
        outbox: ArchiveOutbox | None = None,
        links: Links | None = None,
    ) -> None:
        self.name = name
        self.outbox = outbox  # the engine's archive outbox; used while config.archive is on
        self._init_later()
        # the engine's dependency index and dead-letter routes (a queue on its own gets its own)
        self.links: Links = links if links is not None else Links({name: self})
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
        self.totals = {
            "enqueued": 0,
            "dequeued": 0,
            "acked": 0,
            "nacked": 0,
            "expired": 0,
            "dead_lettered": 0,
            "released": 0,
        }

    def _init_later(self) -> None:
        """State added after the first builds, fresh; a snapshot of an older build gets these."""
        self.n_waiting = 0  # waiting for dependencies
        self.expiries: list[tuple[int, int]] = []  # (expires_at, id)
        self.bucket: list[int] | None = None  # [milli-tokens, at] of the queue's rate limit; None: full
        self.group_buckets: dict[str, list[int]] = {}  # group -> [milli-tokens, at]; absent: full
        self.throttled_until: int | None = None  # when a token returns while ready messages wait
        self.cancelled: dict[int, int] = {}  # id -> cancelled_at, kept like acked results (for dependents)
        self.cancelled_purge: list[tuple[int, int]] = []
        self.redrive_job: dict[str, Any] | None = None  # the paced redrive (see redrive())

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._init_later()
        self.__dict__.update(state)
        if "links" not in state:  # the engine puts its own in place
            self.links = Links({self.name: self})

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
            "waiting": self.n_waiting,
        }

    def backlog(self, now: int) -> int:
        """Work for consumers at `now`: ready + leased + delayed messages already due (what an
        autoscaler should count; ready alone would scale busy workers away). Messages waiting for
        their dependencies are not work yet."""
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
        tops = [
            h[0][0]
            for h in (
                self.delays,
                self.leases,
                self.dead_purge,
                self.acked_purge,
                self.dedup_purge,
                self.expiries,
                self.cancelled_purge,
            )
            if h
        ]
        if self.throttled_until is not None:
            tops.append(self.throttled_until)
        job = self.redrive_job
        if job is not None and job["state"] == "running":
            tops.append(_redrive_due(job))
        return min(tops) if tops else None

    # ---- time ---------------------------------------------------------------------------------

    def advance(self, now: int, woke: set[str]) -> None:
        """Apply everything due at `now`; adds this queue's name to `woke` if messages became ready."""
        expiries = self.expiries
        while expiries and expiries[0][0] <= now:
            at, mid = heapq.heappop(expiries)
            msg = self.messages.get(mid)
            # A leased message expires when its lease ends without an ack (see _lease_over).
            if msg is not None and msg.state != LEASED and msg.get_extra("expires_at") == at:
                self._unqueue(msg)
                self._dead_letter(msg, None, now, EXPIRED)
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
                self._release(msg, woke)
                if self._expired(msg, now):
                    self._dead_letter(msg, None, now, EXPIRED)
                elif self._exhausted(msg):
                    self._dead_letter(msg, "lease expired", now, MAX_DELIVERIES)
                else:
                    self._make_ready(msg)
                    woke.add(self.name)
        throttled = self.throttled_until
        if throttled is not None and throttled <= now:
            self.throttled_until = None
            if self.n_ready:
                woke.add(self.name)  # a token is back: a waiting long poll may take it
        job = self.redrive_job
        if job is not None and job["state"] == "running":
            self._redrive_step(job, now, woke)
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
        while self.cancelled_purge and self.cancelled_purge[0][0] <= now:
            at, mid = heapq.heappop(self.cancelled_purge)
            if self.cancelled.get(mid, -1) + self.config.retention_ms <= now:
                self.cancelled.pop(mid, None)
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

    def _unqueue(self, msg: Message) -> None:
        """Count a ready, delayed or waiting message out of its state (its heap entries go lazily)."""
        if msg.state == READY:
            self.ready.discard(msg)
        elif msg.state == DELAYED:
            self.n_delayed -= 1
        elif msg.state == WAITING:
            self.n_waiting -= 1

    @staticmethod
    def _expired(msg: Message, now: int) -> bool:
        extra = msg.extra
        if extra is None:
            return False
        at = extra.get("expires_at")
        return at is not None and at <= now

    def _lease(self, msg: Message, now: int, vt: int, seq: int) -> None:
        msg.state = LEASED
        msg.deliveries += 1
        msg.due = now + vt
        msg.token = self._token(msg.id, seq)
        self.n_leased += 1
        self.inflight_by_group[msg.group] = self.inflight_by_group.get(msg.group, 0) + 1
        heapq.heappush(self.leases, (msg.due, msg.id))

    def _release(self, msg: Message, woke: set[str] | None = None) -> None:
        """Leased -> (about to be) something else. A freed in-flight slot wakes a waiting long poll
        when a cap may have held ready messages back."""
        self.n_leased -= 1
        left = self.inflight_by_group[msg.group] - 1
        if left:
            self.inflight_by_group[msg.group] = left
        else:
            del self.inflight_by_group[msg.group]
        msg.token = None
        if woke is not None:
            cfg = self.config
            if (cfg.max_inflight is not None or cfg.group_max_inflight is not None) and self.n_ready:
                woke.add(self.name)

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

    def _dead_letter(self, msg: Message, error: str | None, now: int, reason: str) -> None:
        """Into the dead-letter list (or to the dead_letter_queue), or gone when the queue keeps
        none; the message's dependents hear of it."""
        del self.messages[msg.id]
        if error:
            msg.set_extra("last_error", error)
        msg.set_extra("dead_reason", reason)
        msg.set_extra("waiting_for", None)
        self._archive(msg, "dead", now)
        cfg = self.config
        links = self.links
        target = cfg.dead_letter_queue
        if target is not None and links is not None and target != self.name and target in links.queues:
            self.totals["dead_lettered"] += 1
            self._finished(msg.id, EXPIRED if reason == EXPIRED else "dead-lettered")
            links.route(self.name, target, msg, reason)
            return
        if not cfg.dead_letter:
            self._finished(msg.id, EXPIRED if reason == EXPIRED else "dropped")
            return
        self._finished(msg.id, EXPIRED if reason == EXPIRED else "dead-lettered")
        self.totals["dead_lettered"] += 1
        self.keep_dead(msg, now)

    def keep_dead(self, msg: Message, now: int) -> None:
        """Into this queue's dead-letter list, purged after dead_letter_retention."""
        msg.state = DEAD
        retention = self.config.dead_letter_retention_ms
        msg.due = None if retention is None else now + retention
        self.dead[msg.id] = msg
        if msg.due is not None:
            heapq.heappush(self.dead_purge, (msg.due, msg.id))

    def _finished(self, mid: int, outcome: str) -> None:
        links = self.links
        if links is not None and links.waiters:
            links.finished(self.name, mid, outcome)

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
        checked: list[tuple[Any, ...]] = []
        fresh = 0
        batch_keys: dict[str, int] = {}
        plain = not check_messages(self.name, cfg, cmd.messages) and cfg.message_ttl_ms is None
        for i, m in enumerate(cmd.messages):
            priority = cfg.default_priority if m.priority is None else m.priority
            if cfg.policy == WEIGHTED and priority not in cfg.weights:
                raise Invalid(
                    f"priority {priority} is not a class of weighted queue {self.name!r}: {sorted(cfg.weights)}"
                )
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
            expires = deps = None
            if dup is None:
                fresh += 1
                if not plain:
                    expires = self._expiry(i, m, now)
                    if m.depends_on:
                        deps = self._check_dependencies(i, m.depends_on, checked)
            checked.append((m, priority, sys.intern(group), dup, expires, deps))
        if cfg.max_length is not None and self.depth() + fresh > cfg.max_length:
            raise Full(
                f"queue {self.name!r} is full ({self.depth()} of max_length {cfg.max_length}); "
                f"{fresh} more would not fit"
            )
        out: list[tuple[int, bool]] = []
        for m, priority, group, dup, expires, deps in checked:
            if dup is not None:
                out.append((out[-1 - dup][0] if dup < 0 else dup, True))
                continue
            mid = next_id()
            extra: dict[str, Any] | None = None
            if m.headers or m.dedup_key is not None or expires is not None:
                extra = {}
                if m.headers:
                    extra["headers"] = m.headers
                if m.dedup_key is not None:
                    extra["dedup_key"] = m.dedup_key
                if expires is not None:
                    extra["expires_at"] = expires
            msg = Message(mid, m.payload, priority, group, READY, 0, None, None, now, extra)
            self.messages[mid] = msg
            self.totals["enqueued"] += 1
            if expires is not None:
                heapq.heappush(self.expiries, (expires, mid))
            at = max(now + (m.delay_ms or 0), m.deliver_at_ms or 0)
            if deps is not None:
                self._wait_for(msg, deps, out, at, now, woke)
            elif at > now:
                self._delay(msg, at)
            else:
                self.ready.add(msg)
                woke.add(self.name)
            if m.dedup_key is not None and cfg.dedup_window_ms > 0:
                dedup_until = now + cfg.dedup_window_ms
                self.dedup[m.dedup_key] = (mid, dedup_until)
                heapq.heappush(self.dedup_purge, (dedup_until, m.dedup_key))
            out.append((mid, False))
        return out

    def _expiry(self, index: int, m: c.NewMessage, now: int) -> int | None:
        """When a new message expires: the earlier of its ttl and expires_at, else the queue's
        message_ttl; refused when that is not after the command's time."""
        expires = None if m.ttl_ms is None else now + m.ttl_ms
        if m.expires_at_ms is not None:
            expires = m.expires_at_ms if expires is None else min(expires, m.expires_at_ms)
        if expires is None:
            ttl = self.config.message_ttl_ms
            return None if ttl is None else now + ttl
        if expires <= now:
            where = f"message {index}: " if index else ""
            raise Invalid(f"{where}expires_at is not in the future (the message would expire before it is queued)")
        return expires

    def _check_dependencies(self, index: int, deps: Any, checked: list[tuple[Any, ...]]) -> list[Any]:
        """depends_on resolved as far as it can be before anything changes: (queue, id) of a message
        that exists (NotFound otherwise), or the batch index of a new item of this batch."""
        out: list[Any] = []
        for dep in deps:
            if isinstance(dep, int):
                dup = checked[dep][3]  # a duplicate item stands for the message it repeats
                if dup is None:
                    out.append(dep)
                    continue
                if dup < 0:
                    out.append(-1 - dup)
                    continue
                key = (self.name, dup)
            else:
                key = (dep[0], dep[1])
            if self._dependency_status(key) is None:
                raise NotFound(
                    f"dependency {key[0]}/{key[1]} not found"
                    + (
                        ""
                        if key[0] == self.name or (self.links is not None and key[0] in self.links.queues)
                        else f": there is no queue {key[0]!r}"
                    )
                )
            out.append(key)
        return out

    def _dependency_status(self, key: tuple[str, int]) -> str | None:
        links = self.links
        if links is None or key[0] == self.name:
            return message_status(self, key[1])
        return links.status(key[0], key[1])

    def _wait_for(
        self, msg: Message, deps: list[Any], out: list[tuple[int, bool]], at: int, now: int, woke: set[str]
    ) -> None:
        """A new message with dependencies: waiting while any is unfinished, failed at once when one
        already failed, else queued as usual."""
        keys: dict[tuple[str, int], None] = {}
        for dep in deps:
            keys[(self.name, out[dep][0]) if isinstance(dep, int) else dep] = None
        pending = []
        failure = None
        for key in keys:
            status = self._dependency_status(key)
            if status == "live":
                pending.append(key)
            elif status != ACKED and failure is None:
                failure = f"dependency {key[0]}/{key[1]} " + OUTCOME_TEXT[_FAILED_STATUS.get(status or "", "dropped")]
        msg.set_extra("depends_on", tuple(keys))
        msg.state = WAITING
        msg.due = at if at > now else None  # its deliver-at, for when it stops waiting
        self.n_waiting += 1
        if failure is not None:
            self._dependency_failed(msg, failure, now)
        elif pending:
            msg.set_extra("waiting_for", len(pending))
            links = self.links
            assert links is not None
            me = (self.name, msg.id)
            for key in pending:
                links.wait(key, me)
        else:
            self._stop_waiting(msg, now, woke)

    def _stop_waiting(self, msg: Message, now: int, woke: set[str]) -> None:
        self.n_waiting -= 1
        msg.set_extra("waiting_for", None)
        at = msg.due
        if at is not None and at > now:
            self._delay(msg, at)
        else:
            self._make_ready(msg)
            woke.add(self.name)

    def _dependency_failed(self, msg: Message, why: str, now: int) -> None:
        """A dependency of this waiting message was dead-lettered, cancelled or lost: the message
        follows it to the dead letters, or is cancelled (per dependency_failure)."""
        self._unqueue(msg)
        msg.set_extra("waiting_for", None)
        if self.config.dependency_failure == CANCEL:
            del self.messages[msg.id]
            msg.set_extra("last_error", why)
            self._archive(msg, "cancelled", now)
            self._remember_cancel(msg.id, now)
            self._finished(msg.id, "cancelled")
        else:
            self._dead_letter(msg, why, now, DEPENDENCY_FAILED)

    def dependency_done(self, mid: int, dependency: tuple[str, int], outcome: str, now: int, woke: set[str]) -> None:
        """A message `mid` waits for has finished with `outcome` (acked, or a failure)."""
        msg = self.messages.get(mid)
        if msg is None or msg.state != WAITING:
            return  # it moved on already (cancelled, expired, failed through another dependency)
        if outcome != ACKED:
            self._dependency_failed(msg, f"dependency {dependency[0]}/{dependency[1]} {OUTCOME_TEXT[outcome]}", now)
            return
        left = msg.get_extra("waiting_for", 1) - 1
        if left > 0:
            msg.set_extra("waiting_for", left)
        else:
            self._stop_waiting(msg, now, woke)

    def _remember_cancel(self, mid: int, now: int) -> None:
        retention = self.config.retention_ms
        if retention > 0:
            self.cancelled[mid] = now
            heapq.heappush(self.cancelled_purge, (now + retention, mid))

    def dequeue(self, cmd: c.Dequeue, now: int, seq: int) -> list[Delivery]:
        if not 1 <= cmd.max <= MAX_DEQUEUE:
            raise Invalid(f"max must be between 1 and {MAX_DEQUEUE}")
        cfg = self.config
        vt = cfg.visibility_timeout_ms if cmd.visibility_timeout_ms is None else cmd.visibility_timeout_ms
        if not 1 <= vt <= MAX_VISIBILITY_MS:
            raise Invalid("visibility_timeout must be more than 0 and at most 12 hours")
        n = cmd.max
        if cfg.max_inflight is not None:
            n = min(n, cfg.max_inflight - self.n_leased)
        tokens = None
        if cfg.rate_limit is not None:
            tokens = self._queue_tokens(now)
            n = min(n, tokens)
        eligible = None
        cap = cfg.group_max_inflight if cfg.fair_groups else None
        group_rate = cfg.group_rate_limit if cfg.fair_groups else None
        starved: set[str] = set()  # groups held back by their rate limit
        if cap is not None or group_rate is not None:
            inflight = self.inflight_by_group

            def eligible(slot: str) -> bool:
                if cap is not None and inflight.get(slot, 0) >= cap:
                    return False
                if group_rate is not None and self._group_tokens(slot, group_rate, now) < 1:
                    starved.add(slot)
                    return False
                return True

        group_weights = cfg.group_weights if cfg.fair_groups and cfg.group_weights else None
        out = []
        weighted = cfg.policy == WEIGHTED
        for _ in range(n):
            if weighted:
                msg = self.ready.take_weighted(self.messages, cfg.weights, eligible, group_weights)
            else:
                msg = self.ready.take_strict(self.messages, eligible, group_weights)
            if msg is None:
                break
            self._lease(msg, now, vt, seq)
            self.totals["dequeued"] += 1
            if tokens is not None:
                self._spend(self.bucket, 1)
            if group_rate is not None:
                self._spend(self.group_buckets.setdefault(msg.group, [group_rate * _MILLI, now]), 1)
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
        if (tokens is not None or starved) and self.n_ready:
            self._throttle(now, starved, group_rate)
        return out

    # ---- rate limits: token buckets in thousandths of a token, refilled from command time -------

    def _queue_tokens(self, now: int) -> int:
        """Whole tokens in the queue's bucket at `now` (refilled first)."""
        cfg = self.config
        rate = cfg.rate_limit
        assert rate is not None
        size = (cfg.rate_burst or rate) * _MILLI
        bucket = self.bucket
        if bucket is None:
            bucket = self.bucket = [size, now]
        _refill(bucket, now, rate, size)
        return bucket[0] // _MILLI

    def _group_tokens(self, group: str, rate: int, now: int) -> int:
        bucket = self.group_buckets.get(group)
        if bucket is None:
            return rate
        _refill(bucket, now, rate, rate * _MILLI)
        return bucket[0] // _MILLI

    @staticmethod
    def _spend(bucket: list[int] | None, n: int) -> None:
        if bucket is not None:
            bucket[0] -= n * _MILLI

    def _throttle(self, now: int, starved: set[str], group_rate: int | None) -> None:
        """Ready messages were held back by a rate limit: note when a token returns, so that
        advance() wakes the queue's long polls then (next_deadline() includes it)."""
        cfg = self.config
        times = []
        bucket = self.bucket
        if cfg.rate_limit is not None and bucket is not None and bucket[0] < _MILLI:
            times.append(_token_at(bucket, cfg.rate_limit))
        if group_rate is not None:
            for group in starved:
                gb = self.group_buckets.get(group)
                if gb is not None and gb[0] < _MILLI:
                    times.append(_token_at(gb, group_rate))
            if len(self.group_buckets) > _GROUP_BUCKETS_KEPT:  # forget the full ones
                size = group_rate * _MILLI
                for group, gb in list(self.group_buckets.items()):
                    _refill(gb, now, group_rate, size)
                    if gb[0] >= size:
                        del self.group_buckets[group]
        if times:
            at = max(now + 1, min(times))
            if self.throttled_until is None or at < self.throttled_until:
                self.throttled_until = at

    def ack(self, item: c.AckItem, now: int, woke: set[str] | None = None) -> None:
        msg = self._leased(item.id, item.token)
        self._release(msg, woke)
        del self.messages[msg.id]
        self.totals["acked"] += 1
        if self.links.waiters:
            self._finished(msg.id, ACKED)
        self._archive(msg, "acked", now, item.result)
        if self.config.retention_ms > 0:
            self.acked[msg.id] = (now, msg.deliveries, item.result)
            heapq.heappush(self.acked_purge, (now + self.config.retention_ms, msg.id))

    def nack(self, cmd: c.Nack, now: int, woke: set[str]) -> dict[str, Any]:
        if cmd.delay_ms is not None and not 0 <= cmd.delay_ms <= MAX_DURATION_MS:
            raise Invalid(f"delay must be between 0 and {MAX_DURATION_MS // 1000} seconds")
        msg = self._leased(cmd.id, cmd.token)
        self._release(msg, woke)
        self.totals["nacked"] += 1
        if cmd.error is not None:
            msg.set_extra("last_error", cmd.error)
        if cmd.dead or self._exhausted(msg) or self._expired(msg, now):
            reason = REJECTED if cmd.dead else EXPIRED if self._expired(msg, now) else MAX_DELIVERIES
            self._dead_letter(msg, None, now, reason)
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

    def release(self, cmd: c.Release, woke: set[str], now: int = 0) -> None:
        """Leased -> ready, and the delivery it had is not counted (dead-lettered when it expired
        while leased)."""
        msg = self._leased(cmd.id, cmd.token)
        self._release(msg, woke)
        msg.deliveries -= 1
        self.totals["released"] = self.totals.get("released", 0) + 1  # absent in older snapshots
        if self._expired(msg, now):
            self._dead_letter(msg, None, now, EXPIRED)
            return
        self._make_ready(msg)
        woke.add(self.name)

    def set_priority(self, cmd: c.SetPriority, woke: set[str]) -> None:
        msg = self._queued(cmd.id)
        cfg = self.config
        if not INT64_MIN <= cmd.priority <= INT64_MAX:
            raise Invalid(f"priority must be between {INT64_MIN} and {INT64_MAX}")
        if cfg.policy == WEIGHTED and cmd.priority not in cfg.weights:
            raise Invalid(
                f"priority {cmd.priority} is not a class of weighted queue {self.name!r}: {sorted(cfg.weights)}"
            )
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
        self._unqueue(msg)
        del self.messages[msg.id]
        self._archive(msg, "cancelled", now)
        self._remember_cancel(msg.id, now)
        self._finished(msg.id, "cancelled")
        return STATE_NAMES[msg.state]

    def _queued(self, mid: int) -> Message:
        msg = self._live(mid, "redrive it first")
        if msg.state == LEASED:
            raise Conflict(f"message {mid} is leased by a consumer; wait for its ack, nack or expiry")
        return msg

    def redrive(self, cmd: c.Redrive, now: int, woke: set[str]) -> dict[str, Any]:
        if cmd.ids is not None and len(cmd.ids) > MAX_REDRIVE_IDS:
            raise Invalid(f"at most {MAX_REDRIVE_IDS} ids per redrive")
        ids = list(self.dead) if cmd.ids is None else list(dict.fromkeys(cmd.ids))
        if cmd.rate is not None:
            return {"job": self._start_redrive(ids, cmd.rate, now, woke)}
        moved, missing = [], []
        for mid in ids:
            if self._revive(mid):
                moved.append(mid)
            else:
                missing.append(mid)
        if moved:
            woke.add(self.name)
        return {"redriven": moved, "not_found": missing}

    def _revive(self, mid: int) -> bool:
        """A dead letter back to ready with a fresh delivery count and no expiry (it would die again
        at once); False when there is no such dead letter."""
        msg = self.dead.pop(mid, None)
        if msg is None:
            return False
        msg.deliveries = 0
        msg.due = None
        msg.set_extra("dead_reason", None)
        msg.set_extra("expires_at", None)
        self.messages[mid] = msg
        self._make_ready(msg)
        return True

    # ---- paced redrive: a job that moves dead letters back at `rate` per second of command time ---

    def _start_redrive(self, ids: list[int], rate: int, now: int, woke: set[str]) -> dict[str, Any]:
        if not isinstance(rate, int) or isinstance(rate, bool) or not 1 <= rate <= INT64_MAX:
            raise Invalid("redrive rate must be a whole number of messages per second, at least 1")
        job = self.redrive_job
        if job is not None and job["state"] == "running":
            raise Conflict(
                f"queue {self.name!r} is already redriving ({job['moved']} of {job['total']} moved); "
                "stop that job first"
            )
        # ids: what is left to move, in order; done: how many of the ids were taken (moved or gone)
        job = self.redrive_job = {
            "rate": rate,
            "total": len(ids),
            "moved": 0,
            "done": 0,
            "started_at": now,
            "state": "running",
            "ids": ids,
        }
        self._redrive_step(job, now, woke)
        return _job_status(job)

    def _redrive_step(self, job: dict[str, Any], now: int, woke: set[str]) -> None:
        """Move what the rate allows by `now`: the k-th id is taken at started_at + k/rate s."""
        due = min(job["total"], (now - job["started_at"]) * job["rate"] // 1000)
        ids = job["ids"]
        moved = False
        while job["done"] < due:
            mid = ids[job["done"]]
            job["done"] += 1
            if self._revive(mid):
                job["moved"] += 1
                moved = True
        if moved:
            woke.add(self.name)
        if job["done"] >= job["total"]:
            job["state"] = "done"
            job["ids"] = []

    def stop_redrive(self) -> dict[str, Any]:
        job = self.redrive_job
        if job is None:
            raise NotFound(f"queue {self.name!r} has no redrive job")
        if job["state"] == "running":
            job["state"] = "stopped"
            job["ids"] = []
        return _job_status(job)

    def redrive_status(self) -> dict[str, Any] | None:
        """The paced redrive job's progress (kept after it ends until the next one starts), or None."""
        job = self.redrive_job
        return None if job is None else _job_status(job)

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
                id=mid,
                queue=self.name,
                state="acked",
                priority=None,
                group=None,
                deliveries=deliveries,
                enqueued_at=None,
                available_at=None,
                lease_expires_at=None,
                last_error=None,
                result=result,
                headers=None,
                dedup_key=None,
                payload=None,
                acked_at=acked_at,
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

        group_weights = cfg.group_weights if cfg.fair_groups and cfg.group_weights else None
        out = []
        for _ in range(limit):
            if cfg.policy == WEIGHTED:
                msg = shadow.take_weighted(self.messages, cfg.weights, eligible, group_weights)
            else:
                msg = shadow.take_strict(self.messages, eligible, group_weights)
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
