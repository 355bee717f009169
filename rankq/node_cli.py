"""`rankq node ...`: commands a server's own pod runs, e.g. the preStop hook `rankq node drain`."""

from __future__ import annotations

import os
import sys
import time

import click

from .client import Client
from .client.errors import RankQError


def quorum(size: int) -> int:
    return size // 2 + 1


def quorum_critical(status: dict, me: str) -> bool:
    """Would the group lose its majority if `me` stopped now? (judged from the leader's view)"""
    members = status.get("members") or []
    others_up = sum(1 for m in members if m["id"] != me and (m.get("healthy") or m.get("role") == "leader"))
    return others_up < quorum(len(members))


def drain(url: str, timeout: float, poll: float = 0.5, echo=lambda s: click.echo(s, err=True)) -> int:
    """Move leadership off this node, then wait while stopping it would cost the group its quorum."""
    deadline = time.monotonic() + timeout
    token = os.environ.get("RANKQ_API_TOKEN") or None
    with Client(url, timeout=3, retries=0, token=token) as node:
        try:
            status = node.cluster_status()
        except RankQError as err:
            echo(f"drain: node not answering ({err}); nothing to protect")
            return 0
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
                    with Client(url, timeout=10, retries=0, token=token) as admin:
                        admin.transfer_leader(None)
                    time.sleep(poll)
                    continue
                leader = next((m for m in status["members"] if m["role"] == "leader"), None)
                view = status
                if leader and leader.get("http_url"):
                    with Client(leader["http_url"], timeout=3, retries=0, token=token) as other:
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
def drain_command(url: str, timeout: float) -> None:
    """preStop hook: hand leadership away and wait while this node is quorum-critical."""
    sys.exit(drain(url.rstrip("/"), timeout))
