"""A command that cannot be written to the log fails alone, not with the batch it was gathered in.

The edges refuse what could not be serialized (JSON nested too deep, say), so this drives the
service directly with such a command, past the edges, to check the second line of defence: the
group commit splits a batch that does not serialize and proposes its commands one by one.
"""

from __future__ import annotations

import asyncio

import pytest
from serverproc import free_port

from rankq.engine import Invalid
from rankq.engine import commands as c
from rankq.replication import RaftNode, RaftSettings
from rankq.server.service import QueueService

pytestmark = pytest.mark.timeout(60)


def test_an_unserializable_command_fails_alone(tmp_path):
    async def scenario() -> tuple[list, int]:
        node = RaftNode(RaftSettings(self_address=f"127.0.0.1:{free_port()}", data_dir=str(tmp_path)))
        service = QueueService(node)
        await service.start()
        try:
            for _ in range(500):
                if service.is_ready():
                    break
                await asyncio.sleep(0.02)
            await service.create_queue("iso", {})
            deep: list = []
            for _ in range(5000):
                deep = [deep]
            good = [service.enqueue("iso", [c.NewMessage(payload=str(i))]) for i in range(300)]
            bad = service.submit(c.Ack("iso", (c.AckItem(1, "token", deep),)))
            good.insert(150, bad)
            out = await asyncio.gather(*good, return_exceptions=True)
            return out, service.get_queue("iso").counts["ready"]
        finally:
            await service.stop()

    out, ready = asyncio.run(scenario())
    bad = out.pop(150)
    assert isinstance(bad, Invalid), bad
    failed = [r for r in out if isinstance(r, BaseException)]
    assert not failed, failed[:3]
    assert ready == 300
