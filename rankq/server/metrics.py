"""Prometheus metrics, read from the engine at scrape time (no counters on the hot path)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class EngineCollector:
    def __init__(self, service) -> None:
        self.service = service

    def collect(self):
        depth = GaugeMetricFamily("rankq_queue_messages", "Messages in a queue by state", labels=["queue", "state"])
        totals = CounterMetricFamily("rankq_queue_events", "Message events since the queue was created", labels=["queue", "event"])
        for view in self.service.list_queues():
            for state, n in view.counts.items():
                depth.add_metric([view.name, state], n)
            for event, n in view.totals.items():
                totals.add_metric([view.name, event], n)
        yield depth
        yield totals
        node = self.service.node
        sync = node.syncobj
        yield GaugeMetricFamily("rankq_raft_leader", "1 when this node is the Raft leader", value=1 if node.is_leader() else 0)
        yield GaugeMetricFamily("rankq_raft_term", "Current Raft term", value=sync.raftCurrentTerm)
        yield GaugeMetricFamily("rankq_raft_commit_index", "Raft commit index", value=sync.raftCommitIndex)
        yield GaugeMetricFamily("rankq_raft_last_applied", "Last applied Raft log index", value=sync.raftLastApplied)
        yield GaugeMetricFamily("rankq_writes_waiting", "Writes accepted by this node and not yet answered",
                                value=self.service.waiting_writes())


def render(service) -> tuple[bytes, str]:
    registry = getattr(service, "_metrics_registry", None)
    if registry is None:
        registry = CollectorRegistry()
        registry.register(EngineCollector(service))
        service._metrics_registry = registry
    return generate_latest(registry), CONTENT_TYPE_LATEST
