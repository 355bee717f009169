"""The boundary to the consensus engine: propose a batch of commands, apply it on every member."""

from .node import RaftNode, RaftSettings, ReplicationError
from .state_machine import InternalError

__all__ = ["RaftNode", "RaftSettings", "ReplicationError", "InternalError"]
