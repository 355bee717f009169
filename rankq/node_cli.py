"""`rankq node ...`: commands a server's own pod runs, e.g. the preStop hook `rankq node drain`."""

from __future__ import annotations

import os
import ssl
import sys
import time

import click
import httpx


def quorum(size: int) -> int:
    return size // 2 + 1


def quorum_critical(status: dict, me: str) -> bool:
    """Would the group lose its majority if `me` stopped now? (judged from the leader's view)"""
    members = status.get("members") or []
    others_up = sum(1 for m in members if m["id"] != me and (m.get("healthy") or m.get("role") == "leader"))
    return others_up < quorum(len(members))


def drain(url: str, timeout: float, poll: float = 0.5, echo=lambda s: click.echo(s, err=True),
          ca: str | None = None) -> int:
    """Move leadership off this node, then wait while stopping it would cost the group its quorum.
    It presents the pod's admin token (RANKQ_ADMIN_TOKEN, else RANKQ_API_TOKEN): the transfer needs it."""
    deadline = time.monotonic() + timeout
    token = os.environ.get("RANKQ_ADMIN_TOKEN") or os.environ.get("RANKQ_API_TOKEN")
    verify: bool | ssl.SSLContext = True
    if ca:
        verify = ssl.create_default_context(cafile=ca)
        verify.check_hostname = False  # this pod's own loopback: the chain is checked, not the name
    with httpx.Client(timeout=3, headers={"Authorization": f"Bearer {token}"} if token else None,
                      verify=verify) as http:
        try:
            r = http.get(f"{url}/api/v1/cluster")
            status = r.json()
        except (httpx.HTTPError, ValueError) as err:
            echo(f"drain: node not answering ({err}); nothing to protect")
            return 0
        if r.status_code != 200:
            echo(f"drain: cannot read the group's status ({r.status_code}: {status.get('detail')}); not waiting")
            return 1
        me = status["self"]
        if len(status.get("members") or []) <= 1:
            echo("drain: single-member group; nothing to hand over")
            return 0
        while time.monotonic() < deadline:
            try:
                status = http.get(f"{url}/api/v1/cluster").json()
                if status.get("leader") is None:
                    echo("drain: no leader known (group already without quorum); not waiting")
                    return 0
                if status["leader"] == me:
                    echo("drain: this node leads; transferring leadership")
                    http.post(f"{url}/api/v1/cluster/transfer-leader", json={"to": None}, timeout=10)
                    time.sleep(poll)
                    continue
                leader = next((m for m in status["members"] if m["role"] == "leader"), None)
                view = status
                if leader and leader.get("http_url"):
                    view = http.get(f"{leader['http_url']}/api/v1/cluster").json()
                if not quorum_critical(view, me):
                    echo(f"drain: {me} is not quorum-critical; stopping is safe")
                    return 0
                echo(f"drain: {me} is quorum-critical; waiting")
            except (httpx.HTTPError, ValueError, KeyError) as err:
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
@click.option("--ca", default=None, type=click.Path(dir_okay=False),
              help="CA of the node's TLS certificate (for an https:// --url).")
def drain_command(url: str, timeout: float, ca: str | None) -> None:
    """preStop hook: hand leadership away and wait while this node is quorum-critical."""
    sys.exit(drain(url.rstrip("/"), timeout, ca=ca))
