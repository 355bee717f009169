"""How the `rankq` command reads its arguments: numbers or `none`, class weights, JSON or text,
headers, and the queue settings options, one per setting of rankq.engine.config.SETTINGS."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from .engine.config import INT64_MAX, INT64_MIN, SETTINGS_BY_WIRE, Setting
from .engine.config import SETTINGS as QUEUE_SETTINGS

CLEAR = object()  # "none" given for a setting that can be cleared


class OrNone(click.ParamType):
    """A number, or `none` to clear the setting."""

    def __init__(self, kind: type) -> None:
        self.kind = kind
        self.name = f"{kind.__name__}|none"

    def get_metavar(self, param, *args, **kwargs) -> str:
        return {int: "N|none", str: "QUEUE|none"}.get(self.kind, "SECONDS|none")

    def convert(self, value, param, ctx):
        if value is CLEAR or isinstance(value, self.kind) and self.kind is not str:
            return value
        if str(value).strip().lower() in ("none", "null"):
            return CLEAR
        if self.kind is str:
            return str(value)
        try:
            out = self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is not a number or 'none'", param, ctx)
        if out < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return out


class Weights(click.ParamType):
    name = "weights"

    def get_metavar(self, param, *args, **kwargs) -> str:
        return "P=W,..."

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        out = {}
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            prio, sep, weight = part.partition("=")
            try:
                if not sep:
                    raise ValueError
                out[int(prio)] = int(weight)
            except ValueError:
                self.fail(f"{part!r} is not PRIORITY=WEIGHT (e.g. 1=30,2=25)", param, ctx)
        if not out:
            self.fail("give at least one PRIORITY=WEIGHT", param, ctx)
        return out


class GroupWeights(click.ParamType):
    """GROUP=WEIGHT pairs; `none` for no weights (every group weighs 1)."""

    name = "group_weights"

    def get_metavar(self, param, *args, **kwargs) -> str:
        return "G=W,...|none"

    def convert(self, value, param, ctx):
        if isinstance(value, dict):
            return value
        if str(value).strip().lower() in ("none", "null"):
            return {}
        out = {}
        for part in str(value).split(","):
            part = part.strip()
            if not part:
                continue
            group, sep, weight = part.rpartition("=")
            try:
                if not sep or not group:
                    raise ValueError
                out[group] = int(weight)
            except ValueError:
                self.fail(f"{part!r} is not GROUP=WEIGHT (e.g. tenant-a=3,tenant-b=1)", param, ctx)
        return out


SECONDS = click.FloatRange(min=0)


class DependencyParam(click.ParamType):
    """`ID` (a message of the same queue) or `QUEUE/ID` (a message of another queue of the group)."""

    name = "dependency"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        queue, sep, mid = value.rpartition("/")
        try:
            number = int(mid)
        except ValueError:
            self.fail(f"{value!r} is not ID or QUEUE/ID", param, ctx)
        if sep and not queue:
            self.fail(f"{value!r} names no queue before '/'", param, ctx)
        return (queue, number) if sep else number


DEPENDENCY = DependencyParam()


def setting_option(spec: Setting) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The `queue create/update` option of one queue setting, from its definition in the engine."""
    flag = "--" + spec.wire.replace("_", "-")
    default = spec.wire_value(spec.default)
    shown = {True: "on", False: "off"}.get(default, default) if isinstance(default, bool) else default
    if isinstance(shown, dict):
        shown = ",".join(f"{k}={v}" for k, v in shown.items())
    elif isinstance(shown, float) and shown.is_integer():
        shown = int(shown)
    help_text = spec.doc.replace("null:", "'none':") + ("" if default in (None, {}) else f" (server default {shown})")
    unit = "SECONDS" if spec.is_duration else "N"
    if spec.kind is bool:
        return click.option(f"{flag}/--no-{flag[2:]}", spec.wire, default=None, help=help_text)
    if spec.choices:
        return click.option(flag, spec.wire, type=click.Choice(spec.choices), help=help_text)
    if spec.kind is dict and spec.keys is str:
        return click.option(flag, spec.wire, type=GroupWeights(), help=help_text + ", e.g. tenant-a=3,tenant-b=1")
    if spec.kind is dict:
        return click.option(flag, spec.wire, type=Weights(), help=help_text + ", e.g. 1=30,2=25,3=20")
    if spec.nullable:
        value_kind = str if spec.kind is str else float if spec.is_duration else int
        return click.option(flag, spec.wire, type=OrNone(value_kind), help=help_text)
    low, high = spec.low, spec.high
    if spec.is_duration:
        kind: click.ParamType = click.FloatRange(min=0, max=(high or 0) / 1000 or None, min_open=bool(low))
    elif low is not None and low <= INT64_MIN:
        kind = click.INT
    else:
        kind = click.IntRange(min=low, max=high if high is not None and high < INT64_MAX else None)
    return click.option(flag, spec.wire, type=kind, metavar=unit, help=help_text)


def settings_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The queue settings flags, shared by `queue create` and `queue update`: one per setting."""
    for spec in reversed(list(QUEUE_SETTINGS.values())):
        f = setting_option(spec)(f)
    return f


def take_settings(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The settings given, in the order given on the command line (click processes them so)."""
    out = {}
    for wire in [k for k in kwargs if k in SETTINGS_BY_WIRE]:
        value = kwargs.pop(wire)
        if value is None:
            continue
        out[wire] = None if value is CLEAR else value
    return out


def parse_json_or_text(text: str, raw: bool = False) -> Any:
    """JSON when `text` is valid JSON, else the text itself as a JSON string."""
    if raw:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_headers(pairs: tuple[str, ...]) -> dict[str, str] | None:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="'--header'")
        out[key] = value
    return out or None
