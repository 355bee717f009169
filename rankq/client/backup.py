"""Backup files: gzip'd JSON lines of records, the first a header, the last `{"kind": "end"}`.

The client writes what the leader streams, checks that it is complete, and for a restore reads it
back in chunks small enough for one request each.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import RankQError

CHUNK_RECORDS = 5_000
CHUNK_BYTES = 4 * 1024 * 1024


class BackupFileError(RankQError):
    """The file is not a complete RankQ backup."""


@dataclass(frozen=True)
class BackupSummary:
    """What a backup file holds: records by kind (queue, message, acked, dedup) and its size."""

    path: str
    bytes: int
    records: dict[str, int] = field(default_factory=dict)

    @property
    def queues(self) -> int:
        return self.records.get("queue", 0)

    @property
    def messages(self) -> int:
        return self.records.get("message", 0)


def read_records(path: str) -> Iterator[dict[str, Any]]:
    """The records of a backup file, in order; BackupFileError if it is cut short or not one."""
    for record, _ in _records_with_size(path):
        yield record


def _records_with_size(path: str) -> Iterator[tuple[dict[str, Any], int]]:
    seen_end = False
    try:
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            for n, line in enumerate(fh):
                if not line.strip():
                    continue
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise BackupFileError(f"{path}: line {n + 1} is not a record")
                if n == 0 and record.get("kind") != "header":
                    raise BackupFileError(f"{path}: does not start with a backup header")
                if seen_end:
                    raise BackupFileError(f"{path}: records after the end record")
                if record.get("kind") == "end":
                    seen_end = True
                yield record, len(line)
    except (OSError, EOFError, ValueError) as err:
        raise BackupFileError(f"{path}: not a readable backup ({err})") from err
    if not seen_end:
        raise BackupFileError(f"{path}: the backup is incomplete (no end record)")


def summarize(path: str, size: int) -> BackupSummary:
    counts = Counter(r.get("kind", "?") for r in read_records(path))
    counts.pop("header", None)
    counts.pop("end", None)
    return BackupSummary(path=path, bytes=size, records=dict(counts))


def chunks(path: str, max_records: int = CHUNK_RECORDS, max_bytes: int = CHUNK_BYTES) -> Iterator[list[dict[str, Any]]]:
    """The backup's records in request-sized chunks, in file order."""
    chunk: list[dict[str, Any]] = []
    size = 0
    for record, length in _records_with_size(path):
        if chunk and (len(chunk) >= max_records or size + length > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(record)
        size += length
    if chunk:
        yield chunk
