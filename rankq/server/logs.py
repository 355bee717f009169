"""Log lines in the format RankQ users know, or as JSON with the same fields plus a trace id.

2024-12-27 12:45:00.123 [INFO] /api/v1/queues: Received GET request for /api/v1/queues from IP: 127.0.0.1
2024-12-27 12:45:00.125 [INFO] /api/v1/queues: Completed GET request for /api/v1/queues with status 200 in 1.84 ms
2024-12-27 12:34:56.789 [ERROR] /api/v1/queues/{name}: queue 'x' not found
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace_id", default=None)

access = logging.getLogger("rankq.access")


class TextFormatter(logging.Formatter):
    _second = -1
    _prefix = ""

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:  # two lines per request: format the date once a second
            self._second, self._prefix = second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
        stamp = self._prefix + ".%03d" % int(record.msecs)
        route = getattr(record, "route", None) or record.name
        line = f"{stamp} [{record.levelname}] {route}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    FIELDS = ("route", "method", "uri", "client_ip", "status", "duration_ms")

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + ".%03dZ" % int(record.msecs),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", None) or trace_id.get(),
        }
        for key in self.FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup(fmt: str = "text", level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    # Our lines name no source file, thread or process: skip collecting them for every record
    # (the logging HOWTO's "Optimization" section).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "pysyncobj"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("uvicorn.error").propagate = True


def request_line(route: str, method: str, uri: str, client_ip: str, tid: str | None = None) -> None:
    if access.isEnabledFor(logging.INFO):
        access.info(
            "Received %s request for %s from IP: %s",
            method,
            uri,
            client_ip,
            extra={"route": route, "method": method, "uri": uri, "client_ip": client_ip, "trace_id": tid},
        )


def completion_line(route: str, method: str, uri: str, status: int, seconds: float, tid: str | None = None) -> None:
    """The line that closes a request line: same route and URI, plus status and duration."""
    if access.isEnabledFor(logging.INFO):
        ms = round(seconds * 1000, 2)
        access.info(
            "Completed %s request for %s with status %d in %.2f ms",
            method,
            uri,
            status,
            ms,
            extra={"route": route, "method": method, "uri": uri, "status": status, "duration_ms": ms, "trace_id": tid},
        )


def error_line(route: str, message: str, status: int | None = None, exc_info=None) -> None:
    access.error(message, extra={"route": route, "status": status}, exc_info=exc_info)
