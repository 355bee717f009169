"""The floor of the HTTP stack the hot routes run on: a bare ASGI app under uvicorn (httptools,
uvloop), no FastAPI. It reads each request's body and answers a fixed enqueue result.

    python -m bench.null_asgi --port 18080
"""

from __future__ import annotations

import argparse
import itertools

import uvicorn

_ids = itertools.count(1)


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    mid = next(_ids)
    body = b'{"id":%d,"seq":%d,"duplicate":false}' % (mid, mid)
    headers = [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": 201, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="warning", access_log=False, loop="uvloop", http="httptools"
    )


if __name__ == "__main__":
    main()
