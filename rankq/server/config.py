"""The server's settings, declared once: `rankq server`'s options, their defaults, help and bounds.

`ServerSettings` reads `RANKQ_<FIELD>` environment variables (e.g. RANKQ_HTTP_PORT); an option
given on the command line wins over the environment, which wins over the default here. The CLI
builds its options from these fields (rankq/server/command.py), so a default or a help text cannot
differ between the two. A bad value is reported as one line naming the option (`describe_error`).
"""

from __future__ import annotations

import os
import socket
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, ValidationError
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from ..replication import COMPACTION_MAX_BYTES, COMPACTION_MIN_ENTRIES, COMPACTION_MIN_SECONDS
from .auth import Scope

ENV_PREFIX = "RANKQ_"
MIB = 1024 * 1024
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


def _split_peers(value: Any) -> Any:
    """`a:1,b:2` (the form the CLI and the operator's pods pass) as a list."""
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return value


def _existing_file(path: str) -> str:
    if not os.path.isfile(path):
        raise ValueError("no such file" if not os.path.exists(path) else "not a file")
    if not os.access(path, os.R_OK):
        raise ValueError("not readable")
    return path


Port = Annotated[int, Field(ge=1, le=65535)]
File = Annotated[str, AfterValidator(_existing_file)] | None
NOT_AN_OPTION: dict[str, Any] = {"cli": False}  # settable by environment only (a secret kept out of `ps`)


class ServerSettings(BaseSettings):
    """Every setting of `rankq server`; field order is the order of `rankq server --help`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", validate_default=False)

    data_dir: str = Field("./data", min_length=1, description="Where the Raft journal and snapshots live.")
    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on (HTTP and gRPC).")
    http_port: Port = Field(8080, description="HTTP port.")
    grpc_port: int = Field(9090, ge=0, le=65535, description="gRPC port; 0 turns gRPC off.")
    node_id: str | None = Field(
        None, min_length=1, description="Name of this node in the group (default: its Raft address)."
    )
    raft_host: str | None = Field(
        None,
        min_length=1,
        description="Name other members and clients reach this node at, e.g. its DNS name (default: --host).",
    )
    raft_port: Port = Field(7070, description="Raft port.")
    peers: Annotated[list[str], NoDecode, BeforeValidator(_split_peers)] = Field(
        default_factory=list,
        description="Comma-separated Raft addresses of the group's members, host:port or id=host:port "
        "(this node's own entry may be included).",
    )
    raft_password_file: File = Field(
        None,
        description="File with the shared secret that authenticates and encrypts Raft traffic "
        "(or set RANKQ_RAFT_PASSWORD).",
    )
    raft_password: str | None = Field(None, repr=False, json_schema_extra=NOT_AN_OPTION)
    api_token_file: File = Field(
        None,
        description="File of bearer tokens for the API, one per line: 'TOKEN' (all scopes) or 'TOKEN "
        "produce,consume,admin'; health, metrics and docs stay open. Env: RANKQ_API_TOKEN (one "
        "all-scope token), RANKQ_PRODUCE_TOKEN, RANKQ_CONSUME_TOKEN, RANKQ_ADMIN_TOKEN.",
    )
    produce_token_file: File = Field(None, description="File with a token (one per line) that may enqueue.")
    consume_token_file: File = Field(
        None, description="File with a token (one per line) that may dequeue, ack, nack and extend."
    )
    admin_token_file: File = Field(
        None, description="File with a token (one per line) that may change queues, dead letters and membership."
    )
    insecure_no_auth: bool = Field(
        False, description="Serve the API on a non-loopback --host without any token (refused otherwise)."
    )
    tls_cert: File = Field(None, description="PEM certificate (chain) for HTTPS and gRPC over TLS; needs --tls-key.")
    tls_key: File = Field(None, description="PEM private key of --tls-cert.")
    tls_ca: File = Field(
        None, description="CA this node trusts when it calls another member over HTTPS (default: --tls-cert)."
    )
    log_format: Literal["text", "json"] = Field("text", description="Log lines as text or JSON.")
    log_level: Annotated[Literal[LOG_LEVELS], BeforeValidator(_upper)] = Field(  # type: ignore[valid-type]
        "INFO", description="Least important log level written."
    )
    demo_queue: str | None = Field(None, description="Create this queue (weighted policy) on start if missing.")
    snapshot_entries: int = Field(
        COMPACTION_MIN_ENTRIES, ge=10, description="Write a snapshot and compact the log after this many log entries..."
    )
    snapshot_seconds: int = Field(
        COMPACTION_MIN_SECONDS, ge=1, description="...or after this many seconds since the last snapshot..."
    )
    snapshot_mib: int = Field(
        COMPACTION_MAX_BYTES // MIB, ge=1, description="...or once the log since the last snapshot holds this many MiB."
    )
    archive_dsn: str | None = Field(
        None,
        repr=False,
        description="PostgreSQL connection string for the archive of finished messages of queues with "
        "archive on (prefer the environment variable: it keeps the password out of ps).",
    )
    archive_group: str = Field(
        "default",
        min_length=1,
        max_length=128,
        description="This group's name in the archive tables (several groups may share a database).",
    )


class ServerConfig(ServerSettings):
    """The settings once resolved for a run: the API tokens are loaded, the Raft password read."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid")

    api_tokens: dict[str, frozenset[Scope]] = Field({}, repr=False)  # token -> scopes; empty: no API authentication

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls,
        init_settings,
        env_settings,
        dotenv_settings,  # type: ignore[no-untyped-def, override]
        file_secret_settings,
    ):
        return (init_settings,)  # built from an already resolved ServerSettings

    @property
    def snapshot_bytes(self) -> int:
        return self.snapshot_mib * MIB

    @property
    def password(self) -> str | None:
        """The Raft password: the file's content, else RANKQ_RAFT_PASSWORD."""
        if self.raft_password_file:
            with open(self.raft_password_file, encoding="utf-8") as fh:
                return fh.read().strip() or None
        return self.raft_password or None

    @property
    def advertised_host(self) -> str:
        """The name other members and clients reach this node at."""
        if self.raft_host:
            return self.raft_host
        if self.host in ("0.0.0.0", "::", ""):
            return socket.gethostname()
        return self.host

    @property
    def raft_address(self) -> str:
        return f"{self.advertised_host}:{self.raft_port}"

    @property
    def peer_addresses(self) -> list[str]:
        """`--peers` entries may be `host:port` or `id=host:port`; Raft needs the addresses."""
        out = []
        for peer in self.peers:
            addr = peer.split("=", 1)[1] if "=" in peer else peer
            if addr != self.raft_address:
                out.append(addr)
        return out

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def member_info(self) -> dict[str, Any]:
        host = self.advertised_host
        return {
            "node_id": self.node_id or self.raft_address,
            "http_url": f"{'https' if self.tls else 'http'}://{host}:{self.http_port}",
            "grpc_target": f"{host}:{self.grpc_port}" if self.grpc_port else None,
        }


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def describe_error(err: ValidationError) -> str:
    """One line for a bad setting: the option (and its variable), what is wrong, what was given."""
    parts = []
    for e in err.errors(include_url=False):
        field = str(e["loc"][0]) if e["loc"] else ""
        where = f"{option_name(field)} (env {ENV_PREFIX}{field.upper()})" if field else "settings"
        given = e.get("input")
        shown = "" if isinstance(given, dict) or given is None else f", got {given!r}"
        message = str(e["msg"]).removeprefix("Value error, ")
        parts.append(f"{where}: {message}{shown}")
    return "; ".join(parts)


def check_data_dir(path: str) -> None:
    """The data directory exists or can be made, and is writable; raises ValueError saying why not."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--data-dir {path!r} is not a directory")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as err:
        raise ValueError(f"--data-dir {path!r} cannot be used: {err.strerror or err}") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError(f"--data-dir {path!r} is not writable")
