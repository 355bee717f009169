"""The queue engine: a pure, deterministic state machine (commands in, results out, no I/O)."""

from . import commands
from .config import DEFAULT_WEIGHTS, STRICT, WEIGHTED, QueueConfig
from .engine import Engine
from .errors import Conflict, EngineError, Full, Invalid, NotFound, TooLarge
from .message import Delivery, MessageInfo

__all__ = [
    "commands",
    "DEFAULT_WEIGHTS",
    "STRICT",
    "WEIGHTED",
    "QueueConfig",
    "Engine",
    "Conflict",
    "EngineError",
    "Full",
    "Invalid",
    "NotFound",
    "TooLarge",
    "Delivery",
    "MessageInfo",
]
