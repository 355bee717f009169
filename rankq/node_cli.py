"""`rankq node ...`: commands a server's own pod runs, e.g. the preStop hook `rankq node drain`."""

from __future__ import annotations

import os
import ssl
import sys
import time

import click

from .client import Client
from .client.errors import ApiError, RankQError, TransportError
from .client.http_transport import HttpTransport


def quorum(size: int) -> int:
    return size // 2 + 1


def quorum_critical(status: dict, me: str) -> bool:
    """Would the group lose its majority if `me` stopped now? (judged from the leader's view)"""
    members = status.get("members") or []
    others_up = sum(1 for m in members if m["id"] != me and (m.get("healthy") or m.get("role") == "leader"))
    return others_up < quorum(len(members))


def _client(url: str, timeout: float, token: str | None, ca: str | None) -> Client:
    """A client to a member; with `ca`, the chain is checked but not the name (the pod's own
    loopback, or a peer's address as the group reports it)."""
    if not ca:
        return Client(url, timeout=timeout, retries=0, token=token)
    verify = ssl.create_default_context(cafile=ca)
    verify.check_hostname = False
    transport = HttpTransport(
        url, timeout=timeout, headers={"Authorization": f"Bearer {token}"} if token else None, verify=verify
    )
    return Client(url, timeout=timeout, retries=0, transport=transport)


def drain(
    url: str, timeout: float, poll: float = 0.5, echo=lambda s: click.echo(s, err=True), ca: str | None = None
) -> int:
    """Move leadership off this node, then wait while stopping it would cost the group its quorum.
    It presents the pod's admin token (RANKQ_ADMIN_TOKEN, else RANKQ_API_TOKEN): the transfer needs it."""
    deadline = time.monotonic() + timeout
    token = os.environ.get("RANKQ_ADMIN_TOKEN") or os.environ.get("RANKQ_API_TOKEN") or None
    with _client(url, 3, token, ca) as node:
        try:
            status = node.cluster_status()
        except TransportError as err:
            echo(f"drain: node not answering ({err}); nothing to protect")
            return 0
        except ApiError as err:
            echo(f"drain: cannot read the group's status ({err.status}: {err.detail}); not waiting")
            return 1
        me = status["self"]
        if len(status.get("members") or []) <= 1:
            echo("drain: single-member group; nothing to hand over")
            return 0
        while time.monotonic() < deadline:
            try:
                status = node.cluster_status()
                if status.get("leader") is None:
                    echo("drain: no leader known (group already without quorum); not waiting")
                    return 0
                if status["leader"] == me:
                    echo("drain: this node leads; transferring leadership")
                    with _client(url, 10, token, ca) as admin:
                        admin.transfer_leader(None)
                    time.sleep(poll)
                    continue
                leader = next((m for m in status["members"] if m["role"] == "leader"), None)
                view = status
                if leader and leader.get("http_url"):
                    with _client(leader["http_url"], 3, token, ca) as other:
                        view = other.cluster_status()
                if not quorum_critical(view, me):
                    echo(f"drain: {me} is not quorum-critical; stopping is safe")
                    return 0
                echo(f"drain: {me} is quorum-critical; waiting")
            except (RankQError, KeyError) as err:
                echo(f"drain: {err}")
            time.sleep(poll)
    echo("drain: gave up waiting; stopping anyway")
    return 0


@click.group("node")
def node() -> None:
    """Commands for a server's own pod (lifecycle hooks)."""


@node.command("drain")
@click.option("--url", default="http://127.0.0.1:8080", show_default=True, help="This node's HTTP API.")
@click.option("--timeout", default=50.0, show_default=True, type=float, help="Most seconds to wait.")
@click.option(
    "--ca",
    default=None,
    type=click.Path(dir_okay=False),
    help="CA of the node's TLS certificate (for an https:// --url).",
)
def drain_command(url: str, timeout: float, ca: str | None) -> None:
    """preStop hook: hand leadership away and wait while this node is quorum-critical."""
    sys.exit(drain(url.rstrip("/"), timeout, ca=ca))
