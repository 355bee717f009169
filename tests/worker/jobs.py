"""Handlers the worker tests run in real `rankq worker` processes. Each run appends to a journal
(one JSON line per event, O_APPEND so lines from several processes never interleave); the payload
says what to do."""

from __future__ import annotations

import asyncio
import json
import os
import time

from rankq import Reject, Retry


def _write(event: str, msg, **extra) -> None:
    line = {
        "event": event,
        "id": msg.id,
        "n": msg.payload.get("n"),
        "deliveries": msg.deliveries,
        "pid": os.getpid(),
        "t": time.time(),
        **extra,
    }
    fd = os.open(os.environ["RANKQ_TEST_JOURNAL"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


def _outcome(msg):
    p = msg.payload
    if p.get("fail"):
        raise RuntimeError(f"boom {p.get('n')}")
    if p.get("reject"):
        raise Reject("unusable input")
    if p.get("retry") and msg.deliveries == 1:
        raise Retry(delay=p["retry"])
    _write("done", msg)
    return {"n": p.get("n")}


def handle(msg):
    _write("start", msg)
    if msg.payload.get("sleep"):
        time.sleep(msg.payload["sleep"])
    return _outcome(msg)


async def handle_async(msg):
    _write("start", msg)
    if msg.payload.get("sleep"):
        await asyncio.sleep(msg.payload["sleep"])
    return _outcome(msg)


def noop(msg):
    return None
