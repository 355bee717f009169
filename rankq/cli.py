"""The `rankq` command: run a server, manage queues, send and receive messages."""

from __future__ import annotations

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="rankq")
def main() -> None:
    """RankQ: replicated priority queues."""


@main.command()
@click.option("--data-dir", default="./data", show_default=True, help="Where the Raft journal and snapshots live.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (HTTP and gRPC).")
@click.option("--http-port", default=8080, show_default=True, type=int)
@click.option("--grpc-port", default=9090, show_default=True, type=int, help="0 turns gRPC off.")
@click.option("--node-id", default=None, help="Name of this node in the group (default: its Raft address).")
@click.option("--raft-host", default=None, help="Address peers reach this node at (default: --host).")
@click.option("--raft-port", default=7070, show_default=True, type=int)
@click.option("--peers", default="", help="Comma-separated host:port Raft addresses of the other members.")
@click.option("--raft-password-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File with the shared secret that authenticates and encrypts Raft traffic "
                   "(or set RANKQ_RAFT_PASSWORD).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--log-level", default="INFO", show_default=True)
@click.option("--demo-queue", default=None, help="Create this queue (weighted policy) on start if missing.")
def server(data_dir, host, http_port, grpc_port, node_id, raft_host, raft_port, peers, raft_password_file,
           log_format, log_level, demo_queue) -> None:
    """Run a queue server node."""
    import os

    from .server.main import ServerConfig, run

    password = os.environ.get("RANKQ_RAFT_PASSWORD")
    if raft_password_file:
        with open(raft_password_file, encoding="utf-8") as fh:
            password = fh.read().strip()
    run(
        ServerConfig(
            data_dir=data_dir, host=host, http_port=http_port, grpc_port=grpc_port, node_id=node_id,
            raft_host=raft_host, raft_port=raft_port,
            peers=[p.strip() for p in peers.split(",") if p.strip()],
            raft_password=password or None, log_format=log_format, log_level=log_level,
            demo_queue=demo_queue,
        )
    )


if __name__ == "__main__":
    main()
