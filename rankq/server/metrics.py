"""Prometheus metrics: per-request histograms on the edges, everything else read at scrape time.

Naming follows Prometheus conventions (`rankq_` prefix, base units, `_total`, `_seconds`).

Replicated state (queue depths, event totals, oldest message age, per-member replication progress)
is the same on every member, so only the current leader exports it: `sum()` over the pods of a group
then counts each queue once. Per-process series (requests, latency, process and Python collectors,
Raft role/term/commit index) come from every member.
"""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections.abc import Iterator

import grpc
from prometheus_client import CollectorRegistry, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString
from starlette.routing import Match

from . import logs

disable_created_metrics()  # no `_created` twin for every counter and histogram
REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
GCCollector(registry=REGISTRY)

# Buckets from 0.5 ms (a local read) to 20 s (the longest long-poll wait).
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)


class LatencyStats:
    """Request counts and latency histograms kept in plain lists.

    Every update (HTTP and gRPC handlers, commit callbacks) and every scrape runs on the server's one
    event loop thread, so no lock is needed: an observation is a bisect and two additions, about a
    tenth of prometheus_client's locked Counter plus Histogram. Series are keyed by the full label
    set; the histogram is exported without the last key label (status), the counter with all."""

    def __init__(
        self,
        name: str,
        doc: str,
        labels: tuple[str, ...],
        buckets: tuple[float, ...],
        counter: str | None = None,
        counter_doc: str = "",
    ) -> None:
        self.name, self.doc, self.labels, self.buckets = name, doc, labels, buckets
        self.counter, self.counter_doc = counter, counter_doc
        self.series: dict[tuple, list] = {}  # key -> [count per bucket ..., count over the last bound, sum]

    def observe(self, key: tuple, seconds: float) -> None:
        row = self.series.get(key)
        if row is None:
            row = self.series[key] = [0] * (len(self.buckets) + 1) + [0.0]
        row[bisect_left(self.buckets, seconds)] += 1
        row[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        hist_labels = self.labels[:-1] if self.counter else self.labels
        merged: dict[tuple, list] = {}
        counts = CounterMetricFamily(self.counter, self.counter_doc, labels=list(self.labels)) if self.counter else None
        for key, row in list(self.series.items()):
            if counts is not None:
                counts.add_metric([str(k) for k in key], sum(row[:-1]))
            hkey = key[: len(hist_labels)]
            acc = merged.get(hkey)
            merged[hkey] = list(row) if acc is None else [a + b for a, b in zip(acc, row)]
        hist = HistogramMetricFamily(self.name, self.doc, labels=list(hist_labels))
        bounds = [floatToGoString(b) for b in self.buckets] + ["+Inf"]
        for hkey, row in merged.items():
            cumulative, buckets = 0, []
            for bound, n in zip(bounds, row[:-1]):
                cumulative += n
                buckets.append((bound, cumulative))
            hist.add_metric([str(k) for k in hkey], buckets, row[-1])
        if counts is not None:
            yield counts
        yield hist

    def describe(self) -> list[Metric]:
        return []


HTTP = LatencyStats(
    "rankq_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template and method",
    ("route", "method", "status"),
    LATENCY_BUCKETS,
    "rankq_http_requests",
    "HTTP requests answered, by route template, method and status",
)
GRPC = LatencyStats(
    "rankq_grpc_request_duration_seconds",
    "Time to answer a gRPC call, by method",
    ("method", "code"),
    LATENCY_BUCKETS,
    "rankq_grpc_requests",
    "gRPC calls answered, by method and status code",
)
COMMIT = LatencyStats(
    "rankq_raft_commit_duration_seconds",
    "From proposing a batch of commands on this node to its commit",
    (),
    (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
for _stats in (HTTP, GRPC, COMMIT):
    REGISTRY.register(_stats)


def observe_http(route: str, method: str, status: int, seconds: float) -> None:
    HTTP.observe((route, method, status), seconds)


def observe_grpc(method: str, code: str, seconds: float) -> None:
    GRPC.observe((method, code), seconds)


def observe_commit(seconds: float) -> None:
    COMMIT.observe((), seconds)


def queue_snapshot(service, now_ms: int | None = None) -> list[dict]:
    """Per queue: counts, event totals, backlog and the age of its oldest ready message.

    The one read of queue state that both /metrics and the dashboard feed use."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    out = []
    with service.node.lock:
        for q in service.node.engine.queues.values():
            counts = q.counts()
            oldest = q.oldest_ready_at()
            out.append(
                {
                    "name": q.name,
                    "counts": counts,
                    "totals": dict(q.totals),
                    "backlog": q.backlog(now_ms),  # what autoscalers scale on (see QueueState.backlog)
                    "oldest_ready_age": None if oldest is None else max(0, now_ms - oldest) / 1000,
                }
            )
    return out


class ElectionCounter:
    """Raft terms that began while this process ran (every term starts with an election)."""

    def __init__(self) -> None:
        self.first_term: int | None = None

    def count(self, term: int) -> int:
        if self.first_term is None:
            self.first_term = term
        return max(0, term - self.first_term)


class ClusterCollector:
    """Queue and Raft state, read from the local copy when Prometheus scrapes."""

    def __init__(self, service) -> None:
        self.service = service
        self.elections = ElectionCounter()
        try:
            self.elections.count(service.node.status()["raft_term"])  # the term this process started in
        except Exception:
            pass

    def describe(self):
        return []  # series depend on the node's role; nothing to check at registration

    def collect(self):
        service = self.service
        status = service.cluster_status()
        leader = service.node.is_leader()
        yield GaugeMetricFamily("rankq_raft_leader", "1 when this node is the Raft leader", value=1 if leader else 0)
        yield GaugeMetricFamily("rankq_raft_term", "Current Raft term", value=status["term"])
        yield GaugeMetricFamily("rankq_raft_commit_index", "Raft commit index", value=status["commit_index"])
        yield GaugeMetricFamily("rankq_raft_last_applied", "Last applied Raft log index", value=status["last_applied"])
        yield GaugeMetricFamily(
            "rankq_writes_waiting", "Writes accepted by this node and not yet answered", value=service.waiting_writes()
        )
        yield CounterMetricFamily(
            "rankq_raft_elections",
            "Raft terms begun (elections) since this process started",
            value=self.elections.count(status["term"]),
        )
        members = GaugeMetricFamily(
            "rankq_raft_members", "Members of the Raft group as this node sees them", value=len(status["members"])
        )
        yield members
        healthy = GaugeMetricFamily(
            "rankq_raft_member_up", "1 when this node is connected to the member", labels=["member"]
        )
        for m in status["members"]:
            if not m["self"]:
                healthy.add_metric([m["id"]], 1 if m["healthy"] else 0)
        yield healthy
        if not leader:
            return  # replicated state: exported by the leader only, so sums over pods count it once
        match = GaugeMetricFamily(
            "rankq_raft_member_match_index",
            "Highest log index known replicated on the member (leader only)",
            labels=["member"],
        )
        lag = GaugeMetricFamily(
            "rankq_raft_member_lag_entries",
            "Committed entries the member has not yet acknowledged (leader only)",
            labels=["member"],
        )
        for m in status["members"]:
            if m["match_index"] is not None:
                match.add_metric([m["id"]], m["match_index"])
            if m["lag"] is not None or m["role"] == "leader":
                lag.add_metric([m["id"]], m["lag"] or 0)
        yield match
        yield lag
        depth = GaugeMetricFamily(
            "rankq_queue_messages", "Messages in a queue by state (leader only)", labels=["queue", "state"]
        )
        totals = CounterMetricFamily(
            "rankq_queue_events", "Message events since the queue was created (leader only)", labels=["queue", "event"]
        )
        backlog = GaugeMetricFamily(
            "rankq_queue_backlog",
            "Ready + leased + delayed messages already due: what worker autoscaling scales on (leader only)",
            labels=["queue"],
        )
        age = GaugeMetricFamily(
            "rankq_queue_oldest_ready_age_seconds",
            "How long the longest-waiting ready message has been queued; 0 when none (leader only)",
            labels=["queue"],
        )
        for q in queue_snapshot(service):
            for state, n in q["counts"].items():
                depth.add_metric([q["name"], state], n)
            for event, n in q["totals"].items():
                totals.add_metric([q["name"], event], n)
            backlog.add_metric([q["name"]], q["backlog"])
            age.add_metric([q["name"]], q["oldest_ready_age"] or 0.0)
        yield depth
        yield totals
        yield backlog
        yield age


_installed: set[int] = set()


def install(service) -> None:
    """Register the scrape-time collector for this service (once per process)."""
    if id(service) not in _installed:
        _installed.add(id(service))
        REGISTRY.register(ClusterCollector(service))


def render(service) -> tuple[bytes, str]:
    install(service)
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


# ---- the edges -------------------------------------------------------------------------------------


class RequestObserver:
    """ASGI middleware: per-route count and latency, `X-Request-ID` echoed (or assigned), and a
    completion log line after the request line. Routes are labelled by template, never raw path."""

    def __init__(self, app, router=None) -> None:
        self.app = app
        self.router = router  # to name routes refused before routing (e.g. 401)

    def _route_of(self, scope) -> str:
        route = scope.get("route")
        if route is not None:
            return route.path
        path = scope.get("path", "")
        if path == "/ui" or path.startswith("/ui/"):
            return "/ui"
        if self.router is not None:
            fresh = {**scope, "root_path": ""}  # a mount may have rewritten it
            for r in self.router.routes:
                if getattr(r, "path", None) and r.matches(fresh)[0] == Match.FULL:
                    return r.path
        return "unmatched"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        rid = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                rid = value.decode("latin-1")[:128]
                break
        if not rid:
            rid = os.urandom(8).hex()
        logs.trace_id.set(rid)
        rid_header = (b"x-request-id", rid.encode("latin-1"))
        status = 500

        async def send_observed(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", ()), rid_header]}
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            seconds = time.perf_counter() - start
            route = self._route_of(scope)
            observe_http(route, scope["method"], status, seconds)
            logs.completion_line(route, scope["method"], scope["path"], status, seconds, rid)


class GrpcObserver(grpc.aio.ServerInterceptor):
    """gRPC interceptor: per-method count (by status code) and latency, and the trace id carried in
    `x-request-id` metadata (assigned when missing) into the logs and back in the initial metadata."""

    async def intercept_service(self, continuation, details):
        handler = await continuation(details)
        if handler is None:
            return None
        method = details.method.rsplit("/", 1)[-1]
        rid = None
        for key, value in details.invocation_metadata or ():
            if key == "x-request-id":
                rid = str(value)[:128]
                break
        echo = (("x-request-id", rid),) if rid else None  # echoed when the caller sent one
        rid = rid or os.urandom(8).hex()

        def finish(context, start, error):
            code = context.code() if hasattr(context, "code") else None
            if code is None:
                code = (
                    grpc.StatusCode.UNKNOWN
                    if error is not None and not isinstance(error, _aborted())
                    else grpc.StatusCode.OK
                )
            name = code.name if isinstance(code, grpc.StatusCode) else str(code)
            observe_grpc(method, name, time.perf_counter() - start)

        if handler.unary_unary is not None:
            inner = handler.unary_unary

            async def unary(request, context):
                logs.trace_id.set(rid)
                start = time.perf_counter()
                error = None
                try:
                    if echo:
                        await context.send_initial_metadata(echo)
                    return await inner(request, context)
                except BaseException as err:
                    error = err
                    raise
                finally:
                    finish(context, start, error)

            return grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            inner_stream = handler.stream_stream

            async def streaming(request_iterator, context):
                logs.trace_id.set(rid)
                start = time.perf_counter()
                error = None
                try:
                    if echo:
                        await context.send_initial_metadata(echo)
                    async for item in inner_stream(request_iterator, context):
                        yield item
                except BaseException as err:
                    error = err
                    raise
                finally:
                    finish(context, start, error)

            return grpc.stream_stream_rpc_method_handler(
                streaming,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def _aborted():
    return grpc.aio.AbortError
