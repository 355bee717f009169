"""`rankq worker MODULE:FUNCTION --queue Q`: run a handler as a worker process.

Kept light: the `rankq` command imports this module on every start; the runtime is imported only
when a worker runs.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import click


def load_handler(target: str) -> Callable[..., Any]:
    """`package.module:function` → the function (the current directory is importable, as with
    other worker runners)."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise click.BadParameter("expected MODULE:FUNCTION, e.g. myapp.tasks:send_email", param_hint="'TARGET'")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise click.BadParameter(f"cannot import {module_name!r}: {err}", param_hint="'TARGET'") from err
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise click.BadParameter(f"{module_name!r} has no {attr!r}", param_hint="'TARGET'")
    if not callable(obj):
        raise click.BadParameter(f"{target!r} is not callable", param_hint="'TARGET'")
    return obj


@click.command("worker")
@click.argument("target", metavar="MODULE:FUNCTION")
@click.option("--queue", "-q", required=True, help="Queue to consume.")
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=8,
    show_default=True,
    help="Handlers running at once (threads for a plain function, tasks for an async one).",
)
@click.option(
    "--prefetch",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Extra messages leased while all slots are busy.",
)
@click.option(
    "--url",
    envvar="RANKQ_URL",
    default=None,
    help="Server or comma-separated group (env RANKQ_URL; default: rankq --url).",
)
@click.option("--token", envvar="RANKQ_API_TOKEN", default=None, help="API token (env RANKQ_API_TOKEN).")
@click.option(
    "--visibility-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Lease length in seconds, renewed at a third of it while a handler runs (default: the queue's).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds a handler may run; a longer run is nacked as failed.",
)
@click.option(
    "--drain-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    help="After SIGTERM/SIGINT: seconds running handlers may finish before the rest is released.",
)
@click.option(
    "--poll-wait",
    type=click.FloatRange(min=0, max=20),
    default=5.0,
    show_default=True,
    help="Seconds a dequeue waits on an empty queue.",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve /healthz, /readyz and Prometheus /metrics on this port.",
)
@click.option("--metrics-host", default="0.0.0.0", show_default=True, help="Address for --metrics-port.")
@click.option(
    "--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True
)
@click.pass_context
def worker_command(
    ctx: click.Context,
    target: str,
    queue: str,
    concurrency: int,
    prefetch: int,
    url: str | None,
    token: str | None,
    visibility_timeout: float | None,
    timeout: float | None,
    drain_timeout: float,
    poll_wait: float,
    metrics_port: int | None,
    metrics_host: str,
    log_level: str,
) -> None:
    """Run MODULE:FUNCTION on every message of --queue.

    Return value → ack with it as the result; rankq.worker.Retry(delay) → redelivered after delay;
    rankq.worker.Reject(reason) → dead-lettered now; any other exception → nacked with its text and
    retried after the queue's backoff. SIGTERM/SIGINT drain (exit 0); a second signal releases at once.
    """
    fn = load_handler(target)
    state = ctx.find_root().obj
    url = url or getattr(state, "url", None) or "http://127.0.0.1:8080"
    token = token or getattr(state, "token", None)
    logging.basicConfig(
        level=log_level.upper(),
        format="%(asctime)s.%(msecs)03d [%(levelname)s] worker: %(message)s",
        datefmt="%Y-%m-%d %H:%M:%S",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore"):  # one line per request otherwise
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    from .runtime import Worker

    worker = Worker(
        url,
        queue,
        concurrency,
        prefetch=prefetch,
        visibility_timeout=visibility_timeout,
        timeout=timeout,
        drain_timeout=drain_timeout,
        poll_wait=poll_wait,
        token=token,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
    )
    worker.handler(fn)
    worker.run()
    sys.stdout.flush()
    sys.stderr.flush()
    # A plain function still running after the drain cannot be interrupted; its message was
    # released, so end here instead of waiting for its thread.
    os._exit(0)
