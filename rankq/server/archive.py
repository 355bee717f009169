"""Copies finished messages to PostgreSQL, where teams query them with SQL and keep them for years.

Only the leader ships. It reads the engine's archive outbox (rankq/engine/archive.py), upserts a
batch in one transaction keyed by (group, queue, message id), and then proposes `ArchiveDone` so
every replica drops what is stored. A leader that dies between the two leaves the batch in the
outbox; the next leader sends it again and the upsert makes the repeat a no-op: exactly once in
effect. A PostgreSQL outage only grows the (bounded) outbox: the queue never waits for the archive.

The tables are created and migrated here (`MIGRATIONS`, applied in order under an advisory lock so
that several members starting at once do not race).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from ..engine import commands as c

log = logging.getLogger("rankq.archive")

BATCH = 1000
IDLE_WAIT = 0.2  # seconds between looks at an empty outbox
MAX_BACKOFF = 10.0
ADVISORY_LOCK = 0x72616E6B71  # "rankq": serialises migrations between members

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE IF NOT EXISTS rankq_messages (
            group_name    text        NOT NULL,
            queue         text        NOT NULL,
            message_id    bigint      NOT NULL,
            state         text        NOT NULL,  -- acked, dead or cancelled
            payload       jsonb,                 -- the JSON payload (NULL for bytes or JSON jsonb refuses)
            payload_text  text,                  -- the JSON payload as sent
            payload_bytes bytea,                 -- a binary payload (sent over gRPC)
            headers       jsonb,
            priority      bigint,
            message_group text,
            deliveries    integer     NOT NULL,
            dedup_key     text,
            last_error    text,
            result        jsonb,                 -- what the consumer acked with
            enqueued_at   timestamptz,
            finished_at   timestamptz NOT NULL,
            archive_seq   bigint      NOT NULL,
            archived_at   timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (group_name, queue, message_id)
        );
        CREATE INDEX IF NOT EXISTS rankq_messages_finished ON rankq_messages (group_name, queue, finished_at);
    """,
    ),
]

UPSERT = """
INSERT INTO rankq_messages (group_name, queue, message_id, state, payload, payload_text, payload_bytes, headers,
                            priority, message_group, deliveries, dedup_key, last_error, result, enqueued_at,
                            finished_at, archive_seq)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
ON CONFLICT (group_name, queue, message_id) DO UPDATE SET
    state = EXCLUDED.state, payload = EXCLUDED.payload, payload_text = EXCLUDED.payload_text,
    payload_bytes = EXCLUDED.payload_bytes, headers = EXCLUDED.headers, priority = EXCLUDED.priority,
    message_group = EXCLUDED.message_group, deliveries = EXCLUDED.deliveries, dedup_key = EXCLUDED.dedup_key,
    last_error = EXCLUDED.last_error, result = EXCLUDED.result, enqueued_at = EXCLUDED.enqueued_at,
    finished_at = EXCLUDED.finished_at, archive_seq = EXCLUDED.archive_seq, archived_at = now()
WHERE rankq_messages.archive_seq < EXCLUDED.archive_seq
"""


def _when(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)


def _safe_text(text: str) -> str:
    """JSON text PostgreSQL can hold: no raw lone surrogates (re-escaped as \\uXXXX)."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(json.loads(text))


def _jsonb_text(value: Any) -> str | None:
    """`value` as JSON text for a jsonb column, or None where jsonb would refuse it (\\u0000)."""
    if value is None:
        return None
    try:
        text = json.dumps(value, ensure_ascii=True, allow_nan=False)
    except (TypeError, ValueError):
        text = json.dumps(repr(value))
    return None if "\\u0000" in text else text


def row_of(group: str, rec: dict[str, Any]) -> tuple:
    """One outbox record as a row of rankq_messages (pure: tested without a database)."""
    payload = rec["payload"]
    if isinstance(payload, bytes):
        payload_json = payload_text = None
        payload_bytes: bytes | None = payload
    else:
        payload_text = _safe_text(payload)
        payload_json = None if "\\u0000" in payload_text else payload_text
        payload_bytes = None
    return (
        group,
        rec["queue"],
        rec["id"],
        rec["state"],
        payload_json,
        payload_text,
        payload_bytes,
        _jsonb_text(rec.get("headers")),
        rec.get("priority"),
        rec.get("group"),
        rec.get("deliveries") or 0,
        rec.get("dedup_key"),
        rec.get("last_error"),
        _jsonb_text(rec.get("result")),
        _when(rec.get("enqueued_at")),
        _when(rec["finished_at"]),
        rec["archive_seq"],
    )


class PostgresStore:
    """The archive's tables in one PostgreSQL database (psycopg 3, used from a worker thread)."""

    def __init__(self, dsn: str, group: str) -> None:
        self.dsn = dsn
        self.group = group
        self._conn: Any = None

    def _connection(self) -> Any:
        import psycopg

        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self.dsn, connect_timeout=5, autocommit=False)
            self._migrate(self._conn)
        return self._conn

    @staticmethod
    def _migrate(conn: Any) -> None:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK,))
            cur.execute(
                "CREATE TABLE IF NOT EXISTS rankq_schema (version integer PRIMARY KEY, "
                "applied_at timestamptz NOT NULL DEFAULT now())"
            )
            cur.execute("SELECT coalesce(max(version), 0) FROM rankq_schema")
            current = cur.fetchone()[0]
            for version, sql in MIGRATIONS:
                if version > current:
                    cur.execute(sql)
                    cur.execute("INSERT INTO rankq_schema (version) VALUES (%s)", (version,))
                    log.info("archive: applied schema version %d", version)

    def store(self, records: list[dict[str, Any]]) -> None:
        conn = self._connection()
        try:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(UPSERT, [row_of(self.group, r) for r in records])
        except Exception:
            self.close()  # a broken connection is opened afresh next time
            raise

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:  # noqa: BLE001 - closing a dead connection
                pass
            self._conn = None


@dataclass
class ArchiveState:
    """What the archiver reports (status route and metrics)."""

    stored: int = 0  # records this node stored while leading
    errors: int = 0
    last_error: str | None = None
    last_stored_at: float | None = None


class Archiver:
    """The leader's loop from the outbox to the store."""

    def __init__(self, service: Any, store: PostgresStore, batch: int = BATCH) -> None:
        self.service = service
        self.store = store
        self.batch = batch
        self.state = ArchiveState()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="rankq-archive")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self.store.close)

    def status(self) -> dict[str, Any]:
        node = self.service.node
        with node.lock:
            box = node.engine.outbox().status()
        oldest = box["oldest_finished_at"]
        lag = max(0.0, time.time() - oldest / 1000) if oldest is not None else 0.0
        return {
            "enabled": True,
            "group": self.store.group,
            **box,
            "lag_seconds": round(lag, 3),
            "stored": self.state.stored,
            "errors": self.state.errors,
            "last_error": self.state.last_error,
        }

    async def _run(self) -> None:
        node = self.service.node
        sent = 0  # highest archive_seq stored by this node since it became leader
        failures = 0
        while True:
            if not node.is_leader():
                sent = 0  # a new term: resend whatever is not confirmed
                await asyncio.sleep(0.5)
                continue
            with node.lock:
                box = node.engine.outbox()
                records = box.pending(max(sent, box.confirmed), self.batch)
            if not records:
                await asyncio.sleep(IDLE_WAIT)
                continue
            try:
                await asyncio.to_thread(self.store.store, records)
            except Exception as err:  # noqa: BLE001 - the store is down or refused: back off, keep going
                failures += 1
                self.state.errors += 1
                self.state.last_error = f"{type(err).__name__}: {err}".strip()[:500]
                if failures == 1 or failures % 20 == 0:
                    log.warning(
                        "archive: cannot store %d record(s) (%s); retrying", len(records), self.state.last_error
                    )
                await asyncio.sleep(min(MAX_BACKOFF, 0.2 * 2 ** min(failures, 8)))
                continue
            if failures:
                log.info("archive: storing again after %d failed attempt(s)", failures)
            failures = 0
            self.state.last_error = None
            upto = records[-1]["archive_seq"]
            sent = upto
            self.state.stored += len(records)
            self.state.last_stored_at = time.time()
            try:
                await self.service.submit(c.ArchiveDone(upto))
            except Exception as err:  # noqa: BLE001 - stored but not confirmed: a resend is harmless
                log.debug("archive: confirmation of %d not committed: %s", upto, err)
