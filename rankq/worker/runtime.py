"""`Worker`: fetch into free slots, run the handler, keep leases alive, settle, drain.

One asyncio loop runs four things: the fetcher (a long-poll dequeue for as many messages as there
are free slots, never more), one task per message (the handler: a coroutine on the loop, or a
plain function in a thread pool), the heartbeat (extends every lease at a third of the visibility
timeout) and the acker (sends the acks that pile up while the previous batch is in flight, so a
busy worker acks many messages per request).

Drain (SIGTERM or SIGINT, or `stop()`): stop fetching; the poll in flight is let finish and what it
brings is released at once; running handlers get until the drain timeout; whatever still runs then
is released (given back without counting the delivery) and the worker returns. A second signal
skips the wait.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..client import AsyncClient, ConflictError, Message, NotFoundError, RankQError
from ..client.errors import ApiError
from ..schemas import NackRequest
from .metrics import WorkerMetrics, serve_endpoint
from .outcomes import Reject, Retry

log = logging.getLogger("rankq.worker")

DEFAULT_CONCURRENCY = 8
DEFAULT_POLL_WAIT = 5.0  # seconds a dequeue waits on an empty queue: no busy polling
DEFAULT_DRAIN_TIMEOUT = 30.0
HEARTBEAT_FRACTION = 1 / 3  # extend a lease once this share of the visibility timeout has passed
SETTLE_GRACE = 5.0  # after the drain deadline: how long acks and nacks already under way may take
ACK_BATCH = 1000
# the server's limit on a nack's error text, read from the wire model that enforces it
ERROR_MAX = next(m.max_length for m in NackRequest.model_fields["error"].metadata if hasattr(m, "max_length"))

RUNNING, SETTLING = "running", "settling"


class Job:
    """One leased message and what the worker knows about its lease."""

    __slots__ = ("msg", "task", "future", "state", "started", "renewed_at", "lost", "abandoned")

    def __init__(self, msg: Message, leased_at: float) -> None:
        self.msg = msg
        self.task: asyncio.Task | None = None
        self.future: asyncio.Future | None = None  # a sync handler's thread
        self.state = RUNNING
        self.started = False  # the handler got a slot (a prefetched message waits for one)
        self.renewed_at = leased_at  # monotonic time the lease was last granted or extended (taken early)
        self.lost = False
        self.abandoned = False


class Worker:
    """Runs one handler over the messages of one queue.

    `url` is one server or a comma-separated group (the client moves between members).
    `concurrency` handlers run at once; `prefetch` extra messages may wait leased for a slot.
    `visibility_timeout` (seconds; default the queue's) is the lease asked for and renewed.
    `timeout` bounds each handler run (a timed-out run is nacked as failed). `drain_timeout` is
    how long running handlers may finish after SIGTERM. `metrics_port` serves /healthz, /readyz
    and /metrics.
    """

    def __init__(
        self,
        url: str,
        queue: str,
        concurrency: int = DEFAULT_CONCURRENCY,
        *,
        prefetch: int = 0,
        visibility_timeout: float | None = None,
        timeout: float | None = None,
        drain_timeout: float = DEFAULT_DRAIN_TIMEOUT,
        poll_wait: float = DEFAULT_POLL_WAIT,
        token: str | None = None,
        metrics_port: int | None = None,
        metrics_host: str = "0.0.0.0",
        request_timeout: float = 10.0,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be 1 or more")
        if prefetch < 0:
            raise ValueError("prefetch must be 0 or more")
        self.url = url
        self.queue = queue
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.visibility_timeout = visibility_timeout
        self.timeout = timeout
        self.drain_timeout = drain_timeout
        self.poll_wait = poll_wait
        self.token = token
        self.metrics_port = metrics_port
        self.metrics_host = metrics_host
        self.request_timeout = request_timeout
        self.metrics = WorkerMetrics(queue)
        self._handler: Callable[[Message], Any] | None = None
        self._handler_timeout: float | None = None
        self._is_async = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._jobs: dict[int, Job] = {}
        self._to_ack: list[tuple[Job, Any]] = []
        self._ready = False
        self._early_stop: bool | None = None
        self.endpoint_port: int | None = None

    # ---- public API -----------------------------------------------------------------------------

    def handler(self, fn: Callable | None = None, *, timeout: float | None = None):
        """Register the handler: ``@worker.handler`` or ``@worker.handler(timeout=30)``.

        It gets the leased `Message`. Return a JSON value → ack with it as the result; raise
        `Retry(delay)` → redelivered after `delay`; raise `Reject(reason)` → dead-lettered now;
        any other exception → nacked with its text, redelivered after the queue's backoff."""

        def register(f: Callable) -> Callable:
            self._handler = f
            self._is_async = inspect.iscoroutinefunction(f)
            self._handler_timeout = timeout
            return f

        return register(fn) if fn is not None else register

    def run(self) -> None:
        """Run until SIGTERM/SIGINT (or `stop()`) and the drain that follows."""
        asyncio.run(self.serve())

    def stop(self, now: bool = False) -> None:
        """Start the drain (from any thread); `now=True` also skips waiting for running handlers."""
        loop = self._loop
        if loop is None:  # not started yet: stop as soon as it is
            self._early_stop = now
        else:
            loop.call_soon_threadsafe(self._request_stop, now)

    @property
    def ready(self) -> bool:
        """True while the worker fetches work (what /readyz reports)."""
        return self._ready

    # ---- main -----------------------------------------------------------------------------------

    async def serve(self) -> None:
        """The worker on the running loop; returns once drained."""
        if self._handler is None:
            raise RuntimeError("no handler: register one with @worker.handler")
        self._loop = loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        self._now = asyncio.Event()
        self._slot = asyncio.Event()
        self._idle = asyncio.Event()
        self._ack_wake = asyncio.Event()
        self._slots = asyncio.Semaphore(self.concurrency)
        self._pool = (
            None if self._is_async else ThreadPoolExecutor(self.concurrency, thread_name_prefix="rankq-handler")
        )
        self._client = AsyncClient(self.url, timeout=self.request_timeout, token=self.token)
        endpoint = None
        installed: list[signal.Signals] = []
        try:
            if self.metrics_port is not None:
                endpoint = await serve_endpoint(self.metrics_host, self.metrics_port, self.metrics, lambda: self._ready)
                self.endpoint_port = endpoint.sockets[0].getsockname()[1]
            for sig in (signal.SIGTERM, signal.SIGINT):
                try:
                    loop.add_signal_handler(sig, self._on_signal, sig)
                    installed.append(sig)
                except (RuntimeError, ValueError):  # not the main thread: stop() only
                    pass
            if self._early_stop is not None:
                self._request_stop(self._early_stop)
            vt = self.visibility_timeout
            if vt is None:
                vt = float((await self._client.get_queue(self.queue)).settings["visibility_timeout"])
            self._vt = vt
            log.info(
                "worker started: queue %s, concurrency %d, visibility timeout %gs, handler %s",
                self.queue,
                self.concurrency,
                vt,
                getattr(self._handler, "__qualname__", self._handler),
            )
            self._ready = True
            fetcher = asyncio.create_task(self._fetch_loop(), name="rankq-worker-fetch")
            helpers = [
                asyncio.create_task(self._heartbeat_loop(), name="rankq-worker-heartbeat"),
                asyncio.create_task(self._ack_loop(), name="rankq-worker-ack"),
            ]
            for task in (fetcher, *helpers):
                task.add_done_callback(self._crashed)
            await self._stopping.wait()
            self._ready = False
            await self._drain(fetcher)
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
            log.info("worker stopped")
        finally:
            self._ready = False
            for sig in installed:
                loop.remove_signal_handler(sig)
            if endpoint is not None:
                endpoint.close()
            await self._client.close()
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)

    def _crashed(self, task: asyncio.Task) -> None:
        """A loop that dies of a bug must not leave the worker hanging: drain and stop."""
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed; draining", task.get_name(), exc_info=task.exception())
            self._request_stop(False)

    def _on_signal(self, sig: int) -> None:
        name = signal.Signals(sig).name
        if not self._stopping.is_set():
            log.info("%s: draining (stop fetching; running handlers get up to %gs)", name, self.drain_timeout)
        else:
            log.info("%s again: releasing unfinished messages now", name)
        self._request_stop(self._stopping.is_set())

    def _request_stop(self, now: bool) -> None:
        self._stopping.set()
        self._slot.set()
        if now:
            self._now.set()

    # ---- fetching -------------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        capacity = self.concurrency + self.prefetch
        low = max(1, capacity // 4)  # wait for a few free slots rather than fetch one at a time
        backoff = 0.1
        while not self._stopping.is_set():
            free = capacity - len(self._jobs)
            if free < low:
                self._slot.clear()
                await self._slot.wait()
                continue
            leased_at = time.monotonic()
            try:
                msgs = await self._client.dequeue(
                    self.queue, max=free, wait=self.poll_wait, visibility_timeout=self._vt
                )
                backoff = 0.1
            except RankQError as err:
                level = logging.ERROR if isinstance(err, NotFoundError) else logging.WARNING
                log.log(level, "dequeue failed: %s; again in %.1fs", err, backoff)
                try:
                    await asyncio.wait_for(self._stopping.wait(), backoff)
                except TimeoutError:
                    pass
                backoff = min(backoff * 2, 5.0)
                continue
            for msg in msgs:
                job = Job(msg, leased_at)
                self._jobs[msg.id] = job
                if self._stopping.is_set():  # arrived after the drain began: give it back untouched
                    job.state = SETTLING
                    asyncio.create_task(self._release(job))
                else:
                    job.task = asyncio.create_task(self._run(job))
            self.metrics.inflight.set(len(self._jobs))

    # ---- one message ----------------------------------------------------------------------------

    async def _run(self, job: Job) -> None:
        msg = job.msg
        handler, loop = self._handler, self._loop
        assert handler is not None and loop is not None  # serve() sets both before the first job
        timeout = self._handler_timeout if self._handler_timeout is not None else self.timeout
        try:
            async with self._slots:  # prefetched messages wait here, leased and kept alive
                if self._stopping.is_set():
                    return  # not started: the drain releases it
                job.started = True
                started = time.perf_counter()
                if self._is_async:
                    result = await asyncio.wait_for(handler(msg), timeout)
                else:
                    job.future = loop.run_in_executor(self._pool, handler, msg)
                    result = await asyncio.wait_for(asyncio.shield(job.future), timeout)
        except asyncio.CancelledError:
            if job.abandoned:  # released by the drain
                return
            raise
        except TimeoutError:
            self._observe(started)
            await self._failed(job, f"timed out after {timeout:g}s")
            return
        except Retry as r:
            self._observe(started)
            self.metrics.retried.inc()
            await self._nack(job, delay=r.delay, error=str(r))
            return
        except Reject as r:
            self._observe(started)
            self.metrics.rejected.inc()
            log.warning("message %d rejected (delivery %d): %s", msg.id, msg.deliveries, r.reason)
            await self._nack(job, error=r.reason, dead=True)
            return
        except Exception as err:
            self._observe(started)
            await self._failed(job, f"{type(err).__name__}: {err}")
            return
        self._observe(started)
        job.state = SETTLING
        if job.lost:
            self._finish(job)
            return
        if result is not None:
            try:
                json.dumps(result)
            except (TypeError, ValueError) as err:
                await self._failed(job, f"result is not JSON: {err}")
                return
        self._to_ack.append((job, result))
        self._ack_wake.set()

    def _observe(self, started: float) -> None:
        self.metrics.duration.observe(time.perf_counter() - started)

    async def _failed(self, job: Job, error: str) -> None:
        self.metrics.failed.inc()
        log.error("message %d failed (delivery %d): %s", job.msg.id, job.msg.deliveries, error)
        await self._nack(job, error=error)

    async def _nack(
        self, job: Job, *, delay: float | None = None, error: str | None = None, dead: bool = False
    ) -> None:
        job.state = SETTLING
        try:
            if not job.lost:
                await self._client.nack(job.msg, delay=delay, error=(error or "")[:ERROR_MAX] or None, dead=dead)
        except (ConflictError, NotFoundError) as err:
            self._lost(job, str(err))
        except RankQError as err:  # the lease runs out and the message comes back anyway
            log.warning("nack of message %d failed: %s", job.msg.id, err)
        finally:
            self._finish(job)

    async def _release(self, job: Job) -> None:
        try:
            await self._client.release(job.msg)
            self.metrics.released.inc()
        except (ConflictError, NotFoundError) as err:
            self._lost(job, str(err))
        except RankQError as err:
            log.warning("release of message %d failed (it returns when its lease ends): %s", job.msg.id, err)
        finally:
            self._finish(job)

    def _lost(self, job: Job, why: str) -> None:
        if not job.lost:
            job.lost = True
            self.metrics.lease_lost.inc()
            log.warning("lease of message %d lost (%s); its result is not acked", job.msg.id, why)

    def _finish(self, job: Job) -> None:
        if self._jobs.pop(job.msg.id, None) is not None:
            self.metrics.inflight.set(len(self._jobs))
            self._slot.set()
            if not self._jobs:
                self._idle.set()

    # ---- leases and acks ------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        every = self._vt * HEARTBEAT_FRACTION
        while True:
            await asyncio.sleep(max(0.05, every / 4))
            now = time.monotonic()
            due = [j for j in self._jobs.values() if not j.lost and now - j.renewed_at >= every]
            if due:
                await asyncio.gather(*(self._extend(j) for j in due))

    async def _extend(self, job: Job) -> None:
        asked = time.monotonic()
        try:
            await self._client.extend(job.msg, visibility_timeout=self._vt)
        except (ConflictError, NotFoundError) as err:
            if job.msg.id in self._jobs:
                self._lost(job, str(err))
            return
        except RankQError as err:
            log.warning("lease extension of message %d failed (tried again shortly): %s", job.msg.id, err)
            return
        job.renewed_at = asked
        self.metrics.lease_extensions.inc()

    async def _ack_loop(self) -> None:
        backoff = 0.1
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            while self._to_ack:
                batch, self._to_ack = self._to_ack[:ACK_BATCH], self._to_ack[ACK_BATCH:]
                failed: RankQError | None = None
                try:
                    outcomes = await self._client.ack_batch([(j.msg, r) for j, r in batch])
                except ApiError as err:
                    if err.status < 500 and err.status != 429:  # refused as a whole (a result too large): one by one
                        for job, result in batch:
                            asyncio.create_task(self._ack_one(job, result))
                        continue
                    failed = err
                except RankQError as err:
                    failed = err
                if failed is not None:
                    log.warning("ack of %d messages failed (tried again in %.1fs): %s", len(batch), backoff, failed)
                    self._to_ack[:0] = batch
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
                backoff = 0.1
                for (job, _), outcome in zip(batch, outcomes):
                    if outcome.ok:
                        self.metrics.processed.inc()
                    else:
                        self._lost(job, f"{outcome.status}: {outcome.detail}")
                    self._finish(job)

    async def _ack_one(self, job: Job, result: Any) -> None:
        try:
            await self._client.ack(job.msg, result=result)
            self.metrics.processed.inc()
            self._finish(job)
        except (ConflictError, NotFoundError) as err:
            self._lost(job, str(err))
            self._finish(job)
        except ApiError as err:
            await self._failed(job, f"result refused: {err}")
        except RankQError as err:
            log.warning("ack of message %d failed: %s", job.msg.id, err)
            self._finish(job)

    # ---- drain ----------------------------------------------------------------------------------

    async def _wait(self, aw: asyncio.Future, deadline: float) -> bool:
        """Wait for `aw` until `deadline` or a second signal; True when it finished."""
        now_task = asyncio.ensure_future(self._now.wait())
        try:
            done, _ = await asyncio.wait(
                {aw, now_task}, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            now_task.cancel()
        return aw in done

    def _abandon(self, job: Job):
        job.abandoned = True
        job.state = SETTLING
        if job.task is not None:
            job.task.cancel()  # a coroutine stops; a thread runs on, its result unused
        return self._release(job)

    async def _drain(self, fetcher: asyncio.Task) -> None:
        deadline = time.monotonic() + self.drain_timeout
        waiting = [self._abandon(j) for j in list(self._jobs.values()) if j.state == RUNNING and not j.started]
        if waiting:  # prefetched, never started: back at once
            log.info("releasing %d prefetched messages", len(waiting))
            await asyncio.gather(*waiting)
        # The poll in flight may still lease messages: let it end (it releases what it brings).
        if not await self._wait(fetcher, deadline):
            fetcher.cancel()  # closes its request: the server releases what a departed poll leased
        await asyncio.gather(fetcher, return_exceptions=True)
        if self._jobs:
            log.info("waiting for %d running handlers", len(self._jobs))
            self._idle.clear()
            idle = asyncio.ensure_future(self._idle.wait())
            if self._jobs and not await self._wait(idle, deadline):
                idle.cancel()
        releases = []
        for job in list(self._jobs.values()):
            if job.state == RUNNING and not (job.future is not None and job.future.done()):
                releases.append(self._abandon(job))
        if releases:
            log.info("releasing %d unfinished messages", len(releases))
            await asyncio.gather(*releases)
        if self._jobs:  # handlers that finished: their acks and nacks are under way
            self._idle.clear()
            idle = asyncio.ensure_future(self._idle.wait())
            if self._jobs and not await self._wait_plain(idle, time.monotonic() + SETTLE_GRACE):
                idle.cancel()
                log.warning("%d messages not settled; they return when their leases end", len(self._jobs))

    @staticmethod
    async def _wait_plain(aw: asyncio.Future, deadline: float) -> bool:
        done, _ = await asyncio.wait({aw}, timeout=max(0.0, deadline - time.monotonic()))
        return aw in done
