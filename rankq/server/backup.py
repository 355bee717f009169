"""A consistent backup of a running node, streamed without holding up replication.

Why a fork: writing out a million messages takes seconds, and the engine may not change meanwhile;
holding the engine lock that long would stall the Raft thread past the election timeout. A child
forked while the lock is held gets a copy-on-write picture of that instant and writes it to a
pipe; the parent streams the pipe and goes on applying the log. (The snapshot children of the
replication layer are made the same way, and the same fork hook makes them die with this process
and let go of its sockets.)

The stream is gzip'd JSON lines of `rankq.engine.backup` records; the last record is `end`, so a
reader can tell a complete backup from a cut one.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import signal
from collections.abc import AsyncIterator

log = logging.getLogger("rankq.server")

PIPE_CHUNK = 1 << 16


def _write_records(fd: int, engine) -> None:
    with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1) as out:
        encode = json.JSONEncoder(separators=(",", ":")).encode
        lines: list[str] = []
        for record in engine.export():
            lines.append(encode(record))
            if len(lines) >= 1000:
                out.write(("\n".join(lines) + "\n").encode())
                lines.clear()
        if lines:
            out.write(("\n".join(lines) + "\n").encode())


def _fork_writer(node, write_fd: int, read_fd: int) -> int:
    with node.lock:
        pid = os.fork()
    if pid == 0:  # the child: write the picture of this instant, then leave without cleanup
        code = 0
        try:
            os.close(read_fd)
            _write_records(write_fd, node.engine)
        except BaseException:  # noqa: BLE001 - anything here only truncates the stream
            code = 1
        os._exit(code)
    return pid


async def stream_backup(node) -> AsyncIterator[bytes]:
    """Yield the gzip'd backup of `node`'s state as of now."""
    read_fd, write_fd = os.pipe()
    try:
        pid = await asyncio.to_thread(_fork_writer, node, write_fd, read_fd)
    except BaseException:
        os.close(read_fd)
        os.close(write_fd)
        raise
    os.close(write_fd)
    finished = False
    try:
        while True:
            chunk = await asyncio.to_thread(os.read, read_fd, PIPE_CHUNK)
            if not chunk:
                break
            yield chunk
        finished = True
    finally:
        os.close(read_fd)
        if not finished:  # the reader went away: no one wants the rest
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        if finished and status != 0:
            log.error("backup writer exited with status %d; the stream is incomplete", status)
