"""The operator's connections to one group's members: rankq's own `AsyncClient`, one per member URL.

Admin calls (cluster status, membership, leadership, queue settings) go through the client so
they get its typed errors (`ConflictError`, `NotFoundError`, `TransportError`, ...) instead of
status codes and error text. The operator never retries inside a call: every tick re-observes and
decides again, so clients are built with `retries=0`.
"""

from __future__ import annotations

import ssl

from ..client import AsyncClient
from ..client.http_transport import HttpTransport

OBSERVE_TIMEOUT = 0.7  # seconds per member for /api/v1/cluster; a dead pod must not stall the check
QUEUE_TIMEOUT = 3.0  # reading or changing the queue's settings through the leader
ADMIN_TIMEOUT = 10.0  # membership changes and leadership transfers wait for a commit


class GroupClients:
    """Clients by (URL, timeout), rebuilt when the group's API token or CA changes."""

    def __init__(self) -> None:
        self.token: str | None = None
        self.ca: str | None = None  # PEM the members' certificates are verified against (TLS)
        self._clients: dict[tuple[str, float], AsyncClient] = {}

    async def set_token(self, token: str | None) -> None:
        if token != self.token:
            await self.close()
            self.token = token

    async def trust(self, ca: str | None) -> None:
        """Verify the members' certificates against the PEM `ca` (None: plain HTTP)."""
        if ca != self.ca:
            await self.close()
            self.ca = ca

    def at(self, url: str, timeout: float = ADMIN_TIMEOUT) -> AsyncClient:
        client = self._clients.get((url, timeout))
        if client is None:
            if self.ca is None:
                client = AsyncClient(url, timeout=timeout, retries=0, token=self.token)
            else:  # the CA arrives as PEM from a Secret, not as a file: a transport that trusts it
                headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
                transport = HttpTransport(
                    url, timeout=timeout, headers=headers, verify=ssl.create_default_context(cadata=self.ca)
                )
                client = AsyncClient(url, timeout=timeout, retries=0, transport=transport)
            self._clients[(url, timeout)] = client
        return client

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()
