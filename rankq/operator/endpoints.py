"""Where the operator reaches a member: its HTTP URL and its Raft address.

In a cluster both follow from the pod's stable DNS name (`specs.http_url`, `specs.raft_address`).
Out of cluster (development, tests) pods may stand for processes elsewhere: `--endpoints-file`
names a JSON file `{"<namespace>/<pod>": {"http": "http://host:port", "raft": "host:port"}}`,
re-read when it changes, that overrides both.
"""

from __future__ import annotations

import json
import os

from . import specs
from .models import QueueResource


class Endpoints:
    def http_url(self, q: QueueResource, pod: str) -> str:
        return specs.http_url(q, pod)

    def raft_address(self, q: QueueResource, pod: str) -> str:
        return specs.raft_address(q, pod)


class FileEndpoints(Endpoints):
    def __init__(self, filename: str) -> None:
        self.filename = filename
        self._mtime = -1.0
        self._map: dict[str, dict[str, str]] = {}

    def _lookup(self, q: QueueResource, pod: str) -> dict[str, str]:
        try:
            mtime = os.stat(self.filename).st_mtime_ns
            if mtime != self._mtime:
                with open(self.filename, encoding="utf-8") as fh:
                    self._map = json.load(fh)
                self._mtime = mtime
        except (OSError, ValueError):
            pass
        return self._map.get(f"{q.namespace}/{pod}", {})

    def http_url(self, q: QueueResource, pod: str) -> str:
        return self._lookup(q, pod).get("http") or super().http_url(q, pod)

    def raft_address(self, q: QueueResource, pod: str) -> str:
        return self._lookup(q, pod).get("raft") or super().raft_address(q, pod)
