"""Process wiring for `rankq server`: Raft node, queue service, HTTP and gRPC servers, signals."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
from collections.abc import Callable

from ..replication import BindError, RaftNode, RaftSettings, SecretError
from . import logs
from .auth import AuthConfigError, Tokens, check_protected_mode
from .config import ServerConfig
from .service import PROPOSAL_TIMEOUT, QueueService

log = logging.getLogger("rankq.server")

# Stopping (SIGTERM/SIGINT) takes at most DRAIN + HTTP_GRACE seconds (gRPC closes alongside HTTP)
# plus the Raft thread's exit, normally milliseconds: about 8 s, well inside Kubernetes' default
# 30 s grace period. Writes accepted before the signal keep the proposal timeout to commit, as they
# would have had anyway; those still waiting then are answered 503.
SHUTDOWN_DRAIN_SECONDS = PROPOSAL_TIMEOUT
HTTP_GRACE_SECONDS = 3  # for requests other than writes (reads, membership changes) to finish
GRPC_GRACE_SECONDS = 2
# Idle keep-alive connections stay open this long. Longer than the idle timeouts of common load
# balancers and client pools (60 s), so the server is not the side that closes a connection just as
# a client sends a request on it (the client would see the connection drop without an answer).
HTTP_KEEP_ALIVE_SECONDS = 75


def check_access(config: ServerConfig) -> Tokens:
    """The server's tokens, once its access settings are known to be usable (protected mode, TLS
    files); raises AuthConfigError with what to change otherwise."""
    tokens = Tokens(config.api_tokens)
    check_protected_mode(config.host, tokens, config.insecure_no_auth)
    if bool(config.tls_cert) != bool(config.tls_key):
        raise AuthConfigError("TLS needs both --tls-cert and --tls-key")
    if config.tls_cert:
        import ssl

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(config.tls_cert, config.tls_key)
            if config.tls_ca:
                ssl.create_default_context(cafile=config.tls_ca)
        except (OSError, ssl.SSLError) as err:
            raise AuthConfigError(
                f"cannot use the TLS certificate {config.tls_cert} / key {config.tls_key}"
                f"{' / CA ' + config.tls_ca if config.tls_ca else ''}: {err}"
            ) from None
    return tokens


async def serve(config: ServerConfig, started: asyncio.Event | None = None) -> None:
    # Snapshots fork the process; gRPC's own fork handlers must stay out of that.
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
    import uvicorn

    from .http_api import build_app

    tokens = check_access(config)
    try:
        node = make_node(config)
    except BindError as err:
        log.error("cannot listen for Raft on %s:%d (%s): is the port taken?", config.host, config.raft_port, err)
        raise SystemExit(1) from None
    except (SecretError, ValueError) as err:
        log.error("cannot start: %s", err)
        raise SystemExit(2) from None
    service = QueueService(node, member_info=config.member_info())
    await service.start()
    archiver = None
    if config.archive_dsn:
        from .archive import Archiver, PostgresStore

        archiver = service.archiver = Archiver(service, PostgresStore(config.archive_dsn, config.archive_group))
        archiver.start()

    app = build_app(service, tokens, peer_ca=(config.tls_ca or config.tls_cert) if config.tls else None)

    class HttpServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self):
            """Leave signals to `serve`: uvicorn's own handling would close connections and cancel
            handlers still waiting for a commit (answered 500) before they could be answered."""
            yield

    http = HttpServer(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=HTTP_GRACE_SECONDS,
            timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS,
            ssl_certfile=config.tls_cert,
            ssl_keyfile=config.tls_key,
        )
    )
    grpc_server = None
    if config.grpc_port:
        from .grpc_api import start_grpc

        grpc_server = await start_grpc(
            service,
            config.host,
            config.grpc_port,
            tokens,
            tls=(config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None,
        )

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    http_task = asyncio.create_task(http.serve(), name="http")
    if config.demo_queue:
        asyncio.create_task(_ensure_demo_queue(service, config.demo_queue))

    while not http.started and not http_task.done():  # report the URLs only once they answer
        await asyncio.sleep(0.01)
    host = config.host
    if http.started:
        log.info(
            "RankQ node %s serving HTTP on %s://%s:%d (docs at /docs), gRPC on %s:%s, Raft on %s, data in %s",
            config.node_id or config.raft_address,
            "https" if config.tls else "http",
            host,
            config.http_port,
            host,
            config.grpc_port or "off",
            config.raft_address,
            os.path.abspath(config.data_dir),
        )
    if started is not None:
        started.set()
    await asyncio.wait([http_task, asyncio.create_task(stop.wait())], return_when=asyncio.FIRST_COMPLETED)
    app.state.feed.close()  # open dashboard streams end now instead of holding the shutdown
    await shutdown(service, http, http_task, grpc_server, archiver)


async def shutdown(service: QueueService, http, http_task: asyncio.Task, grpc_server, archiver=None) -> None:
    """Stop so that every write this node accepted gets an answer, in this order: take no new
    writes (503 naming the leader; readiness turns false), give accepted writes the proposal
    timeout to commit, answer the rest 503 (outcome unknown), close HTTP and gRPC, stop the
    archiver and Raft."""
    waiting = service.waiting_writes()
    log.info("shutting down: taking no new writes; %d accepted writes still waiting", waiting)
    service.begin_shutdown()
    unanswered = await service.drain(SHUTDOWN_DRAIN_SECONDS)
    if unanswered:
        log.warning("answered %d writes 503 (not committed within %gs of shutdown)", unanswered, SHUTDOWN_DRAIN_SECONDS)
    http.should_exit = True
    closing = [http_task]
    if grpc_server is not None:
        closing.append(grpc_server.stop(grace=GRPC_GRACE_SECONDS))
    await asyncio.gather(*closing)
    if archiver is not None:
        await archiver.stop()
    await service.stop()


def make_node(config: ServerConfig) -> RaftNode:
    return RaftNode(
        RaftSettings(
            self_address=config.raft_address,
            peers=config.peer_addresses,
            bind_address=f"{config.host}:{config.raft_port}",
            data_dir=config.data_dir,
            password=config.password,
            compaction_min_entries=config.snapshot_entries,
            compaction_min_seconds=config.snapshot_seconds,
            compaction_max_bytes=config.snapshot_bytes,
        )
    )


async def _ensure_demo_queue(service: QueueService, name: str) -> None:
    """Create the demo queue once a leader can commit it; never fail the server over it."""
    for _ in range(600):
        if service.is_ready():
            try:
                service.get_queue(name)
                return
            except Exception:
                pass
            try:
                await service.create_queue(name, {"policy": "weighted"})
                log.info("created demo queue %r", name)
                return
            except Exception as err:
                log.debug("demo queue not created yet: %s", err)
        await asyncio.sleep(0.1)


def tune_gc() -> None:
    """Collect the young generation less often. A queue holds millions of long-lived objects; with
    the default thresholds the collector's work grew with queue depth and cut enqueue throughput
    by a third at 600k queued messages. Objects alive after start-up are frozen out of collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (`uvicorn[standard]`, in the server extra, brings it):
    with it the one-message-per-request paths spend about a fifth less CPU per message
    (`python -m bench.hotpath`). None: asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run(config: ServerConfig) -> None:
    logs.setup(config.log_format, config.log_level)
    tune_gc()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(serve(config))
