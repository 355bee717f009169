"""Plain ASGI middleware (cheaper than FastAPI's decorator form on the hot path).

Every response names the current leader (`X-RankQ-Leader`, `X-RankQ-Leader-URL`); bodies over the
server-wide limit are refused with 413 before they are read. API tokens are checked in `auth.py`.
"""

from __future__ import annotations

import json

MAX_BODY = 64 * 1024 * 1024


class LeaderHeaders:
    def __init__(self, app, service, max_body: int = MAX_BODY) -> None:
        self.app = app
        self.service = service
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length":
                if value.isdigit() and int(value) > self.max_body:
                    return await self._answer(send, 413, f"request body over {self.max_body} bytes")

        async def send_with_leader(message):
            if message["type"] == "http.response.start":
                leader = self.service.leader_info()
                if leader is not None:
                    headers = list(message.get("headers", []))
                    headers.append((b"x-rankq-leader", str(leader.get("node_id") or leader["address"]).encode()))
                    if leader.get("http_url"):
                        headers.append((b"x-rankq-leader-url", leader["http_url"].encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_leader)

    async def _answer(self, send, status: int, detail: str, headers: list | None = None) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *(headers or [])]})
        await send({"type": "http.response.body", "body": body})
