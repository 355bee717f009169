"""The HTTP framework ceiling: RankQ's routes on the same FastAPI/uvicorn stack, doing no queue work.

Each handler parses its body with the same wire models as the real server and answers a body of
the same shape, so the gap between this and `rankq server` is what the queue itself costs.

    python -m bench.null_http --port 18080
"""

from __future__ import annotations

import argparse
import itertools

import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, Response

from rankq import schemas as s

LEASE_TOKEN = "0" * 32
FAKE_TIME = "2024-01-01T00:00:00.000Z"


def raw(body: str, status: int = 200) -> Response:
    return Response(content=body, status_code=status, media_type="application/json")


def build_app() -> FastAPI:
    app = FastAPI(title="RankQ null server")
    api = APIRouter(prefix="/api/v1")
    ids = itertools.count(1)

    @api.post("/queues", status_code=201)
    async def create_queue(body: s.CreateQueue):
        return JSONResponse({"name": body.name}, status_code=201)

    @api.get("/queues/{name}")
    async def get_queue(name: str):
        return JSONResponse({"name": name, "counts": {"ready": 0, "delayed": 0, "leased": 0, "dead": 0}})

    @api.post("/queues/{name}/messages", status_code=201)
    async def enqueue(name: str, body: s.EnqueueRequest):
        mid = next(ids)
        return raw('{"id":%d,"seq":%d,"duplicate":false}' % (mid, mid), 201)

    @api.post("/queues/{name}/messages/batch", status_code=201)
    async def enqueue_batch(name: str, body: s.EnqueueBatchRequest):
        items = ",".join('{"id":%d,"seq":%d,"duplicate":false}' % (i, i) for i in (next(ids) for _ in body.messages))
        return raw('{"results":[' + items + "]}", 201)

    @api.post("/queues/{name}/dequeue")
    async def dequeue(name: str, body: s.DequeueRequest | None = None):
        body = body or s.DequeueRequest()
        parts = []
        for _ in range(body.max):
            mid = next(ids)
            parts.append(
                '{"id":%d,"seq":%d,"priority":3,"group":"default","deliveries":1,"lease_token":"%s",'
                '"lease_expires_at":"%s","enqueued_at":"%s","headers":null,"payload":"x"}'
                % (mid, mid, LEASE_TOKEN, FAKE_TIME, FAKE_TIME)
            )
        return raw('{"messages":[' + ",".join(parts) + "]}")

    @api.post("/queues/{name}/ack")
    async def ack_batch(name: str, body: s.AckBatchRequest):
        results = [{"id": i.id, "ok": True, "status": 200, "detail": None} for i in body.items]
        return JSONResponse({"results": results})

    app.include_router(api)

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        return {"status": "ready"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The same uvicorn settings as `rankq server`.
    uvicorn.run(build_app(), host=args.host, port=args.port, log_config=None, access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
