"""CPU cost of the Raft peer connection: PySyncObj's own (with a password) vs RankQ's PeerConnection.

    python -m bench.peer_transport [--messages 4000] [--entry-bytes 16384] [--reps 5]

Both sides of a socketpair in one process, one poller: messages shaped like append-entries (one
entry of `--entry-bytes`, the size of a typical batch) are sent and received, sealed with the same
secret. Reported: CPU microseconds per message (process time, so other load on the machine matters
less than for wall-clock throughput), median of `--reps`, the two implementations interleaved.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time

from pysyncobj.config import SyncObjConf
from pysyncobj.encryptor import getEncryptor
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import TcpConnection

from rankq.replication.transport import PeerConnection


def pysyncobj_pair(poller, encryptor, conf, a, b):
    sender = TcpConnection(
        poller, socket=a, timeout=60, sendBufferSize=conf.sendBufferSize, recvBufferSize=conf.recvBufferSize
    )
    receiver = TcpConnection(
        poller, socket=b, timeout=60, sendBufferSize=conf.sendBufferSize, recvBufferSize=conf.recvBufferSize
    )
    sender.encryptor = receiver.encryptor = encryptor
    return sender, receiver


def rankq_pair(poller, encryptor, conf, a, b):
    sender = PeerConnection(poller, encryptor, 60, conf.sendBufferSize, conf.recvBufferSize, sock=a)
    receiver = PeerConnection(poller, encryptor, 60, conf.sendBufferSize, conf.recvBufferSize, sock=b)
    sender.authenticated = receiver.authenticated = True  # past the handshake, as between members
    return sender, receiver


def run_once(make_pair, encryptor, messages: int, entry_bytes: int) -> float:
    conf = SyncObjConf()
    poller = createPoller("auto")
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    sender, receiver = make_pair(poller, encryptor, conf, a, b)
    got = []
    receiver.setOnMessageReceivedCallback(got.append)
    entry = os.urandom(entry_bytes // 2).hex().encode()[:entry_bytes]  # compresses about 2:1, like JSON
    start = time.process_time()
    for i in range(messages):
        sender.send(
            {
                "type": "append_entries",
                "term": 3,
                "commit_index": i,
                "prevLogIdx": i,
                "prevLogTerm": 3,
                "entries": [(entry, i + 1, 3)],
            }
        )
        poller.poll(0)
    while len(got) < messages:
        poller.poll(0.1)
    took = time.process_time() - start
    sender.disconnect()
    receiver.disconnect()
    assert got[-1]["commit_index"] == messages - 1
    return took / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--entry-bytes", type=int, default=16384)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    encryptor = getEncryptor("bench-secret-" + os.urandom(8).hex())
    results: dict[str, list[float]] = {"pysyncobj": [], "rankq": []}
    for _ in range(args.reps):
        results["pysyncobj"].append(run_once(pysyncobj_pair, encryptor, args.messages, args.entry_bytes))
        results["rankq"].append(run_once(rankq_pair, encryptor, args.messages, args.entry_bytes))
    for name, values in results.items():
        print(
            f"{name:10s} {statistics.median(values):8.1f} µs CPU per message "
            f"(runs: {', '.join(f'{v:.1f}' for v in values)})"
        )
    ratio = statistics.median(results["rankq"]) / statistics.median(results["pysyncobj"])
    print(f"rankq / pysyncobj: {ratio:.3f}")


if __name__ == "__main__":
    main()
