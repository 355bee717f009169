"""`rankq server`: its options are built from the fields of `ServerSettings` (server/config.py), so
their defaults and help are declared once. An option given on the command line wins over its
RANKQ_* environment variable, which wins over the default; a bad value ends in one line on stderr
and exit status 2."""

from __future__ import annotations

import os
import sys
import typing
from collections.abc import Callable
from typing import Any, NoReturn

import click
from click.core import ParameterSource
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from .config import ENV_PREFIX, ServerConfig, ServerSettings, check_data_dir, describe_error, option_name


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _metavar(name: str, field: FieldInfo) -> str:
    """What the help shows for the value; every value is checked by the settings model, not click."""
    choices = [a for a in typing.get_args(field.annotation) if isinstance(a, str)]
    for arg in typing.get_args(field.annotation):  # Annotated[Literal[...], ...]
        choices += [a for a in typing.get_args(arg) if isinstance(a, str)]
    if choices:
        return "[" + "|".join(choices) + "]"
    if name == "peers":
        return "ADDR,..."
    if name.endswith(("_file", "_cert", "_key", "_ca")):
        return "FILE"
    if field.annotation is int or any(a is int for a in typing.get_args(field.annotation)):
        return "INTEGER"
    return "TEXT"


def _option(name: str, field: FieldInfo) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    default = field.get_default(call_default_factory=True)
    env = f"{ENV_PREFIX}{name.upper()}"
    help_text = f"{field.description} [env {env}]"
    if field.annotation is bool:
        return click.option(option_name(name), name, is_flag=True, default=False, help=help_text)
    # The default only shows in --help: the settings model applies it, after the environment.
    shown = ",".join(default) if isinstance(default, list) else default
    return click.option(
        option_name(name),
        name,
        type=str,
        default=None if shown in (None, "") else str(shown),
        metavar=_metavar(name, field),
        show_default=shown not in (None, ""),
        help=help_text,
    )


def settings_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for name, field in reversed(list(ServerSettings.model_fields.items())):
        extra = field.json_schema_extra
        if isinstance(extra, dict) and extra.get("cli") is False:
            continue
        f = _option(name, field)(f)
    return f


def load_settings(ctx: click.Context, given: dict[str, Any]) -> ServerSettings:
    """The settings from the options given on the command line, the environment and the defaults."""
    values = {k: v for k, v in given.items() if ctx.get_parameter_source(k) is ParameterSource.COMMANDLINE}
    try:
        return ServerSettings(**values)
    except ValidationError as err:
        _fail(describe_error(err))


@click.command("server")
@settings_options
@click.pass_context
def server(ctx: click.Context, **given: Any) -> None:
    """Run a queue server node."""
    from .auth import AuthConfigError, Scope, load_tokens
    from .main import check_access, run

    settings = load_settings(ctx, given)
    try:
        check_data_dir(settings.data_dir)
        tokens = load_tokens(
            [settings.api_token_file] if settings.api_token_file else [],
            {
                scope: [path]
                for scope, path in (
                    (Scope.PRODUCE, settings.produce_token_file),
                    (Scope.CONSUME, settings.consume_token_file),
                    (Scope.ADMIN, settings.admin_token_file),
                )
                if path
            },
            environ=os.environ,
        )
        config = ServerConfig(**settings.model_dump(), api_tokens=tokens)
        config.password  # noqa: B018 -- read the password file now: an unreadable one is a usage error
        check_access(config)
    except (AuthConfigError, ValueError, OSError) as err:
        _fail(str(err))
    run(config)
