"""Plain ASGI middleware (cheaper than FastAPI's decorator form on the hot path).

Every response names the current leader (`X-RankQ-Leader`, `X-RankQ-Leader-URL`); a body over the
server-wide limit is refused with 413 while it is read (declared length or not: chunked bodies are
counted), and a body that is not UTF-8 with 422, before the app sees either. API tokens are checked
in `auth.py`.
"""

from __future__ import annotations

import codecs
import json

from ..engine.config import MAX_PAYLOAD_BYTES

MAX_BODY = MAX_PAYLOAD_BYTES
UTF8_SLICE = 1024 * 1024  # non-ASCII bodies are checked a slice at a time, to keep memory flat


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

        if scope["path"].startswith("/api/"):
            body, refusal = await self._read_body(receive)
            if refusal is not None:
                return await self._answer(send, *refusal)
            if body is None:  # the client left before its body was complete
                return
            receive = replay_body(body, receive)

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

    async def _read_body(self, receive) -> tuple[bytes | None, tuple | None]:
        """The whole body, or why it is refused: over the limit (counted as it arrives, so a
        chunked body cannot go past it either) or not UTF-8, as JSON must be."""
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return None, None
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > self.max_body:  # close the connection: its unread rest is not drained
                    return None, (413, f"request body over {self.max_body} bytes", [(b"connection", b"close")])
                chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if not body.isascii():
            decoder = codecs.getincrementaldecoder("utf-8")()
            view = memoryview(body)
            try:
                for start in range(0, len(body), UTF8_SLICE):
                    decoder.decode(view[start : start + UTF8_SLICE])
                decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                return None, (422, "request body is not valid UTF-8, as JSON must be")
        return body, None

    async def _answer(self, send, status: int, detail: str, headers: list | None = None) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    *(headers or []),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def replay_body(body: bytes, receive):
    """A receive that hands the app the body already read, then the client's later messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
