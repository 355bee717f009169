"""The queue service with a real single-node Raft underneath, in-process: a dequeue whose caller is
cancelled after its command was proposed releases what the committed command leased."""

from __future__ import annotations

import asyncio

from serverproc import free_port

from rankq.engine import commands as c
from rankq.replication import RaftNode, RaftSettings
from rankq.server.service import QueueService


async def _cancelled_after_proposal(data_dir: str) -> None:
    node = RaftNode(RaftSettings(self_address=f"127.0.0.1:{free_port()}", data_dir=data_dir))
    service = QueueService(node)
    await service.start()
    try:
        async with asyncio.timeout(30):
            while not service.is_ready():
                await asyncio.sleep(0.02)
            await service.create_queue("q", {})
            [(mid, _)] = await service.enqueue("q", [c.NewMessage('"x"')])
            poll = asyncio.create_task(service.dequeue("q", 5, 10.0))
            for _ in range(10):  # a few turns of the loop: the Dequeue gets proposed
                if service._batches:
                    break
                await asyncio.sleep(0)
            assert service._batches, "the dequeue is in flight"  # its commit comes back on a later turn
            poll.cancel()
            while service.get_queue("q").totals.get("released", 0) < 1:
                await asyncio.sleep(0.02)
            info = service.get_message("q", mid)
            assert info.state == "ready" and info.deliveries == 0
            assert service.get_queue("q").totals["dequeued"] == 1  # it was leased, then given back
    finally:
        await service.stop()


def test_dequeue_cancelled_after_commit_releases(tmp_path):
    asyncio.run(_cancelled_after_proposal(str(tmp_path)))
