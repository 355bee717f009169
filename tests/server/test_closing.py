"""The HTTP backstop for a stopping node: a handler the server cancels is answered 503, not 500."""

from __future__ import annotations

import asyncio
import json

from rankq.server.closing import AnswerOnShutdown


class Stopping:
    closing = True


def run_cancelled(app) -> list[dict]:
    """Run `app` for one request, cancel it as uvicorn does when its grace period ends, and
    return the messages it sent."""
    sent: list[dict] = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)

    async def scenario():
        task = asyncio.create_task(AnswerOnShutdown(app, Stopping())({"type": "http"}, receive, send))
        await asyncio.sleep(0)  # the handler is now waiting
        task.cancel()
        await task  # ends normally: the cancellation was answered

    asyncio.run(scenario())
    return sent


def test_cancelled_handler_is_answered_503():
    async def waits_for_a_commit(scope, receive, send):
        await asyncio.Event().wait()

    start, body = run_cancelled(waits_for_a_commit)
    headers = dict(start["headers"])
    assert start["status"] == 503 and headers[b"retry-after"] == b"1" and headers[b"connection"] == b"close"
    assert "outcome is unknown" in json.loads(body["body"])["detail"]


def test_answers_while_stopping_close_the_connection():
    async def answers(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    asyncio.run(AnswerOnShutdown(answers, Stopping())({"type": "http"}, None, send))
    assert (b"connection", b"close") in sent[0]["headers"]
