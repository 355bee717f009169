"""What the `rankq` command prints: JSON for scripts (`-o json`), rich tables for people; notes go
to stderr so stdout stays the result."""

from __future__ import annotations

import base64
import json
from dataclasses import fields, is_dataclass
from datetime import UTC, datetime
from typing import Any

import click


def iso_utc(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """Result objects as JSON values: datetimes as ISO 8601 UTC, a bytes payload as payload_base64."""
    if is_dataclass(value) and not isinstance(value, type):
        out = {f.name: jsonable(getattr(value, f.name)) for f in fields(value)}
        payload = getattr(value, "payload", None)
        if isinstance(payload, bytes):
            out["payload"] = None
            out["payload_base64"] = base64.b64encode(payload).decode()
        return out
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    return value


def print_json(value: Any) -> None:
    click.echo(json.dumps(jsonable(value), indent=2, ensure_ascii=False))


def show(value: Any) -> str:
    """One value for a table cell."""
    if value is None:
        return "-"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, datetime):
        return iso_utc(value)
    if isinstance(value, str):
        return value
    return json.dumps(jsonable(value), ensure_ascii=False)


def short(value: Any, width: int = 60) -> str:
    text = show(value) if not isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= width else text[: width - 1] + "…"


def console():
    from rich.console import Console

    return Console(highlight=False, soft_wrap=False)


def table(*columns: str, title: str | None = None, **column_opts: dict):
    """A table that fits the terminal (80 columns when not one): long cells wrap, none is cut."""
    from rich import box
    from rich.table import Table

    t = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for name in columns:
        opts = {"min_width": len(name), "overflow": "fold", **column_opts.get(name.replace(" ", "_"), {})}
        t.add_column(name, **opts)
    return t


def add_row(t, *cells: Any) -> None:
    from rich.text import Text

    t.add_row(*(Text(c if isinstance(c, str) else show(c)) for c in cells))


def print_table(t) -> None:
    console().print(t)


def note(text: str) -> None:
    """A line for people that is not part of the result: stderr, so stdout stays clean."""
    click.echo(text, err=True)


def key_values(title: str, rows: list[tuple[str, Any]]):
    t = table("field", "value", title=title)
    for k, v in rows:
        add_row(t, k, show(v))
    return t
