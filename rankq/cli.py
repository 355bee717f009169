"""The `rankq` command: run a server, manage queues, send and receive messages.

Client commands talk to the server at --url (or $RANKQ_URL) and print rich tables, or JSON with
--output json. A failed request prints one line, e.g. `error: 404: queue 'x' not found`, and exits
with status 1; a usage mistake exits with status 2.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, fields
from typing import Any

import click

from .cli_args import DEPENDENCY, SECONDS, parse_headers, parse_json_or_text, settings_options, take_settings
from .cli_output import (
    add_row,
    iso_utc,
    jsonable,
    key_values,
    note,
    print_json,
    print_table,
    short,
    show,
    table,
)
from .client.errors import RankQError
from .engine.config import INT64_MAX, INT64_MIN

DEFAULT_URL = "http://127.0.0.1:8080"
STDIN_BATCH = 100


class RankQGroup(click.Group):
    """The top-level group: a client error becomes one line on stderr and exit status 1.

    `rankq server` is loaded when asked for: it needs the server extra, and a client-only install
    gets a command that says so instead."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), "server"})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name == "server" and cmd_name not in self.commands:
            from .extras import MissingExtra, require

            try:
                with require("server"):
                    from .server.command import server
            except MissingExtra as err:
                return _missing_extra_command(cmd_name, err)
            self.add_command(server)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RankQError as err:
            click.echo(f"error: {err}", err=True)
            ctx.exit(1)


@dataclass
class CliState:
    url: str
    output: str
    timeout: float
    token: str | None = None
    token_file: str | None = None
    ca: str | None = None
    _client: Any = None

    @property
    def json(self) -> bool:
        return self.output == "json"

    def client(self):
        """The client for --url, opened on first use and closed when the command ends."""
        if self._client is None:
            from .client import Client

            try:
                client = Client(
                    self.url,
                    timeout=self.timeout,
                    token=None if self.token_file else self.token,
                    token_file=self.token_file,
                    ca=self.ca,
                )
            except ValueError as err:
                raise click.BadParameter(str(err), param_hint="'--url'") from err
            except ImportError as err:
                raise click.UsageError(f"cannot use {self.url}: {err}") from err
            self._client = click.get_current_context().find_root().with_resource(client)
        return self._client


pass_state = click.make_pass_decorator(CliState)


def _missing_extra_command(name: str, err: Exception) -> click.Command:
    """Stands in for a command whose extra is not installed: any use prints which one to install."""

    def fail(args: tuple[str, ...]) -> None:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)

    return click.Command(
        name,
        callback=fail,
        help=f"(not installed) {err}",
        add_help_option=False,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        context_settings={"ignore_unknown_options": True},
    )


@click.group(cls=RankQGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rankq")
@click.option(
    "--url",
    envvar="RANKQ_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="Server for the client commands: http(s)://host:port or grpc(s)://host:port "
    "(env RANKQ_URL); https and grpcs use TLS.",
)
@click.option(
    "--output",
    "-o",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Tables for people, JSON for scripts.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Seconds each request may take (a long poll gets its --wait on top).",
)
@click.option(
    "--token",
    envvar="RANKQ_API_TOKEN",
    default=None,
    show_default=False,
    help="API token for servers that require one (env RANKQ_API_TOKEN).",
)
@click.option(
    "--token-file",
    envvar="RANKQ_TOKEN_FILE",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="File holding the API token; used instead of --token (env RANKQ_TOKEN_FILE).",
)
@click.option(
    "--ca",
    envvar="RANKQ_CA",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="PEM file of the CA that signed the servers' TLS certificates (env RANKQ_CA).",
)
@click.pass_context
def main(
    ctx: click.Context, url: str, output: str, timeout: float, token: str | None, token_file: str | None, ca: str | None
) -> None:
    """RankQ: replicated priority queues."""
    ctx.obj = CliState(url=url, output=output, timeout=timeout, token=token, token_file=token_file, ca=ca)


# ---- queues ------------------------------------------------------------------------------------


@main.group()
def queue() -> None:
    """Create, list, show, change and delete queues."""


def print_queue(state: CliState, info) -> None:
    if state.json:
        print_json(info)
        return
    rows = [(k, v) for k, v in info.settings.items()]
    print_table(key_values(f"queue {info.name}", rows))
    c = info.counts
    t = table("ready", "delayed", "waiting", "leased", "dead", "acked (retained)")
    add_row(t, str(c.ready), str(c.delayed), str(c.waiting), str(c.leased), str(c.dead), str(c.acked_retained))
    print_table(t)
    if info.totals:
        t = table(*info.totals.keys(), title="since created")
        add_row(t, *(str(v) for v in info.totals.values()))
        print_table(t)


@queue.command("create")
@click.argument("name")
@settings_options
@pass_state
def queue_create(state: CliState, name: str, **kwargs) -> None:
    """Create queue NAME; settings not given take the server's defaults."""
    info = state.client().create_queue(name, **take_settings(kwargs))
    if state.json:
        print_json(info)
    else:
        click.echo(f"created queue {info.name} (policy {info.settings.get('policy')})")


@queue.command("list")
@pass_state
def queue_list(state: CliState) -> None:
    """List queues with their message counts."""
    queues = state.client().list_queues()
    if state.json:
        print_json(queues)
        return
    if not queues:
        note("no queues")
        return
    t = table(
        "name",
        "policy",
        "ready",
        "delayed",
        "waiting",
        "leased",
        "dead",
        ready={"justify": "right"},
        delayed={"justify": "right"},
        waiting={"justify": "right"},
        leased={"justify": "right"},
        dead={"justify": "right"},
    )
    for q in queues:
        c = q.counts
        add_row(
            t,
            q.name,
            str(q.settings.get("policy")),
            str(c.ready),
            str(c.delayed),
            str(c.waiting),
            str(c.leased),
            str(c.dead),
        )
    print_table(t)


@queue.command("show")
@click.argument("name")
@pass_state
def queue_show(state: CliState, name: str) -> None:
    """Show the settings and counts of queue NAME."""
    print_queue(state, state.client().get_queue(name))


@queue.command("update")
@click.argument("name")
@settings_options
@pass_state
def queue_update(state: CliState, name: str, **kwargs) -> None:
    """Change settings of queue NAME live; settings not given keep their values."""
    changes = take_settings(kwargs)
    if not changes:
        raise click.UsageError("nothing to change: give at least one setting (see --help)")
    info = state.client().update_queue(name, **changes)
    if state.json:
        print_json(info)
    else:
        values = (("none" if info.settings.get(k) is None else show(info.settings.get(k))) for k in changes)
        click.echo(f"updated queue {info.name}: " + ", ".join(f"{k}={v}" for k, v in zip(changes, values)))


@queue.command("delete")
@click.argument("name")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def queue_delete(state: CliState, name: str, yes: bool) -> None:
    """Delete queue NAME and every message in it."""
    if not yes:
        click.confirm(f"Delete queue {name!r} and all its messages?", abort=True, err=True)
    state.client().delete_queue(name)
    if state.json:
        print_json({"name": name, "deleted": True})
    else:
        click.echo(f"deleted queue {name}")


# ---- messages ----------------------------------------------------------------------------------


@main.command()
@click.argument("queue")
@click.argument("payload")
@click.option("--priority", "-p", type=int, help="Lower is served sooner (default: the queue's default).")
@click.option("--group", "-g", help="Fairness key.")
@click.option("--delay", type=SECONDS, metavar="SECONDS", help="Hold the message back this long.")
@click.option("--dedup-key", help="A repeat with this key inside the queue's dedup window returns the first id.")
@click.option("--header", "headers", multiple=True, metavar="KEY=VALUE", help="A message header; repeatable.")
@click.option(
    "--ttl",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Dead-letter the message as expired if it is not acked within this long.",
)
@click.option(
    "--depends-on",
    "depends_on",
    multiple=True,
    type=DEPENDENCY,
    metavar="ID|QUEUE/ID",
    help="Deliver only after this message is acked; repeatable.",
)
@click.option("--raw", is_flag=True, help="Send PAYLOAD as a string even if it is valid JSON.")
@pass_state
def send(
    state: CliState, queue: str, payload: str, priority, group, delay, dedup_key, headers, ttl, depends_on, raw
) -> None:
    """Enqueue PAYLOAD to QUEUE.

    PAYLOAD is sent as JSON when it parses as JSON, otherwise as a JSON string. With PAYLOAD `-`,
    each line of stdin is one message (empty lines are skipped), sent in batches of 100.
    """
    client = state.client()
    opts = {
        "priority": priority,
        "group": group,
        "delay": delay,
        "headers": parse_headers(headers),
        "ttl": ttl,
        "depends_on": list(depends_on) or None,
    }
    if payload != "-":
        res = client.enqueue(queue, parse_json_or_text(payload, raw), dedup_key=dedup_key, **opts)
        if state.json:
            print_json({"id": res.id, "duplicate": res.duplicate})
        elif res.duplicate:
            click.echo(f"message {res.id} (duplicate: the dedup key was seen before, nothing new enqueued)")
        else:
            click.echo(f"enqueued message {res.id}")
        return
    if dedup_key is not None:
        raise click.UsageError("--dedup-key names one message; it cannot be used with '-' (one message per line)")
    from .client import NewMessage

    results = []
    batch: list = []

    def flush() -> None:
        try:
            results.extend(client.enqueue_batch(queue, batch))
        except RankQError:
            if results:
                note(f"{len(results)} messages were enqueued before this failure")
            raise
        batch.clear()

    for line in sys.stdin:
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        batch.append(NewMessage(payload=parse_json_or_text(line, raw), **opts))
        if len(batch) >= STDIN_BATCH:
            flush()
    if batch:
        flush()
    if state.json:
        print_json([{"id": r.id, "duplicate": r.duplicate} for r in results])
    elif results:
        click.echo(f"enqueued {len(results)} messages (ids {results[0].id}..{results[-1].id})")
    else:
        note("no messages: stdin had no non-empty lines")


@main.command()
@click.argument("queue")
@click.option(
    "--max", "max_", type=click.IntRange(1, 1000), default=1, show_default=True, help="Most messages to take."
)
@click.option(
    "--wait",
    type=click.FloatRange(0, 20),
    default=0,
    show_default=True,
    metavar="SECONDS",
    help="Wait this long for a message when none is ready.",
)
@click.option(
    "--visibility-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Lease length (default: the queue's).",
)
@click.option("--ack", "ack_", is_flag=True, help="Ack the messages right away (no result).")
@pass_state
def receive(state: CliState, queue: str, max_: int, wait: float, visibility_timeout, ack_: bool) -> None:
    """Lease messages from QUEUE and print them with their lease tokens.

    Without --ack the messages stay leased: finish them with `rankq ack QUEUE ID TOKEN` (or `nack`)
    before the lease runs out, or they are delivered again.
    """
    client = state.client()
    messages = client.dequeue(queue, max=max_, wait=wait, visibility_timeout=visibility_timeout)
    acked: dict[int, Any] = {}
    if ack_ and messages:
        acked = {o.id: o for o in client.ack_batch(messages)}
    if state.json:
        out = []
        for m in messages:
            item = jsonable(m)
            if ack_:
                item["acked"] = acked[m.id].ok
            out.append(item)
        print_json(out)
    elif not messages:
        note("no messages")
    else:
        # An acked message's lease token is spent: show whether the ack took instead.
        cols = ["id", "priority", "group", "deliveries", "acked" if ack_ else "lease token", "payload"]
        t = table(*cols, payload={"min_width": 10})
        for m in messages:
            row = [
                str(m.id),
                str(m.priority),
                m.group,
                str(m.deliveries),
                ("yes" if acked[m.id].ok else "no") if ack_ else m.lease_token,
                short(m.payload),
            ]
            add_row(t, *row)
        print_table(t)
    failed = [o for o in acked.values() if not o.ok]
    for o in failed:
        click.echo(f"error: ack of message {o.id} failed: {o.status}: {o.detail}", err=True)
    if failed:
        raise SystemExit(1)


@main.command()
@click.argument("queue")
@click.argument("id", type=int)
@click.argument("token")
@click.option("--result", metavar="JSON", help="Result kept with the message status (JSON, else a string).")
@pass_state
def ack(state: CliState, queue: str, id: int, token: str, result: str | None) -> None:
    """Finish message ID of QUEUE, leased with lease TOKEN."""
    value = None if result is None else parse_json_or_text(result)
    state.client().ack(queue, id, token, result=value)
    if state.json:
        print_json({"id": id, "state": "acked"})
    else:
        click.echo(f"acked message {id}")


@main.command()
@click.argument("queue")
@click.argument("id", type=int)
@click.argument("token")
@click.option(
    "--delay", type=SECONDS, metavar="SECONDS", help="Redeliver after this long (default: the queue's backoff)."
)
@click.option("--error", metavar="TEXT", help="Why it failed; kept as the message's last error.")
@click.option("--dead", is_flag=True, help="Dead-letter it now (reject), whatever deliveries are left.")
@pass_state
def nack(state: CliState, queue: str, id: int, token: str, delay: float | None, error: str | None, dead: bool) -> None:
    """Give message ID of QUEUE (leased with TOKEN) back for redelivery."""
    res = state.client().nack(queue, id, token, delay=delay, error=error, dead=dead)
    if state.json:
        print_json(res)
    elif res.state == "dead":
        click.echo(f"message {id} is dead" + ("" if dead else " (out of deliveries)"))
    elif res.state == "delayed" and res.available_at is not None:
        click.echo(f"message {id} is delayed until {iso_utc(res.available_at)}")
    else:
        click.echo(f"message {id} is {res.state}")


@main.command()
@click.argument("queue")
@click.argument("id", type=int)
@click.argument("token")
@pass_state
def release(state: CliState, queue: str, id: int, token: str) -> None:
    """Give message ID of QUEUE (leased with TOKEN) back at once, without counting the delivery."""
    state.client().release(queue, id, token)
    if state.json:
        print_json({"id": id, "state": "ready"})
    else:
        click.echo(f"released message {id}")


@main.command()
@click.argument("queue")
@click.argument("id", type=int)
@click.argument("token")
@click.option(
    "--visibility-timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="New lease length from now (default: the queue's).",
)
@pass_state
def extend(state: CliState, queue: str, id: int, token: str, visibility_timeout: float | None) -> None:
    """Keep the lease of message ID of QUEUE (leased with TOKEN) longer."""
    expires = state.client().extend(queue, id, token, visibility_timeout=visibility_timeout)
    if state.json:
        print_json({"id": id, "lease_expires_at": expires})
    else:
        click.echo(f"message {id} is leased until {iso_utc(expires)}")


@main.command("set-priority")
@click.argument("queue")
@click.argument("id", type=int)
@click.argument("priority", type=click.IntRange(INT64_MIN, INT64_MAX))
@pass_state
def set_priority(state: CliState, queue: str, id: int, priority: int) -> None:
    """Change the PRIORITY of message ID of QUEUE while it is ready, delayed or waiting."""
    status = state.client().set_priority(queue, id, priority)
    if state.json:
        print_json(status)
    else:
        click.echo(f"message {id} has priority {status.priority}")


@main.command()
@click.argument("queue")
@click.argument("id", type=int)
@pass_state
def cancel(state: CliState, queue: str, id: int) -> None:
    """Cancel message ID of QUEUE before it is delivered, or delete it from the dead letters."""
    state.client().cancel(queue, id)
    if state.json:
        print_json({"id": id, "state": "cancelled"})
    else:
        click.echo(f"cancelled message {id}")


@main.command()
@click.argument("queue")
@click.argument("id", type=int)
@pass_state
def message(state: CliState, queue: str, id: int) -> None:
    """Show the state of message ID of QUEUE (ready, delayed, leased, dead or acked)."""
    status = state.client().get_message(queue, id)
    if state.json:
        print_json(status)
        return
    rows = [(f.name, getattr(status, f.name)) for f in fields(status) if f.name not in ("id", "queue")]
    print_table(key_values(f"message {status.id} in {status.queue}", rows))


# ---- dead letters ------------------------------------------------------------------------------


@main.group()
def dlq() -> None:
    """List and redrive dead letters."""


@dlq.command("list")
@click.argument("queue")
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True, help="Most to list.")
@click.option("--after", type=int, metavar="ID", help="List ids greater than this (the next page).")
@pass_state
def dlq_list(state: CliState, queue: str, limit: int, after: int | None) -> None:
    """List the dead letters of QUEUE, oldest id first."""
    items = state.client().dead_letters(queue, after=after, limit=limit)
    if state.json:
        print_json(items)
        return
    if not items:
        note("no dead letters")
        return
    t = table(
        "id",
        "priority",
        "group",
        "deliveries",
        "last error",
        "payload",
        last_error={"overflow": "fold"},
        payload={"overflow": "fold", "min_width": 10},
    )
    for m in items:
        add_row(t, str(m.id), show(m.priority), show(m.group), str(m.deliveries), show(m.last_error), short(m.payload))
    print_table(t)
    if len(items) == limit:
        note(f"more may follow: --after {items[-1].id}")


@dlq.command("redrive")
@click.argument("queue")
@click.argument("ids", nargs=-1, type=int)
@click.option("--all", "all_", is_flag=True, help="Redrive every dead letter of QUEUE.")
@click.option(
    "--rate",
    type=click.IntRange(min=1),
    metavar="N",
    help="Move N messages per second, paced by the group (watch with redrive-status, stop with redrive-stop).",
)
@pass_state
def dlq_redrive(state: CliState, queue: str, ids: tuple[int, ...], all_: bool, rate: int | None) -> None:
    """Move dead letters of QUEUE (the given IDS, or --all) back with a fresh delivery count."""
    if bool(ids) == all_:
        raise click.UsageError("give the ids to redrive, or --all (not both)")
    res = state.client().redrive(queue, None if all_ else list(ids), rate=rate)
    if state.json:
        print_json(res)
        return
    if res.job is not None:
        print_redrive_job(state, queue, res.job)
        return
    click.echo(
        f"redriven {len(res.redriven)} message(s)" + (f": {', '.join(map(str, res.redriven))}" if res.redriven else "")
    )
    if res.not_found:
        note(f"not dead letters (skipped): {', '.join(map(str, res.not_found))}")


def print_redrive_job(state: CliState, queue: str, job) -> None:
    if state.json:
        print_json(job)
        return
    click.echo(
        f"redrive of {queue}: {job.state}, {job.moved} of {job.total} moved at {job.rate}/s "
        f"({job.remaining} remaining), started {iso_utc(job.started_at)}"
    )


@dlq.command("redrive-status")
@click.argument("queue")
@pass_state
def dlq_redrive_status(state: CliState, queue: str) -> None:
    """Show the paced redrive of QUEUE: running, done or stopped, and how far it got."""
    print_redrive_job(state, queue, state.client().redrive_status(queue))


@dlq.command("redrive-stop")
@click.argument("queue")
@pass_state
def dlq_redrive_stop(state: CliState, queue: str) -> None:
    """Stop the paced redrive of QUEUE; the messages it moved stay moved."""
    print_redrive_job(state, queue, state.client().stop_redrive(queue))


# ---- the group ------------------------------------------------------------------------------------


@main.group()
def cluster() -> None:
    """Status and membership of a replicated group (over HTTP)."""


def print_cluster(state: CliState, status: dict) -> None:
    if state.json:
        print_json(status)
        return
    members = status.get("members", [])
    named = any(m["id"] != m["address"] for m in members)  # ids default to the address: show it once
    t = table(
        *(["id"] if named else []),
        "address",
        "role",
        "health",
        "match",
        "lag",
        "http",
        title=f"leader {status.get('leader')}  term {status.get('term')}  "
        f"commit {status.get('commit_index')}  (answered by {status.get('self')})",
    )
    for m in members:
        add_row(
            t,
            *([m["id"]] if named else []),
            m["address"],
            m["role"],
            "ok" if m["healthy"] else "DOWN",
            show(m.get("match_index")),
            show(m.get("lag")),
            show(m.get("http_url")),
        )
    print_table(t)


@cluster.command("status")
@pass_state
def cluster_status(state: CliState) -> None:
    """Leader, term, commit index and every member's role, health and replication progress.

    Only the leader knows how far each follower has got, so a follower's answer is replaced by the
    leader's when the leader can be reached.
    """
    status = state.client().cluster_status()
    leader_url = next((m.get("http_url") for m in status.get("members", []) if m.get("role") == "leader"), None)
    if status.get("leader") and status.get("self") != status.get("leader") and leader_url:
        from .client import Client

        try:
            with Client(leader_url, timeout=state.timeout, token=state.token) as leader:
                status = leader.cluster_status()
        except RankQError as err:
            note(
                f"the leader at {leader_url} did not answer ({err}); showing {status.get('self')}'s view, "
                "which lacks the followers' progress"
            )
    print_cluster(state, status)


@cluster.command("add")
@click.argument("address")
@pass_state
def cluster_add(state: CliState, address: str) -> None:
    """Add the node at Raft ADDRESS (host:port). Start it first with the full peer list."""
    print_cluster(state, state.client().add_member(address))


@cluster.command("remove")
@click.argument("member")
@pass_state
def cluster_remove(state: CliState, member: str) -> None:
    """Remove MEMBER (node id or Raft address). Move leadership away from it first."""
    print_cluster(state, state.client().remove_member(member))


@cluster.command("transfer-leader")
@click.option("--to", default=None, help="Node id or Raft address (default: the most caught-up follower).")
@pass_state
def cluster_transfer(state: CliState, to: str | None) -> None:
    """Hand leadership to another member, e.g. before restarting the leader."""
    print_cluster(state, state.client().transfer_leader(to))


# ---- backup and restore ----------------------------------------------------------------------------


def print_backup(state: CliState, verb: str, summary) -> None:
    if state.json:
        print_json({"path": summary.path, "bytes": summary.bytes, "records": summary.records})
        return
    kinds = ", ".join(f"{n} {k}" for k, n in sorted(summary.records.items())) or "nothing"
    click.echo(f"{verb} {summary.path} ({summary.bytes} bytes): {kinds}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
@pass_state
def backup(state: CliState, file: str) -> None:
    """Write a consistent backup of the whole group to FILE (gzip'd JSON lines), taken on the leader.

    It holds every queue with its settings, every message (leased ones come back ready), dead
    letters, retained results and dedup keys. Needs the admin scope where tokens are required.
    """
    print_backup(state, "wrote", state.client().backup(file))


@main.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@pass_state
def restore(state: CliState, file: str) -> None:
    """Load the backup in FILE into the group at --url, which must not have those queues yet.

    The records go through the group's log, so every member ends with the same state.
    """
    print_backup(state, "restored", state.client().restore(file))


# ---- local development ------------------------------------------------------------------------------


@main.group()
def dev() -> None:
    """Helpers for running RankQ on this machine."""


@dev.command("cluster")
@click.option(
    "--nodes", default=3, show_default=True, type=click.Choice(["1", "3", "5", "7"]), help="How many members."
)
@click.option("--data-dir", default=".run", show_default=True, help="Parent of each node's data dir.")
@click.option("--http-port", default=8080, show_default=True, type=int, help="HTTP port of node 0; node i uses +i.")
@click.option("--grpc-port", default=9090, show_default=True, type=int, help="gRPC port of node 0; node i uses +i.")
@click.option("--raft-port", default=7070, show_default=True, type=int, help="Raft port of node 0; node i uses +i.")
@click.option(
    "--demo-queue", default="demo", show_default=True, help="Queue to create once a leader exists ('' for none)."
)
def dev_cluster(nodes: str, data_dir: str, http_port: int, grpc_port: int, raft_port: int, demo_queue: str) -> None:
    """Run a local group on 127.0.0.1 under a supervisor that restarts crashed nodes (Ctrl-C stops all)."""
    from .devcluster import DevCluster
    from .extras import MissingExtra, require

    try:
        with require("server"):  # the nodes are `rankq server` processes
            import rankq.server.main  # noqa: F401
    except MissingExtra as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(2)

    raise SystemExit(DevCluster(int(nodes), data_dir, http_port, grpc_port, raft_port, demo_queue or None).run())


# ---- operator and pod-side commands --------------------------------------------------------------


def _register_operator_commands() -> None:
    from .node_cli import node
    from .operator.command import operator_command
    from .worker.command import worker_command

    main.add_command(operator_command)
    main.add_command(node)
    main.add_command(worker_command)


_register_operator_commands()


if __name__ == "__main__":
    main()
