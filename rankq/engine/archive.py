"""The archive outbox: finished messages waiting to be copied to long-term storage (PostgreSQL).

Why in the engine: "finished" (acked with its result, dead-lettered, cancelled) is decided by the
log, and a copy must survive a change of leader. Every replica keeps the same outbox; the leader
ships records and then proposes `ArchiveDone(upto)`, which drops them everywhere. A new leader
resends whatever was not confirmed; the store's upsert makes a repeat harmless, so each message is
archived exactly once in effect.

Why bounded: an unreachable store must never block the queue or grow memory without limit. Past
`MAX_PENDING` records the oldest are dropped and counted (`dropped`), which the lag metrics show.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .message import Message

MAX_PENDING = 200_000  # records kept for the archive at most; the oldest go first beyond it

Record = dict[str, Any]


class ArchiveOutbox:
    __slots__ = ("records", "seq", "dropped", "confirmed")

    def __init__(self) -> None:
        self.records: deque[Record] = deque()
        self.seq = 0  # archive sequence number of the last record added
        self.dropped = 0  # records dropped unarchived because the outbox was full
        self.confirmed = 0  # highest archive sequence number confirmed stored

    def add(self, queue: str, msg: Message, state: str, now: int, result: Any = None) -> None:
        self.seq += 1
        self.records.append(
            {
                "archive_seq": self.seq,
                "queue": queue,
                "id": msg.id,
                "state": state,
                "payload": msg.payload,
                "headers": msg.get_extra("headers"),
                "dedup_key": msg.get_extra("dedup_key"),
                "last_error": msg.get_extra("last_error"),
                "priority": msg.priority,
                "group": msg.group,
                "deliveries": msg.deliveries,
                "enqueued_at": msg.enqueued_at,
                "finished_at": now,
                "result": result,
            }
        )
        if len(self.records) > MAX_PENDING:
            self.records.popleft()
            self.dropped += 1

    def pending(self, after: int, limit: int) -> list[Record]:
        """Up to `limit` records with an archive sequence number above `after`, oldest first."""
        out: list[Record] = []
        for rec in self.records:
            if rec["archive_seq"] > after:
                out.append(rec)
                if len(out) >= limit:
                    break
        return out

    def confirm(self, upto: int) -> int:
        """Drop records up to `upto` (stored); returns how many were dropped."""
        n = 0
        while self.records and self.records[0]["archive_seq"] <= upto:
            self.records.popleft()
            n += 1
        self.confirmed = max(self.confirmed, upto)
        return n

    def status(self) -> dict[str, int | None]:
        oldest = self.records[0]["finished_at"] if self.records else None
        return {
            "pending": len(self.records),
            "dropped": self.dropped,
            "confirmed": self.confirmed,
            "last": self.seq,
            "oldest_finished_at": oldest,
        }
