"""The dashboard at /ui, its live feed, the read-only peek, and offline /docs and /redoc.

The page is static (rankq/server/ui/) and talks to the normal API with `Authorization: Bearer`, so
it needs no rules of its own. Its live feed is one snapshot a second built once for every open page
(`Feed`) and sent over Server-Sent Events under /api/, where the token check applies; the page reads
it with fetch() so the token travels in a header, never in a URL.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from pathlib import Path

from fastapi import APIRouter, Depends, FastAPI, Query
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from .. import schemas as s
from ..engine.queue import MAX_DEQUEUE
from . import metrics
from .http_common import message_status

log = logging.getLogger("rankq.server")

UI_DIR = Path(__file__).parent / "ui"
FEED_INTERVAL = 1.0  # seconds between snapshots
FEED_HISTORY = 120  # snapshots kept for the sparklines and rates
RATE_WINDOW = 5  # rates are averaged over this many snapshots
FEED_IDLE_STOP = 120.0  # sampling stops this long after the last page closed
KEEPALIVE = 15.0


class PeekResult(BaseModel):
    messages: list[s.MessageStatus]


class Feed:
    """Samples queue and cluster state once a second while pages are open and fans the encoded
    snapshot out to every subscriber: the cost is per second, not per page."""

    def __init__(self, service, interval: float = FEED_INTERVAL) -> None:
        self.service = service
        self.interval = interval
        self.history: deque[tuple[float, dict]] = deque(maxlen=FEED_HISTORY)
        self.subscribers: set[asyncio.Queue] = set()
        self.latest: bytes | None = None
        self.task: asyncio.Task | None = None
        self.idle_since = time.monotonic()
        self.closed = False

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=2)
        self.subscribers.add(q)
        if self.task is None or self.task.done():
            self.task = asyncio.create_task(self._run(), name="rankq-dashboard-feed")
        else:
            try:
                q.put_nowait(self.sample(record=False))  # a new page starts from now, not up to a second ago
            except Exception as err:
                log.warning("dashboard snapshot failed: %r", err)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.subscribers.discard(q)
        if not self.subscribers:
            self.idle_since = time.monotonic()

    def close(self) -> None:
        """End every open stream (the server is shutting down)."""
        self.closed = True
        for q in list(self.subscribers):
            _offer(q, None)
        if self.task is not None:
            self.task.cancel()

    async def _run(self) -> None:
        while not self.closed:
            if not self.subscribers and time.monotonic() - self.idle_since > FEED_IDLE_STOP:
                return
            try:
                self.latest = self.sample()
            except Exception as err:  # never let one bad sample end the feed
                log.warning("dashboard snapshot failed: %r", err)
            else:
                for q in list(self.subscribers):
                    _offer(q, self.latest)
            await asyncio.sleep(self.interval)

    def snapshot(self, record: bool = True) -> dict:
        now = time.time()
        queues = metrics.queue_snapshot(self.service, int(now * 1000))
        point = (now, {q["name"]: (q["backlog"], q["totals"]["enqueued"], q["totals"]["acked"]) for q in queues})
        extra = not record and bool(self.history)  # a look between samples: not kept in the history
        if not extra:
            self.history.append(point)
        base_t, base = self.history[max(0, len(self.history) - 1 - RATE_WINDOW)]
        span = now - base_t
        for q in queues:
            name = q["name"]
            before = base.get(name)
            if before is None or span <= 0:
                q["rates"] = {"enqueued": 0.0, "acked": 0.0}
            else:
                q["rates"] = {
                    "enqueued": round((q["totals"]["enqueued"] - before[1]) / span, 2),
                    "acked": round((q["totals"]["acked"] - before[2]) / span, 2),
                }
            q["sparkline"] = [h[name][0] for _, h in self.history if name in h]
            if extra:
                q["sparkline"].append(q["backlog"])
        return {"time": now, "interval": self.interval, "queues": queues, "cluster": self.service.cluster_status()}

    def sample(self, record: bool = True) -> bytes:
        return b"data: " + json.dumps(self.snapshot(record), separators=(",", ":")).encode() + b"\n\n"


def _offer(q: asyncio.Queue, item) -> None:
    """Newest wins: a slow page skips snapshots instead of queueing them."""
    if q.full():
        q.get_nowait()
    q.put_nowait(item)


def add_dashboard(app: FastAPI, service, log_request) -> Feed:
    metrics.install(service)
    feed = Feed(service)
    app.state.feed = feed
    api = APIRouter(prefix="/api/v1", dependencies=[Depends(log_request)])
    err = {"model": s.ErrorBody}

    @api.get("/queues/{name}/peek", response_model=PeekResult, responses={404: err, 422: err}, tags=["messages"])
    async def peek(name: str, limit: int = Query(20, ge=1, le=MAX_DEQUEUE)):
        """The next ready messages in the order a dequeue would lease them; leases nothing."""
        return JSONResponse({"messages": [message_status(i) for i in service.peek(name, limit)]})

    @api.get("/dashboard/stream", tags=["dashboard"], response_class=StreamingResponse)
    async def dashboard_stream():
        """Server-Sent Events: one JSON snapshot of queues and cluster per second (what /ui shows)."""
        q = feed.subscribe()

        async def events():
            try:
                yield b"retry: 1000\n\n"
                while True:
                    try:
                        item = await asyncio.wait_for(q.get(), KEEPALIVE)
                    except TimeoutError:
                        item = b": keep-alive\n\n"
                    if item is None:
                        return
                    yield item
            finally:
                feed.unsubscribe(q)

        return StreamingResponse(
            events(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        )

    @api.get("/dashboard/snapshot", tags=["dashboard"])
    async def dashboard_snapshot():
        """One snapshot of what the live feed sends."""
        return JSONResponse(feed.snapshot(record=False))

    app.include_router(api)

    # ---- the page ---------------------------------------------------------------------------------

    @app.get("/ui", include_in_schema=False)
    async def ui_index():
        return FileResponse(UI_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/ui/", include_in_schema=False)
    async def ui_slash():
        return RedirectResponse("/ui")

    app.mount("/ui/static", StaticFiles(directory=UI_DIR), name="ui-static")

    # ---- API docs without a CDN ---------------------------------------------------------------------

    import fastapi_offline  # Swagger UI (Apache-2.0) and ReDoc (MIT) builds, packaged on PyPI

    docs_assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount("/docs/static", StaticFiles(directory=docs_assets), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui():
        return get_swagger_ui_html(
            openapi_url=app.openapi_url,
            title="RankQ API",
            swagger_js_url="/docs/static/swagger-ui-bundle.js",
            swagger_css_url="/docs/static/swagger-ui.css",
            swagger_favicon_url="/docs/static/favicon.png",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc():
        return get_redoc_html(
            openapi_url=app.openapi_url,
            title="RankQ API",
            redoc_js_url="/docs/static/redoc.standalone.js",
            redoc_favicon_url="/docs/static/favicon.png",
            with_google_fonts=False,
        )

    return feed
