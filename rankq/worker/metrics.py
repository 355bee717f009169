"""The worker's Prometheus metrics and its small HTTP endpoint (/healthz, /readyz, /metrics).

The endpoint is a few lines of asyncio on the worker's own loop, so a wedged loop shows as a
failing health check, which is what a liveness probe is for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300)


class WorkerMetrics:
    def __init__(self, queue: str) -> None:
        self.registry = CollectorRegistry()
        r, q = self.registry, {"queue": queue}

        def counter(name: str, doc: str) -> Counter:
            return Counter(name, doc, ["queue"], registry=r).labels(**q)

        self.processed = counter("rankq_worker_processed", "Messages handled and acked")
        self.failed = counter(
            "rankq_worker_failed", "Handler errors and timeouts (nacked with backoff, or dead once out of deliveries)"
        )
        self.retried = counter("rankq_worker_retried", "Messages given back by Retry(delay)")
        self.rejected = counter("rankq_worker_rejected", "Messages dead-lettered by Reject")
        self.released = counter("rankq_worker_released", "Messages released unfinished (drain)")
        self.lease_extensions = counter("rankq_worker_lease_extensions", "Leases extended by heartbeats")
        self.lease_lost = counter("rankq_worker_lease_lost", "Leases lost while handling (result not acked)")
        self.inflight = Gauge("rankq_worker_inflight", "Messages leased by this worker", ["queue"], registry=r).labels(
            **q
        )
        self.duration = Histogram(
            "rankq_worker_handler_seconds",
            "Handler run time in seconds",
            ["queue"],
            buckets=DURATION_BUCKETS,
            registry=r,
        ).labels(**q)

    def render(self) -> bytes:
        return generate_latest(self.registry)


async def serve_endpoint(host: str, port: int, metrics: WorkerMetrics, ready: Callable[[], bool]) -> asyncio.Server:
    """GET /healthz (200 while the loop runs), /readyz (200 while fetching work), /metrics."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) > 1 else ""
            if path == "/metrics":
                status, body, ctype = 200, metrics.render(), CONTENT_TYPE_LATEST
            elif path == "/healthz":
                status, body, ctype = 200, b'{"status":"ok"}', "application/json"
            elif path == "/readyz":
                ok = ready()
                status, body, ctype = (
                    (200 if ok else 503),
                    (b'{"ready":true}' if ok else b'{"ready":false}'),
                    "application/json",
                )
            else:
                status, body, ctype = 404, b'{"detail":"not found"}', "application/json"
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                f"Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
