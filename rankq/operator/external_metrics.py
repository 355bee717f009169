"""The external metrics API the HPA reads queue backlog from, served by the operator.

Why the operator serves it: the HPA asks the kube-apiserver for
`/apis/external.metrics.k8s.io/v1beta1/namespaces/<ns>/rankq_queue_backlog?labelSelector=
rankq.io/queue=<name>`, and the apiserver proxies that to whoever registered the APIService. The
operator already knows each Queue's leader Service and admin token, so no metrics pipeline
(Prometheus, an adapter, KEDA) is needed.

Rules the HPA imposes (Kubernetes v1.34 sources): an empty `items` is an error, so an empty queue
answers "0"; an unknown queue is 404 and a backlog that cannot be read is 503 (the HPA then keeps
its replica count); values are Quantity strings. Only the kube-apiserver may call: the server
requires a client certificate chained to the cluster's request-header CA (the one it uses when it
proxies), so nobody can read or spoof metrics around it.

The response bodies are built by pure functions; `ExternalMetricsServer` is the HTTPS edge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("rankq.operator.metrics")

GROUP = "external.metrics.k8s.io"
VERSION = "v1beta1"
GROUP_VERSION = f"{GROUP}/{VERSION}"
BASE = f"/apis/{GROUP_VERSION}"
BACKLOG_METRIC = "rankq_queue_backlog"
QUEUE_LABEL = "rankq.io/queue"
METRICS = (BACKLOG_METRIC,)


class MetricNotFound(Exception):
    """No such metric, or no Queue matches the selector (404)."""


class MetricUnavailable(Exception):
    """The value cannot be read right now (503): the HPA keeps its current count."""


class BadSelector(Exception):
    """The label selector is not one this API understands (400)."""


# ---- pure: bodies ---------------------------------------------------------------------------------


def discovery() -> dict[str, Any]:
    """`GET /apis/external.metrics.k8s.io/v1beta1`: the metrics this API serves."""
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": GROUP_VERSION,
        "resources": [
            {"name": m, "singularName": "", "namespaced": True, "kind": "ExternalMetricValueList", "verbs": ["get"]}
            for m in METRICS
        ],
    }


def api_group() -> dict[str, Any]:
    """`GET /apis/external.metrics.k8s.io`: the group and its one version."""
    version = {"groupVersion": GROUP_VERSION, "version": VERSION}
    return {"kind": "APIGroup", "apiVersion": "v1", "name": GROUP, "versions": [version], "preferredVersion": version}


def status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A Kubernetes `Status` error body, which kubectl and the HPA print as the reason."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def value_list(metric: str, queue: str, value: int, at: float) -> dict[str, Any]:
    """One item per queue: the HPA sums items, so a selector naming one queue gets exactly one."""
    return {
        "kind": "ExternalMetricValueList",
        "apiVersion": GROUP_VERSION,
        "metadata": {},
        "items": [
            {
                "metricName": metric,
                "metricLabels": {QUEUE_LABEL: queue},
                "timestamp": rfc3339(at),
                "value": str(int(value)),
            }
        ],
    }


def parse_selector(selector: str) -> dict[str, str]:
    """`a=b,c==d` into {a: b, c: d}; set-based selectors (in, notin, !) are refused."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in selector.split(","))):
        if "==" in part:
            key, value = part.split("==", 1)
        elif "=" in part and "!=" not in part:
            key, value = part.split("=", 1)
        else:
            raise BadSelector(f"only equality selectors are supported, not {part!r}")
        key, value = key.strip(), value.strip()
        if not key or not value:
            raise BadSelector(f"empty key or value in {part!r}")
        out[key] = value
    return out


# ---- the HTTPS edge -------------------------------------------------------------------------------

BacklogSource = Callable[[str, str, bool], Awaitable[int]]
"""(namespace, queue, include_delayed) -> backlog; raises MetricNotFound or MetricUnavailable."""

INCLUDE_DELAYED_LABEL = "rankq.io/include-delayed"


@dataclass(frozen=True)
class ServingTLS:
    cert_file: str
    key_file: str
    client_ca_file: str | None  # the request-header CA; None only for tests of the bodies


def server_ssl_context(tls: ServingTLS) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        ctx.load_verify_locations(tls.client_ca_file)
        ctx.verify_mode = ssl.CERT_REQUIRED  # only the kube-apiserver's proxy certificate gets in
    return ctx


class ExternalMetricsServer:
    """aiohttp HTTPS server for the external metrics API; values cached for at most `max_age` s."""

    def __init__(
        self, source: BacklogSource, tls: ServingTLS, host: str = "0.0.0.0", port: int = 6443, max_age: float = 1.0
    ) -> None:
        self.source = source
        self.tls = tls
        self.host = host
        self.port = port
        self.max_age = max_age
        self._cache: dict[tuple[str, str, bool], tuple[float, int]] = {}
        self._locks: dict[tuple[str, str, bool], asyncio.Lock] = {}
        self._runner: Any = None

    async def backlog(self, namespace: str, queue: str, include_delayed: bool = False) -> int:
        key = (namespace, queue, include_delayed)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # many HPAs asking at once share one read
            hit = self._cache.get(key)
            if hit is not None and time.monotonic() - hit[0] <= self.max_age:
                return hit[1]
            value = await self.source(namespace, queue, include_delayed)
            self._cache[key] = (time.monotonic(), value)
            return value

    def app(self) -> Any:
        from aiohttp import web

        def answer(body: dict[str, Any], code: int = 200) -> web.Response:
            return web.Response(status=code, text=json.dumps(body), content_type="application/json")

        async def get_discovery(_request: web.Request) -> web.Response:
            return answer(discovery())

        async def get_group(_request: web.Request) -> web.Response:
            return answer(api_group())

        async def get_metric(request: web.Request) -> web.Response:
            namespace = request.match_info["namespace"]
            metric = request.match_info["metric"]
            if metric not in METRICS:
                return answer(
                    status(404, "NotFound", f"no external metric {metric!r}; this API serves {', '.join(METRICS)}"), 404
                )
            try:
                labels = parse_selector(request.query.get("labelSelector", ""))
            except BadSelector as err:
                return answer(status(400, "BadRequest", str(err)), 400)
            queue = labels.get(QUEUE_LABEL)
            if not queue:
                return answer(
                    status(400, "BadRequest", f"select the queue with labelSelector={QUEUE_LABEL}=<name>"), 400
                )
            try:
                value = await self.backlog(namespace, queue, labels.get(INCLUDE_DELAYED_LABEL) == "true")
            except MetricNotFound as err:
                return answer(status(404, "NotFound", str(err)), 404)
            except MetricUnavailable as err:
                return answer(status(503, "ServiceUnavailable", str(err)), 503)
            return answer(value_list(metric, queue, value, time.time()))

        async def healthz(_request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get(f"/apis/{GROUP}", get_group)
        app.router.add_get(BASE, get_discovery)
        app.router.add_get(BASE + "/namespaces/{namespace}/{metric}", get_metric)
        for path in ("/healthz", "/livez", "/readyz"):
            app.router.add_get(path, healthz)
        return app

    async def start(self) -> None:
        from aiohttp import web

        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=server_ssl_context(self.tls))
        await site.start()
        log.info("external metrics API on https://%s:%d%s", self.host, self.port, BASE)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
