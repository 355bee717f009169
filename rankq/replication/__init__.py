"""The boundary to the consensus engine: propose a batch of commands, apply it on every member."""

from .node import (
    COMPACTION_MAX_BYTES,
    COMPACTION_MIN_ENTRIES,
    COMPACTION_MIN_SECONDS,
    BindError,
    RaftNode,
    RaftSettings,
    ReplicationError,
)
from .secret import SecretError
from .state_machine import InternalError
from .transport import ProbeError, parse_address

__all__ = [
    "COMPACTION_MAX_BYTES",
    "COMPACTION_MIN_ENTRIES",
    "COMPACTION_MIN_SECONDS",
    "BindError",
    "RaftNode",
    "RaftSettings",
    "ReplicationError",
    "InternalError",
    "SecretError",
    "ProbeError",
    "parse_address",
]
