"""`rankq operator`: run the operator against the current kubeconfig (or in cluster)."""

from __future__ import annotations

import logging

import click


@click.command("operator")
@click.option(
    "--namespace", "-n", "namespaces", multiple=True, help="Watch only these namespaces (repeatable); default: all."
)
@click.option(
    "--lease-namespace",
    envvar="POD_NAMESPACE",
    default="default",
    show_default=True,
    help="Namespace of the Lease that lets one operator instance act at a time (env POD_NAMESPACE).",
)
@click.option(
    "--endpoints-file",
    envvar="RANKQ_ENDPOINTS_FILE",
    default=None,
    help="JSON map '<ns>/<pod>' -> {http, raft} overriding pod DNS names (out-of-cluster development).",
)
@click.option("--liveness", default=None, help="Serve kopf's liveness probe, e.g. http://0.0.0.0:8081/healthz.")
@click.option(
    "--metrics-api-port",
    type=click.IntRange(1, 65535),
    envvar="RANKQ_METRICS_API_PORT",
    default=None,
    help="Serve the external metrics API (rankq_queue_backlog, for the HPA) on this HTTPS port.",
)
@click.option("--metrics-api-host", envvar="RANKQ_METRICS_API_HOST", default="0.0.0.0", show_default=True)
@click.option(
    "--metrics-api-cert",
    envvar="RANKQ_METRICS_API_CERT",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Serving certificate of the metrics API (its CA is the APIService's caBundle).",
)
@click.option(
    "--metrics-api-key", envvar="RANKQ_METRICS_API_KEY", type=click.Path(exists=True, dir_okay=False), default=None
)
@click.option(
    "--requestheader-ca",
    envvar="RANKQ_REQUESTHEADER_CA",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="CA of the kube-apiserver's proxy client certificate; default: read from "
    "kube-system/extension-apiserver-authentication.",
)
@click.option("--log-level", default="INFO", show_default=True)
def operator_command(
    namespaces: tuple[str, ...],
    lease_namespace: str,
    endpoints_file: str | None,
    liveness: str | None,
    metrics_api_port: int | None,
    metrics_api_host: str,
    metrics_api_cert: str | None,
    metrics_api_key: str | None,
    requestheader_ca: str | None,
    log_level: str,
) -> None:
    """Run the RankQ operator (Queue custom resources -> replicated queue groups)."""
    from ..extras import MissingExtra, require

    try:
        with require("operator"):
            from .handlers import Settings, run
    except MissingExtra as err:
        raise click.ClickException(str(err)) from None

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s [%(levelname)s] %(name)s: %(message)s")
    logging.getLogger("kopf").setLevel(max(logging.INFO, logging.getLevelName(log_level.upper())))
    # kopf.objects reports every handled watch event at INFO; only its warnings are news.
    logging.getLogger("kopf.objects").setLevel(max(logging.WARNING, logging.getLevelName(log_level.upper())))
    for noisy in ("httpx", "httpx2"):  # one line per request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    settings = Settings(
        namespace=lease_namespace,
        endpoints_file=endpoints_file,
        metrics_port=metrics_api_port,
        metrics_host=metrics_api_host,
        metrics_cert=metrics_api_cert,
        metrics_key=metrics_api_key,
        requestheader_ca=requestheader_ca,
    )
    run(settings, list(namespaces) or None, liveness)
