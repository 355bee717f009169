"""End to end with running servers: kwok's pods are backed by real `rankq server` processes.

The operator (chart ServiceAccount token) sees pods and talks to the processes standing in for
them (their DNS names mapped to loopback). Covers: leader labels and the leader-only Service,
failover of that Service after the leader dies (measured), live settings, 3 -> 5 -> 3 and a rolling
image change under a producer/consumer workload with no acknowledged message lost.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid

import httpx
import pytest
from operator_support import OperatorProcess, StandIns, drop_finalizers, install_chart, unique

pytestmark = pytest.mark.k8s

QUEUE = "jobs"


@pytest.fixture(scope="module")
def env(k8s, tmp_path_factory):
    k8s.require("kube-controller-manager", "kwok", "helm")
    tmp = tmp_path_factory.mktemp("e2e")
    sys_ns = unique("rankq-sys")
    k8s.kubectl("create", "namespace", sys_ns)
    release = unique("rq")
    kubeconfig = install_chart(k8s, sys_ns, release, tmp)
    endpoints = tmp / "endpoints.json"
    op = OperatorProcess(kubeconfig, sys_ns, endpoints, tmp / "operator.log").start()
    ns = unique("t-e2e")
    k8s.kubectl("create", "namespace", ns)
    k8s.wait_for(lambda: k8s.kubectl("get", "sa", "default", "-n", ns, check=False).returncode == 0, 30, "default SA")
    stand = StandIns(k8s.kubeconfig, ns, tmp / "pods", endpoints).reserve("q").start()
    manifest = {
        "apiVersion": "rankq.io/v1alpha1",
        "kind": "Queue",
        "metadata": {"name": "q"},
        "spec": {"replicas": 3, "storage": {"ephemeral": True}, "queue": {"name": QUEUE}},
    }
    k8s.apply(manifest, namespace=ns)
    ctx = type("Ctx", (), {})()
    ctx.k8s, ctx.ns, ctx.op, ctx.stand, ctx.tmp = k8s, ns, op, stand, tmp
    # The manifest names no token: the operator generates one with all scopes; clients read it.
    secret = k8s.wait_for(lambda: k8s.get_json("secret", "q-token", namespace=ns), 60, "Secret q-token")
    ctx.auth = {"Authorization": "Bearer " + base64.b64decode(secret["data"]["token"]).decode()}
    try:
        yield ctx
    finally:
        stand.stop()
        op.stop()
        drop_finalizers(k8s, ns)
        k8s.kubectl("delete", "namespace", ns, "--wait=false", check=False)
        k8s.kubectl(
            "delete", "clusterrole,clusterrolebinding", "-l", f"app.kubernetes.io/instance={release}", check=False
        )
        k8s.kubectl("delete", "namespace", sys_ns, "--wait=false", check=False)


def pods(ctx) -> dict[str, dict]:
    items = ctx.k8s.get_json("pods", "-l", "rankq.io/queue=q", namespace=ctx.ns)["items"]
    return {p["metadata"]["name"]: p for p in items}


def labelled_leader(ctx) -> str | None:
    leaders = [n for n, p in pods(ctx).items() if p["metadata"]["labels"].get("rankq.io/role") == "leader"]
    assert len(leaders) <= 1, f"two pods labelled leader: {leaders}"
    return leaders[0] if leaders else None


def service_targets(ctx) -> set[str]:
    slices = ctx.k8s.get_json("endpointslices", "-l", "kubernetes.io/service-name=q", namespace=ctx.ns)["items"]
    return {
        e["targetRef"]["name"]
        for s in slices
        for e in (s.get("endpoints") or [])
        if e.get("targetRef") and (e.get("conditions") or {}).get("ready", True)
    }


def raft_leader(ctx) -> str | None:
    for pod in list(ctx.stand.members):
        try:
            st = httpx.get(ctx.stand.url(pod) + "/api/v1/cluster", timeout=1, headers=ctx.auth).json()
            if st.get("leader"):
                return st["leader"]
        except httpx.HTTPError:
            continue
    return None


def queue_status(ctx) -> dict:
    return ctx.k8s.get_json("queue", "q", namespace=ctx.ns).get("status") or {}


def wait_running(ctx, replicas: int, timeout: float = 90) -> str:
    def ok():
        st = queue_status(ctx)
        leader = labelled_leader(ctx)
        members = st.get("members") or []
        return (
            leader
            if (
                st.get("phase") == "Running"
                and leader
                and st.get("leader") == leader
                and len(members) == replicas
                and all(m["healthy"] for m in members)
                and service_targets(ctx) == {leader}
            )
            else None
        )

    try:
        return ctx.k8s.wait_for(ok, timeout, f"Queue q Running with {replicas} healthy members", interval=0.5)
    except BaseException:
        print(ctx.op.tail(80))
        raise


class Workload:
    """A producer and a consumer through whichever member answers (writes go through the log)."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.acked_enqueues: set[int] = set()  # payload numbers the server acknowledged
        self.received: set[int] = set()
        self.stop = threading.Event()
        self.produced = threading.Event()  # the producer has stopped: acked_enqueues is final
        self.errors = 0
        self.tag = uuid.uuid4().hex[:8]  # dedup keys unique to this workload
        self.threads = [
            threading.Thread(target=self.produce, daemon=True),
            threading.Thread(target=self.consume, daemon=True),
        ]

    def urls(self) -> list[str]:
        return [self.ctx.stand.url(p) for p in sorted(self.ctx.stand.members)]

    def _post(self, path: str, body: dict) -> httpx.Response | None:
        for url in self.urls():
            try:
                r = httpx.post(url + path, json=body, timeout=3, headers=self.ctx.auth)
                if r.status_code < 500:
                    return r
            except httpx.HTTPError:
                pass
        self.errors += 1
        time.sleep(0.1)
        return None

    def produce(self) -> None:
        n = 0
        while not self.stop.is_set():
            r = self._post(
                f"/api/v1/queues/{QUEUE}/messages",
                {"payload": {"n": n, "tag": self.tag}, "dedup_key": f"{self.tag}-{n}"},
            )
            if r is not None and r.status_code == 201:
                self.acked_enqueues.add(n)
                n += 1
            time.sleep(0.01)

    def consume(self) -> None:
        while not self.produced.is_set() or len(self.received) < len(self.acked_enqueues):
            r = self._post(f"/api/v1/queues/{QUEUE}/dequeue", {"max": 50, "wait": 0.5})
            if r is None or r.status_code != 200:
                continue
            for m in r.json()["messages"]:
                if m["payload"].get("tag") != self.tag:
                    continue
                # Delivered is what counts: an ack whose answer is lost in a restart may be retried
                # on another member and refused (409) although the first one was committed.
                self.received.add(m["payload"]["n"])
                self._post(f"/api/v1/queues/{QUEUE}/messages/{m['id']}/ack", {"lease_token": m["lease_token"]})
            if self.stop.is_set() and time.monotonic() > self.drain_deadline:
                return

    FLOWING = 10  # acknowledged enqueues that show traffic is flowing, before and after the change

    def wait_flowing(self, at_least: int) -> None:
        self.ctx.k8s.wait_for(
            lambda: len(self.acked_enqueues) >= at_least, 60, f"{at_least} enqueues acknowledged", interval=0.05
        )

    def __enter__(self) -> Workload:
        self.drain_deadline = float("inf")
        for t in self.threads:
            t.start()
        self.wait_flowing(self.FLOWING)  # the change under test happens while traffic flows
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:  # and traffic still flows after it, however quick the change was
            self.wait_flowing(len(self.acked_enqueues) + self.FLOWING)
        self.drain_deadline = time.monotonic() + 60
        self.stop.set()
        # The producer first: an enqueue in flight when `stop` is set may still be acknowledged,
        # and the consumer must go on until it has that one too.
        self.threads[0].join(15)
        self.produced.set()
        self.threads[1].join(75)

    def dead_lettered(self) -> set[int]:
        """Payload numbers of this workload in the dead-letter queue (delivered, but out of tries)."""
        for url in self.urls():
            try:
                r = httpx.get(
                    f"{url}/api/v1/queues/{QUEUE}/dlq", params={"limit": 1000}, timeout=3, headers=self.ctx.auth
                )
                if r.status_code == 200:
                    return {
                        m["payload"]["n"]
                        for m in r.json()["messages"]
                        if isinstance(m.get("payload"), dict) and m["payload"].get("tag") == self.tag
                    }
            except httpx.HTTPError:
                pass
        return set()

    def assert_nothing_lost(self) -> None:
        lost = self.acked_enqueues - self.received - self.dead_lettered()
        print(
            f"\nworkload: {len(self.acked_enqueues)} enqueues acknowledged, {len(self.received)} received, "
            f"{self.errors} rounds with no member answering"
        )
        assert len(self.acked_enqueues) > 20, f"workload too small: {len(self.acked_enqueues)}"
        assert not lost, f"{len(lost)} acknowledged messages never delivered, e.g. {sorted(lost)[:10]}"


@pytest.mark.timeout(180)
def test_leader_label_and_leader_only_service(env):
    leader = wait_running(env, 3)
    assert leader == raft_leader(env)
    roles = {n: p["metadata"]["labels"]["rankq.io/role"] for n, p in pods(env).items()}
    assert sorted(roles.values()) == ["follower", "follower", "leader"]
    st = queue_status(env)
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {"Ready": "True", "LeaderElected": "True", "Progressing": "False", "Degraded": "False"}
    # The operator created the queue in the group; status counts come from it.
    env.k8s.wait_for(lambda: queue_status(env).get("messages") is not None, 20, "message counts in status")
    line = env.k8s.kubectl("get", "rq", "q", "-n", env.ns).stdout.splitlines()[1].split()
    assert line[1:4] == ["3", "3", leader] and line[6] == "Running"


@pytest.mark.timeout(180)
def test_leader_service_fails_over_quickly(env):
    old = wait_running(env, 3)
    t0 = time.monotonic()
    env.stand.kill9(old)
    label_at = eps_at = None
    new = None
    deadline = t0 + 30
    while time.monotonic() < deadline and eps_at is None:
        leader = labelled_leader(env)
        if label_at is None and leader and leader != old:
            label_at, new = time.monotonic() - t0, leader
        if new and service_targets(env) == {new}:
            eps_at = time.monotonic() - t0
        time.sleep(0.05)
    print(f"\nleader-Service failover: label moved after {label_at}s, EndpointSlice after {eps_at}s")
    (env.tmp / "failover.json").write_text(json.dumps({"label_s": label_at, "endpointslice_s": eps_at}))
    assert new is not None and new != old, env.op.tail(40)
    assert eps_at is not None and eps_at <= 5.0, f"Service selected the new leader only after {eps_at}s"
    # Bring the dead member back as Kubernetes would: the pod is recreated and the process restarts.
    env.k8s.kubectl("delete", "pod", old, "-n", env.ns, "--wait=false")
    wait_running(env, 3)


@pytest.mark.timeout(180)
def test_live_settings_change_without_restarts(env):
    leader = wait_running(env, 3)
    pids = {n: m.proc.pid for n, m in env.stand.members.items()}
    patch = {
        "spec": {
            "queue": {"visibilityTimeoutSeconds": 45, "maxLength": 500, "policy": "strict"},
            "deadLetter": {"maxDeliveries": 2, "retentionSeconds": 60},
        }
    }
    env.k8s.kubectl("patch", "queue", "q", "-n", env.ns, "--type=merge", "-p", json.dumps(patch))

    def applied():
        s = httpx.get(env.stand.url(leader) + f"/api/v1/queues/{QUEUE}", timeout=2, headers=env.auth).json()["settings"]
        return (
            s
            if (
                s["visibility_timeout"] == 45
                and s["max_length"] == 500
                and s["policy"] == "strict"
                and s["max_deliveries"] == 2
                and s["dead_letter_retention"] == 60
            )
            else None
        )

    env.k8s.wait_for(applied, 20, "settings applied through the leader")
    # Replicated: every member has them; no process was restarted.
    for pod in env.stand.members:
        s = httpx.get(env.stand.url(pod) + f"/api/v1/queues/{QUEUE}", timeout=2, headers=env.auth).json()["settings"]
        assert s["visibility_timeout"] == 45 and s["max_deliveries"] == 2
    assert {n: m.proc.pid for n, m in env.stand.members.items()} == pids
    events = env.k8s.get_json("events", "--field-selector", "involvedObject.name=q", namespace=env.ns)["items"]
    assert any(e["reason"] == "SettingsApplied" for e in events)
    # A second live change, which the workloads below rely on: short leases, retry forever (a
    # delivery whose ack was cut off by a restart comes back quickly instead of dead-lettering).
    patch = {"spec": {"queue": {"visibilityTimeoutSeconds": 3, "maxLength": None}, "deadLetter": {"maxDeliveries": 0}}}
    env.k8s.kubectl("patch", "queue", "q", "-n", env.ns, "--type=merge", "-p", json.dumps(patch))
    env.k8s.wait_for(
        lambda: (
            (
                s := httpx.get(env.stand.url(leader) + f"/api/v1/queues/{QUEUE}", timeout=2, headers=env.auth).json()[
                    "settings"
                ]
            )["visibility_timeout"]
            == 3
            and s["max_deliveries"] == 0
            and s["max_length"] is None
        ),
        20,
        "second change applied (and maxLength cleared)",
    )


@pytest.mark.timeout(420)
def test_scale_3_5_3_under_load(env):
    wait_running(env, 3)
    with Workload(env) as load:
        t0 = time.monotonic()
        env.k8s.kubectl("patch", "queue", "q", "-n", env.ns, "--type=merge", "-p", '{"spec":{"replicas":5}}')
        wait_running(env, 5, timeout=150)
        assert env.k8s.get_json("statefulset", "q", namespace=env.ns)["spec"]["replicas"] == 5
        peers = env.k8s.get_json("configmap", "q-config", namespace=env.ns)["data"]["peers"]
        assert peers.count("=") == 5
        env.k8s.kubectl("patch", "queue", "q", "-n", env.ns, "--type=merge", "-p", '{"spec":{"replicas":3}}')
        wait_running(env, 3, timeout=150)
        assert env.k8s.get_json("statefulset", "q", namespace=env.ns)["spec"]["replicas"] == 3
        print(f"\n3 -> 5 -> 3 took {time.monotonic() - t0:.1f}s")
    load.assert_nothing_lost()
    events = [
        e["reason"]
        for e in env.k8s.get_json("events", "--field-selector", "involvedObject.name=q", namespace=env.ns)["items"]
    ]
    assert events.count("MemberAdded") >= 2 and events.count("MemberRemoved") >= 2


@pytest.mark.timeout(420)
def test_rolling_image_change_followers_first_leader_last(env):
    leader = wait_running(env, 3)
    env.k8s.kubectl("get", "pods", "-n", env.ns)
    before = {n: p["metadata"]["uid"] for n, p in pods(env).items()}
    with Workload(env) as load:
        env.k8s.kubectl("patch", "queue", "q", "-n", env.ns, "--type=merge", "-p", '{"spec":{"image":"rankq:0.2.0"}}')

        def rolled():
            now = pods(env)
            images = {p["spec"]["containers"][0]["image"] for p in now.values()}
            return (
                images == {"rankq:0.2.0"}
                and len(now) == 3
                and all(now[n]["metadata"]["uid"] != before[n] for n in before if n in now)
            )

        t0 = time.monotonic()
        env.k8s.wait_for(rolled, 240, "every pod recreated on the new image", interval=1)
        wait_running(env, 3, timeout=90)
        print(f"\nrolling update of 3 members took {time.monotonic() - t0:.1f}s")
    load.assert_nothing_lost()
    # Events in the order they were written (timestamps have one-second resolution; the operator
    # posts its events one after another, so their resourceVersions follow that order).
    events = [
        e
        for e in env.k8s.get_json("events", "--field-selector", "involvedObject.name=q", namespace=env.ns)["items"]
        if e["reason"] in ("RollingUpdate", "LeaderTransferred")
    ]
    events.sort(key=lambda e: int(e["metadata"]["resourceVersion"]))
    steps = [
        (e["reason"], e["message"].split()[1] if e["reason"] == "RollingUpdate" else e["message"].split()[3])
        for e in events
    ]
    restarted = [pod for reason, pod in steps if reason == "RollingUpdate"]
    assert sorted(restarted) == sorted(before), steps
    # Followers first, the leader last: the last member restarted is the one that was leading by
    # then (normally the leader at the start; an election during the roll may have moved it), and
    # leadership was moved off it before it was deleted.
    last = restarted[-1]
    assert ("LeaderTransferred", last) in steps[: steps.index(("RollingUpdate", last))], steps
    if last != leader:
        print(f"\nleadership moved during the roll: {leader} at the start, {last} restarted last; {steps}")
