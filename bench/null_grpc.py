"""The gRPC framework ceiling: rankq.v1.RankQ on the same grpc.aio stack, doing no queue work.

EnqueueStream reads each stream message (protobuf parsing) and answers at once with one ack per
request, echoing its ref, in the shape rankq.proto gives the stream (single requests or frames);
Enqueue and EnqueueBatch answer made-up ids. The server options are those of `rankq server`.

    python -m bench.null_grpc --port 19090
"""

from __future__ import annotations

import argparse
import asyncio
import itertools

import grpc

from rankq.server.proto import rankq_pb2 as pb
from rankq.server.proto import rankq_pb2_grpc as pb_grpc

MAX_MESSAGE_BYTES = 65 * 1024 * 1024
FRAMED = hasattr(pb, "EnqueueStreamRequest")


class NullRankQ(pb_grpc.RankQServicer):
    def __init__(self) -> None:
        self.ids = itertools.count(1)

    async def Enqueue(self, request, context):
        return pb.EnqueueResponse(id=next(self.ids))

    async def EnqueueBatch(self, request, context):
        return pb.EnqueueBatchResponse(results=[pb.EnqueueResponse(id=next(self.ids)) for _ in request.messages])

    async def EnqueueStream(self, request_iterator, context):
        ids = self.ids
        if FRAMED:
            async for frame in request_iterator:
                yield pb.EnqueueStreamResponse(acks=[pb.EnqueueAck(ref=r.ref, id=next(ids)) for r in frame.requests])
        else:
            async for req in request_iterator:
                yield pb.EnqueueAck(ref=req.ref, id=next(ids))


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ]
    )
    pb_grpc.add_RankQServicer_to_server(NullRankQ(), server)
    server.add_insecure_port(f"{host}:{port}")
    await server.start()
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
