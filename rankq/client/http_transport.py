"""The HTTP transport: the AsyncTransport protocol over httpx against /api/v1.

One keep-alive connection pool per transport. Error responses carry a JSON `detail`, which becomes
the matching `rankq.client.errors` exception; a connection that cannot be made or breaks becomes
`TransportError`. Payloads travel as JSON; a binary payload (enqueued over gRPC) arrives as
`payload_base64` and is handed back as `bytes`.
"""

from __future__ import annotations

import base64
import ssl
from datetime import UTC, datetime
from typing import Any, BinaryIO, overload
from urllib.parse import quote

import httpx

from .errors import InvalidRequestError, TransportError, error_for
from .types import (
    AckOutcome,
    Dependency,
    EnqueueResult,
    Message,
    MessageStatus,
    NackResult,
    NewMessage,
    QueueCounts,
    QueueInfo,
    RedriveJob,
    RedriveResult,
    dependency_of,
)

LEADER_HEADER = "X-RankQ-Leader"
DEFAULT_TIMEOUT = 10.0
CONNECT_TIMEOUT = 5.0


class HttpTransport:
    """Talks to one RankQ node at `base_url` (e.g. ``http://127.0.0.1:8080``).

    `timeout` bounds connecting, sending and reading each request; a dequeue with `wait` gets a
    read timeout of `wait + timeout`, so a long poll is never cut short by the client.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        headers: dict[str, str] | None = None,
        verify: bool | str | ssl.SSLContext = True,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.AsyncClient(
            base_url=self.base_url + "/api/v1",
            timeout=httpx.Timeout(timeout, connect=min(timeout, CONNECT_TIMEOUT)),
            limits=httpx.Limits(max_connections=100, max_keepalive_connections=20, keepalive_expiry=30.0),
            headers={"User-Agent": "rankq-python", **(headers or {})},
            verify=verify,
        )

    async def close(self) -> None:
        await self._http.aclose()

    # ---- plumbing ------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> Any:
        kwargs: dict[str, Any] = {}
        if json is not None:
            kwargs["json"] = json
        if params:
            kwargs["params"] = params
        if timeout is not None:
            kwargs["timeout"] = timeout
        try:
            resp = await self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as err:
            raise TransportError(f"{method} {self.base_url}/api/v1{path} timed out ({type(err).__name__})") from err
        except httpx.HTTPError as err:
            raise TransportError(f"cannot reach {self.base_url}: {err or type(err).__name__}") from err
        if resp.status_code >= 400:
            raise _error_from(resp)
        if resp.status_code == 204 or not resp.content:
            return None
        try:
            return resp.json()
        except ValueError as err:
            raise TransportError(f"{method} {path}: the server sent a body that is not JSON") from err

    # ---- queues --------------------------------------------------------------------------------

    async def create_queue(self, name: str, settings: dict[str, Any]) -> QueueInfo:
        return _queue_info(await self._call("POST", "/queues", json={**settings, "name": name}))

    async def list_queues(self) -> list[QueueInfo]:
        body = await self._call("GET", "/queues")
        return [_queue_info(q) for q in body["queues"]]

    async def get_queue(self, name: str) -> QueueInfo:
        return _queue_info(await self._call("GET", f"/queues/{_seg(name)}"))

    async def update_queue(self, name: str, changes: dict[str, Any]) -> QueueInfo:
        return _queue_info(await self._call("PATCH", f"/queues/{_seg(name)}", json=changes))

    async def delete_queue(self, name: str) -> None:
        await self._call("DELETE", f"/queues/{_seg(name)}")

    # ---- messages ------------------------------------------------------------------------------

    async def enqueue(self, queue: str, messages: list[NewMessage]) -> list[EnqueueResult]:
        bodies = [_enqueue_body(m) for m in messages]
        if len(bodies) == 1:
            out = await self._call("POST", f"/queues/{_seg(queue)}/messages", json=bodies[0])
            return [EnqueueResult(id=out["id"], duplicate=out.get("duplicate", False))]
        out = await self._call("POST", f"/queues/{_seg(queue)}/messages/batch", json={"messages": bodies})
        return [EnqueueResult(id=r["id"], duplicate=r.get("duplicate", False)) for r in out["results"]]

    async def dequeue(
        self, queue: str, max: int = 1, wait: float = 0.0, visibility_timeout: float | None = None
    ) -> list[Message]:
        body: dict[str, Any] = {"max": max, "wait": wait}
        if visibility_timeout is not None:
            body["visibility_timeout"] = visibility_timeout
        timeout = None
        if wait:
            timeout = httpx.Timeout(
                self.timeout, connect=min(self.timeout, CONNECT_TIMEOUT), read=float(wait) + self.timeout
            )
        out = await self._call("POST", f"/queues/{_seg(queue)}/dequeue", json=body, timeout=timeout)
        return [_message(queue, d) for d in out["messages"]]

    async def ack(self, queue: str, items: list[tuple[int, str, Any]]) -> list[AckOutcome]:
        body = {"items": [{"id": i, "lease_token": token, "result": result} for i, token, result in items]}
        out = await self._call("POST", f"/queues/{_seg(queue)}/ack", json=body)
        return [
            AckOutcome(id=r["id"], ok=r["ok"], status=r.get("status", 200), detail=r.get("detail"))
            for r in out["results"]
        ]

    async def nack(
        self,
        queue: str,
        id: int,
        lease_token: str,
        delay: float | None = None,
        error: str | None = None,
        dead: bool = False,
    ) -> NackResult:
        body = _drop_none({"lease_token": lease_token, "delay": delay, "error": error, "dead": dead or None})
        out = await self._call("POST", f"/queues/{_seg(queue)}/messages/{int(id)}/nack", json=body)
        return NackResult(id=out["id"], state=out["state"], available_at=_dt(out.get("available_at")))

    async def release(self, queue: str, id: int, lease_token: str) -> None:
        await self._call("POST", f"/queues/{_seg(queue)}/messages/{int(id)}/release", json={"lease_token": lease_token})

    async def extend(self, queue: str, id: int, lease_token: str, visibility_timeout: float | None = None) -> datetime:
        body = _drop_none({"lease_token": lease_token, "visibility_timeout": visibility_timeout})
        out = await self._call("POST", f"/queues/{_seg(queue)}/messages/{int(id)}/extend", json=body)
        expires: str = out["lease_expires_at"]
        return _dt(expires)

    async def set_priority(self, queue: str, id: int, priority: int) -> MessageStatus:
        out = await self._call("PUT", f"/queues/{_seg(queue)}/messages/{int(id)}/priority", json={"priority": priority})
        return _status(out)

    async def get_message(self, queue: str, id: int) -> MessageStatus:
        return _status(await self._call("GET", f"/queues/{_seg(queue)}/messages/{int(id)}"))

    async def cancel(self, queue: str, id: int) -> None:
        await self._call("DELETE", f"/queues/{_seg(queue)}/messages/{int(id)}")

    # ---- dead letters --------------------------------------------------------------------------

    async def dead_letters(
        self, queue: str, after: int | None = None, limit: int = 100
    ) -> tuple[list[MessageStatus], int | None]:
        params: dict[str, Any] = {"limit": limit}
        if after is not None:
            params["after"] = after
        out = await self._call("GET", f"/queues/{_seg(queue)}/dlq", params=params)
        return [_status(m) for m in out["messages"]], out.get("next_after")

    async def redrive(self, queue: str, ids: list[int] | None = None, rate: int | None = None) -> RedriveResult:
        body: dict[str, Any] = {} if ids is None else {"ids": [int(i) for i in ids]}
        if rate is not None:
            body["rate"] = rate
        out = await self._call("POST", f"/queues/{_seg(queue)}/dlq/redrive", json=body)
        job = out.get("job")
        return RedriveResult(
            redriven=list(out.get("redriven") or []),
            not_found=list(out.get("not_found") or []),
            job=None if job is None else _job(job),
        )

    async def redrive_status(self, queue: str) -> RedriveJob:
        return _job(await self._call("GET", f"/queues/{_seg(queue)}/redrive"))

    async def stop_redrive(self, queue: str) -> RedriveJob:
        return _job(await self._call("DELETE", f"/queues/{_seg(queue)}/redrive"))

    # ---- the group -----------------------------------------------------------------------------

    async def cluster_status(self) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call("GET", "/cluster")
        return answer

    async def add_member(self, address: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call("POST", "/cluster/members", json={"address": address})
        return answer

    async def remove_member(self, member: str) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call("DELETE", f"/cluster/members/{_seg(member)}")
        return answer

    async def transfer_leader(self, to: str | None = None) -> dict[str, Any]:
        answer: dict[str, Any] = await self._call("POST", "/cluster/transfer-leader", json={"to": to})
        return answer

    # ---- wire <-> types ------------------------------------------------------------------------------

    # ---- backup and restore (HTTP only) ---------------------------------------------------------

    async def backup(self, out: BinaryIO) -> None:
        """Stream this node's backup (it must be the leader) into `out`."""
        try:
            async with self._http.stream("GET", "/backup", timeout=httpx.Timeout(self.timeout, read=None)) as resp:
                if resp.status_code >= 400:
                    await resp.aread()
                    raise _error_from(resp)
                async for chunk in resp.aiter_bytes():
                    out.write(chunk)
        except httpx.TimeoutException as err:
            raise TransportError(f"backup from {self.base_url} timed out ({type(err).__name__})") from err
        except httpx.HTTPError as err:
            raise TransportError(f"backup from {self.base_url} broke off: {err or type(err).__name__}") from err

    async def restore_chunk(self, restore_id: str, index: int, records: list[dict[str, Any]]) -> dict[str, Any]:
        body = {"restore_id": restore_id, "index": index, "records": records}
        answer: dict[str, Any] = await self._call(
            "POST", "/restore", json=body, timeout=httpx.Timeout(max(self.timeout, 60.0))
        )
        return answer


def _error_from(resp: httpx.Response) -> Exception:
    detail = None
    try:
        body = resp.json()
        if isinstance(body, dict):
            detail = body.get("detail")
    except ValueError:
        pass
    if not isinstance(detail, str) or not detail:
        detail = resp.text.strip()[:500] or resp.reason_phrase or "error"
    return error_for(resp.status_code, detail, resp.headers.get(LEADER_HEADER), resp.headers.get("retry-after"))


def _seg(name: str) -> str:
    return quote(str(name), safe="")


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _enqueue_body(m: NewMessage) -> dict[str, Any]:
    if isinstance(m.payload, (bytes, bytearray, memoryview)):
        raise InvalidRequestError(
            "bytes payloads cannot be sent over HTTP: use a grpc:// URL, or encode them (e.g. base64) into a JSON value"
        )
    body = _drop_none(
        {
            "priority": m.priority,
            "group": m.group,
            "delay": m.delay,
            "headers": m.headers,
            "dedup_key": m.dedup_key,
        }
    )
    body["payload"] = m.payload
    if m.deliver_at is not None:
        body["deliver_at"] = _iso(m.deliver_at)
    if m.ttl is not None:
        body["ttl"] = m.ttl
    if m.expires_at is not None:
        body["expires_at"] = _iso(m.expires_at)
    if m.depends_on:
        deps = []
        for item in map(dependency_of, m.depends_on):
            if isinstance(item, Dependency):
                deps.append({"id": item.id} if item.queue is None else {"id": item.id, "queue": item.queue})
            else:
                deps.append({"batch_index": item.index})
        body["depends_on"] = deps
    return body


def _iso(at: datetime) -> str:
    # A naive time is taken as local time, as datetime itself does; the wire wants UTC.
    return at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _job(d: dict[str, Any]) -> RedriveJob:
    return RedriveJob(
        rate=d["rate"],
        total=d["total"],
        moved=d["moved"],
        remaining=d["remaining"],
        started_at=_dt(d["started_at"]),
        state=d["state"],
    )


@overload
def _dt(value: str) -> datetime: ...
@overload
def _dt(value: str | None) -> datetime | None: ...
def _dt(value: str | None) -> datetime | None:
    if value is None:
        return None
    return datetime.fromisoformat(value)


def _payload(d: dict[str, Any]) -> Any:
    b64 = d.get("payload_base64")
    if b64 is not None:
        return base64.b64decode(b64)
    return d.get("payload")


def _message(queue: str, d: dict[str, Any]) -> Message:
    return Message(
        queue=queue,
        id=d["id"],
        payload=_payload(d),
        priority=d["priority"],
        group=d["group"],
        deliveries=d["deliveries"],
        lease_token=d["lease_token"],
        lease_expires_at=_dt(d["lease_expires_at"]),
        enqueued_at=_dt(d["enqueued_at"]),
        headers=d.get("headers"),
    )


def _status(d: dict[str, Any]) -> MessageStatus:
    return MessageStatus(
        id=d["id"],
        queue=d["queue"],
        state=d["state"],
        priority=d.get("priority"),
        group=d.get("group"),
        deliveries=d.get("deliveries", 0),
        enqueued_at=_dt(d.get("enqueued_at")),
        available_at=_dt(d.get("available_at")),
        lease_expires_at=_dt(d.get("lease_expires_at")),
        acked_at=_dt(d.get("acked_at")),
        last_error=d.get("last_error"),
        result=d.get("result"),
        headers=d.get("headers"),
        dedup_key=d.get("dedup_key"),
        payload=_payload(d),
        depends_on=None if d.get("depends_on") is None else [Dependency(x["id"], x["queue"]) for x in d["depends_on"]],
        expires_at=_dt(d.get("expires_at")),
        dead_reason=d.get("dead_reason"),
    )


_COUNT_FIELDS = ("ready", "delayed", "leased", "dead", "acked_retained", "backlog", "waiting")


def _queue_info(d: dict[str, Any]) -> QueueInfo:
    counts = d.get("counts") or {}
    settings = dict(d.get("settings") or {})
    if isinstance(settings.get("weights"), dict):
        # JSON object keys are strings; priority classes are ints.
        settings["weights"] = {int(k): v for k, v in settings["weights"].items()}
    return QueueInfo(
        name=d["name"],
        settings=settings,
        counts=QueueCounts(**{k: counts.get(k, 0) for k in _COUNT_FIELDS}),
        totals=dict(d.get("totals") or {}),
        created_at=_dt(d.get("created_at")),
    )
