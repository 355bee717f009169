"""ASGI middleware for a node that is stopping: every HTTP request it took gets an answer.

Writes waiting for a commit are answered by the service before HTTP closes (see `main.shutdown`).
This is the backstop for whatever else still runs when the HTTP grace period ends: uvicorn then
cancels the handler, and would answer 500 for the cancellation. Here it is answered 503 instead.
While the node stops, responses carry `Connection: close`, so clients do not keep idle connections
that are about to be closed under them.
"""

from __future__ import annotations

import asyncio
import json

from .errors import RETRY_AFTER_SECONDS

STOPPED_DETAIL = (
    "this node stopped before the request finished; the outcome is unknown: retry it "
    "(with the same dedup_key for writes)"
)


class AnswerOnShutdown:
    def __init__(self, app, service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def send_noting_start(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.service.closing:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except asyncio.CancelledError:
            if started:
                raise
            # Cancelled by the server's shutdown: answer rather than let it become a 500. The task
            # ends here normally; the server is closing it anyway.
            body = json.dumps({"detail": STOPPED_DETAIL}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", str(RETRY_AFTER_SECONDS).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
