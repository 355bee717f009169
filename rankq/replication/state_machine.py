"""The engine as a PySyncObj consumer: one replicated call applies a whole batch of commands.

Batching at this boundary is what makes high message rates possible: the consensus engine pays its
per-entry cost (pickle, journal append, network round) once per batch, not once per message.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from pysyncobj import SyncObjConsumer, replicated

from ..engine import Engine, EngineError

log = logging.getLogger("rankq.replication")


class InternalError(Exception):
    """A command failed with an unexpected exception (a bug); the batch went on without it."""


class EngineStateMachine(SyncObjConsumer):
    def __init__(self, on_woken: Callable[[set[str]], None] | None = None) -> None:
        # Attributes set before SyncObjConsumer.__init__ are not part of the snapshot.
        self.lock = threading.Lock()  # guards the engine between the Raft thread and readers
        self.on_woken = on_woken
        super().__init__()
        # Everything set from here on is snapshotted.
        self.engine = Engine()
        # Raft address -> how clients reach that member (node id, HTTP URL, gRPC target).
        self.directory: dict[str, dict] = {}

    @replicated
    def apply_batch(self, now: int, commands: list) -> list:
        results = []
        with self.lock:
            engine = self.engine
            for cmd in commands:
                try:
                    results.append(engine.apply(cmd, now))
                except EngineError as err:
                    results.append(err)
                except Exception as err:  # never let one bad command stop the log
                    log.exception("command %r failed", cmd)
                    results.append(InternalError(f"{type(err).__name__}: {err}"))
            woke = engine.drain_woken()
        if woke and self.on_woken is not None:
            self.on_woken(woke)
        return results

    @replicated
    def register_member(self, address: str, info: dict) -> None:
        """Publish how clients reach a member, so every node can name and point to the leader."""
        with self.lock:
            self.directory[address] = dict(info)
