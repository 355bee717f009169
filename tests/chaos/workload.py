"""Producers and consumers for chaos runs, bounded in count and time, recording into a History.

Producers enqueue numbered messages with a dedup key and retry the same key on another node after
a 503 or a transport error (the dedup window makes that safe). Consumers lease a few messages at a
time with short visibility timeouts, then mostly ack, sometimes nack, sometimes take too long (the
lease expires under them) or walk away. After the faults, `drain` empties the queue through the
leader and `final_state` reads the dead-letter list and the state of every message.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
from history import FAIL, OK, UNKNOWN, Delivery, FinalState, History

ENQUEUE_TIMEOUT = 8.0  # above the server's 5 s commit deadline, so a slow commit is seen as a 503
DEQUEUE_WAIT = 1.0


def classify_error(err: httpx.HTTPError) -> str:
    """A connection never made cannot have done anything; any other transport failure might have."""
    return FAIL if isinstance(err, (httpx.ConnectError, httpx.ConnectTimeout)) else UNKNOWN


def new_client(timeout: float = ENQUEUE_TIMEOUT) -> httpx.Client:
    return httpx.Client(timeout=timeout, trust_env=False)


class Workload:
    def __init__(
        self,
        urls: list[str],
        queue: str,
        history: History,
        *,
        producers: int = 3,
        consumers: int = 4,
        messages_per_producer: int = 5000,
        producer_pause: float = 0.08,
        duration: float = 600.0,
        seed: int = 0,
    ) -> None:
        self.urls = urls
        self.queue = queue
        self.history = history
        self.n_producers = producers
        self.n_consumers = consumers
        self.messages_per_producer = messages_per_producer
        self.producer_pause = producer_pause
        self.deadline = time.monotonic() + duration  # hard bound, whatever happens
        self.seed = seed
        self.stop_producing = threading.Event()
        self.stop_consuming = threading.Event()
        self.threads: list[threading.Thread] = []

    def start(self) -> Workload:
        for k in range(self.n_producers):
            self.threads.append(threading.Thread(target=self._producer, args=(k,), name=f"producer-{k}", daemon=True))
        for k in range(self.n_consumers):
            self.threads.append(threading.Thread(target=self._consumer, args=(k,), name=f"consumer-{k}", daemon=True))
        for t in self.threads:
            t.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop producing (each producer settles its current key), then stop consuming; join all."""
        self.stop_producing.set()
        end = time.monotonic() + timeout
        for t in self.threads:
            if t.name.startswith("producer"):
                t.join(max(0.1, end - time.monotonic()))
        self.stop_consuming.set()
        for t in self.threads:
            t.join(max(0.1, end - time.monotonic()))
        stuck = [t.name for t in self.threads if t.is_alive()]
        if stuck:
            raise RuntimeError(f"workload threads did not stop in time: {stuck}")

    def _out_of_time(self) -> bool:
        return time.monotonic() > self.deadline

    # ---- producers ------------------------------------------------------------------------------

    def _producer(self, k: int) -> None:
        rng = random.Random(self.seed * 1000 + k)
        name = f"p{k}"
        h = self.history
        with new_client() as http:
            node = rng.randrange(len(self.urls))
            for i in range(self.messages_per_producer):
                if self.stop_producing.is_set() or self._out_of_time():
                    return
                key = f"{name}-{i}"
                payload = {"key": key, "p": k, "i": i, "pad": "x" * rng.randrange(0, 64)}
                settle_by = time.monotonic() + 30  # retry one key for at most this long
                while not self._out_of_time() and time.monotonic() < settle_by:
                    url = self.urls[node]
                    op = h.enqueue_invoked(name, key, payload, url)
                    try:
                        r = http.post(
                            f"{url}/api/v1/queues/{self.queue}/messages",
                            json={"payload": payload, "dedup_key": key, "priority": rng.randint(1, 5)},
                        )
                    except httpx.HTTPError as err:
                        h.complete(op, classify_error(err))
                    else:
                        if r.status_code == 201:
                            body = r.json()
                            h.complete(op, OK, 201, id=body["id"], duplicate=body["duplicate"])
                            break
                        if r.status_code == 503:
                            h.complete(op, UNKNOWN, 503)
                        else:
                            h.complete(op, FAIL, r.status_code)
                            h.unexpected_answer("enqueue", url, r.status_code, r.text)
                    node = (node + 1) % len(self.urls)  # try elsewhere
                    time.sleep(rng.uniform(0.05, 0.25))
                time.sleep(self.producer_pause)

    # ---- consumers ------------------------------------------------------------------------------

    def _consumer(self, k: int) -> None:
        rng = random.Random(self.seed * 1000 + 500 + k)
        name = f"c{k}"
        h = self.history
        with new_client(timeout=DEQUEUE_WAIT + ENQUEUE_TIMEOUT) as http:
            node = rng.randrange(len(self.urls))
            while not self.stop_consuming.is_set() and not self._out_of_time():
                url = self.urls[node]
                vt = rng.choice([2, 3, 4, 5])
                t0 = time.time()
                try:
                    r = http.post(
                        f"{url}/api/v1/queues/{self.queue}/dequeue",
                        json={"max": rng.randint(1, 4), "wait": DEQUEUE_WAIT, "visibility_timeout": vt},
                    )
                except httpx.HTTPError as err:
                    h.dequeue_outcome(classify_error(err))
                    node = (node + 1) % len(self.urls)
                    time.sleep(0.1)
                    continue
                t1 = time.time()
                if r.status_code != 200:
                    h.dequeue_outcome(UNKNOWN if r.status_code == 503 else FAIL)
                    if r.status_code != 503:
                        h.unexpected_answer("dequeue", url, r.status_code, r.text)
                    node = (node + 1) % len(self.urls)
                    time.sleep(0.2)
                    continue
                h.dequeue_outcome(OK)
                got = [h.delivered(name, url, m, vt * 1000, t0, t1) for m in r.json()["messages"]]
                for d in got:
                    self._handle(http, rng, name, node, d)
                if rng.random() < 0.2:
                    node = (node + 1) % len(self.urls)  # spread consumers over the members

    def _handle(self, http: httpx.Client, rng: random.Random, name: str, node: int, d: Delivery) -> None:
        roll = rng.random()
        if roll < 0.03:
            return  # walk away: the lease expires and the message comes back
        if roll < 0.05:
            time.sleep(d.vt_ms / 1000 + 0.3)  # too slow: the ack below should meet an expired lease
        elif roll < 0.15:
            self._lease_op(http, "nack", name, node, d, {"lease_token": d.token, "delay": 0.2, "error": "chaos nack"})
            return
        else:
            time.sleep(rng.uniform(0.0, 0.05))  # "work"
        self._lease_op(http, "ack", name, node, d, {"lease_token": d.token, "result": {"by": name}})

    def _lease_op(self, http: httpx.Client, kind: str, name: str, node: int, d: Delivery, body: dict) -> None:
        """Ack or nack, retrying an unknown outcome on other nodes while the lease may still be live."""
        h = self.history
        for attempt in range(3):
            url = self.urls[(node + attempt) % len(self.urls)]
            op = h.lease_invoked(kind, name, url, d, delay_ms=round(body.get("delay", 0) * 1000))
            try:
                r = http.post(f"{url}/api/v1/queues/{self.queue}/messages/{d.id}/{kind}", json=body)
            except httpx.HTTPError as err:
                h.complete(op, classify_error(err))
            else:
                if r.status_code == 200:
                    h.complete(op, OK, 200)
                    return
                if r.status_code in (404, 409):
                    h.complete(op, FAIL, r.status_code, detail=r.json().get("detail"))
                    return
                h.complete(op, UNKNOWN if r.status_code == 503 else FAIL, r.status_code)
                if r.status_code != 503:
                    h.unexpected_answer(kind, url, r.status_code, r.text)
                    return
            if time.time() * 1000 > d.expires_ms or self._out_of_time():
                return
            time.sleep(0.1)


# ---- after the faults ---------------------------------------------------------------------------


def drain(leader_url, queue: str, history: History, timeout: float = 120.0) -> bool:
    """Dequeue and ack through the leader until nothing is ready, delayed or leased (twice in a row).

    `leader_url` is a callable returning the current leader's URL. Returns whether the queue emptied.
    """
    deadline = time.monotonic() + timeout
    empty_seen = 0
    with new_client(timeout=15.0) as http:
        while time.monotonic() < deadline:
            url = leader_url()
            try:
                counts = http.get(f"{url}/api/v1/queues/{queue}").json()["counts"]
                if counts["ready"] + counts["delayed"] + counts["leased"] == 0:
                    empty_seen += 1
                    if empty_seen >= 2:
                        return True
                    time.sleep(0.5)
                    continue
                empty_seen = 0
            except (httpx.HTTPError, KeyError, ValueError):
                time.sleep(0.2)
                continue
            t0 = time.time()
            try:
                r = http.post(
                    f"{url}/api/v1/queues/{queue}/dequeue", json={"max": 100, "wait": 1, "visibility_timeout": 30}
                )
            except httpx.HTTPError as err:
                history.dequeue_outcome(classify_error(err))  # an unknown one may have leased messages
                time.sleep(0.2)
                continue
            if r.status_code != 200:
                history.dequeue_outcome(UNKNOWN if r.status_code == 503 else FAIL)
                time.sleep(0.2)
                continue
            history.dequeue_outcome(OK)
            got = [history.delivered("drain", url, m, 30_000, t0, time.time()) for m in r.json()["messages"]]
            if not got:
                continue
            ops = [history.lease_invoked("ack", "drain", url, d) for d in got]
            try:
                r = http.post(
                    f"{url}/api/v1/queues/{queue}/ack",
                    json={"items": [{"id": d.id, "lease_token": d.token} for d in got]},
                )
            except httpx.HTTPError as err:
                for op in ops:
                    history.complete(op, classify_error(err))
                continue
            if r.status_code != 200:
                for op in ops:
                    history.complete(op, UNKNOWN if r.status_code == 503 else FAIL, r.status_code)
                continue
            for op, res in zip(ops, r.json()["results"]):
                history.complete(op, OK if res["ok"] else FAIL, res["status"], detail=res["detail"])
    return False


def final_state(url: str, queue: str, history: History, drained: bool) -> FinalState:
    """The dead-letter list and the state of every message the history names, read from `url`."""
    from history import canonical

    final = FinalState(drained=drained)
    with new_client(timeout=15.0) as http:
        after = None
        for _ in range(10_000):  # bounded paging
            params = {"limit": 1000} if after is None else {"limit": 1000, "after": after}
            page = http.get(f"{url}/api/v1/queues/{queue}/dlq", params=params).json()
            for m in page["messages"]:
                final.dlq[m["id"]] = canonical(m.get("payload"))
                final.dlq_deliveries[m["id"]] = m["deliveries"]
            after = page.get("next_after")
            if after is None:
                break
    ids = sorted({op.id for op in history.enqueues if op.outcome == OK} | {d.id for d in history.deliveries})

    def state_of(chunk: list[int]) -> dict[int, str | None]:
        out = {}
        with new_client(timeout=15.0) as http:
            for mid in chunk:
                r = http.get(f"{url}/api/v1/queues/{queue}/messages/{mid}")
                if r.status_code == 404:
                    out[mid] = None
                elif r.status_code == 200:
                    out[mid] = r.json()["state"]
                else:
                    raise RuntimeError(f"reading message {mid}: {r.status_code} {r.text[:200]}")
        return out

    chunks = [ids[i::4] for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        for part in pool.map(state_of, chunks):
            final.status.update(part)
    return final
