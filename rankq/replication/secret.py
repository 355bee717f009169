"""The secret that authenticates and encrypts Raft traffic: configured, or generated once per node.

Why generate: a node must never run its Raft port unauthenticated (the peer protocol is pickle).
A lone node needs no one else to know its secret, so it writes a random one into its data dir
(mode 0600) and keeps using it across restarts. Members of a group must share one secret; they
cannot each invent theirs, so a node given peers but no secret refuses to start.
"""

from __future__ import annotations

import os
import secrets

SECRET_FILE = "raft-secret"  # in the data dir; copy it to new members to grow a lone node


class SecretError(ValueError):
    """No usable Raft secret: the message says what to pass."""


def secret_path(data_dir: str) -> str:
    return os.path.join(data_dir, SECRET_FILE)


def resolve_secret(configured: str | None, data_dir: str, has_peers: bool) -> str:
    """The configured secret, else the one in the data dir, else (lone node only) a new one."""
    if configured is not None and configured.strip():
        return configured.strip()
    path = secret_path(data_dir)
    try:
        with open(path, encoding="utf-8") as fh:
            stored = fh.read().strip()
    except FileNotFoundError:
        stored = ""
    if stored:
        return stored
    if has_peers:
        raise SecretError(
            "members of a group must share a Raft secret: pass the same --raft-password-file "
            "(or RANKQ_RAFT_PASSWORD) to every member, e.g. a file made with "
            "`openssl rand -base64 32 > raft-secret`"
        )
    return _create(path)


def _create(path: str) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(value + "\n")
    return value
