"""A replicated group of real server processes on loopback."""

from __future__ import annotations

import os
import shutil
import threading
import time

import httpx
import pytest
from serverproc import Cluster, wait_for

pytestmark = pytest.mark.timeout(180)


def api(node) -> httpx.Client:
    return httpx.Client(base_url=node.url + "/api/v1", timeout=10)


def send(node, queue, payload, **kw):
    with api(node) as c:
        return c.post(f"/queues/{queue}/messages", json={"payload": payload, **kw})


def counts(node, queue):
    with api(node) as c:
        return c.get(f"/queues/{queue}").json()["counts"]


def test_status_and_writes_through_a_follower(cluster):
    g = cluster(3)
    leader = g.leader()
    # Members publish their ids and URLs through the log just after a leader exists.
    status = wait_for(
        lambda: (
            (st := g.status(leader))["leader"] == leader.node_id
            and {m["id"] for m in st["members"]} == {"n0", "n1", "n2"}
            and st
        ),
        20,
        "every member's id",
    )
    assert len(status["members"]) == 3
    wait_for(lambda: all(m["healthy"] for m in g.status(leader)["members"]), 20, "every member connected")
    follower = g.followers()[0]
    with api(follower) as c:
        r = c.post("/queues", json={"name": "jobs"})
        assert r.status_code == 201
        assert r.headers["x-rankq-leader"] == leader.node_id
        assert r.headers["x-rankq-leader-url"] == leader.url
        ids = [c.post("/queues/jobs/messages", json={"payload": i}).json()["id"] for i in range(20)]
    # Every member applies the committed writes.
    for n in g.nodes:
        wait_for(lambda n=n: counts(n, "jobs")["ready"] == 20, 10, f"{n.node_id} to apply")
    # A dequeue through the other follower goes through the log too: no double delivery.
    other = g.followers()[1]
    with api(other) as c:
        got = c.post("/queues/jobs/dequeue", json={"max": 15}).json()["messages"]
    with api(leader) as c:
        rest = c.post("/queues/jobs/dequeue", json={"max": 15}).json()["messages"]
    assert sorted(m["id"] for m in got + rest) == ids


def test_leader_kill_9_failover_and_catch_up(cluster):
    g = cluster(3)
    old = g.leader()
    with api(old) as c:
        c.post("/queues", json={"name": "q"})
        acked = [c.post("/queues/q/messages", json={"payload": i}).json()["id"] for i in range(50)]
    old.kill9()
    t0 = time.monotonic()
    new = g.leader(timeout=10)
    assert new is not old
    r = wait_for(lambda: send(new, "q", "after").status_code == 201, 10, "the new leader to take writes")
    assert r and time.monotonic() - t0 < 10
    assert counts(new, "q")["ready"] == 51
    old.start_async()
    old.wait_ready(20)
    wait_for(lambda: counts(old, "q")["ready"] == 51, 15, "the old leader to catch up")
    with api(new) as c:
        got = c.post("/queues/q/dequeue", json={"max": 100}).json()["messages"]
    assert set(acked) <= {m["id"] for m in got}


def test_no_quorum_answers_503_quickly(cluster):
    g = cluster(3)
    leader = g.leader()
    with api(leader) as c:
        c.post("/queues", json={"name": "q"})
    survivor = g.followers()[0]
    for n in g.running():
        if n is not survivor:
            n.kill9()

    # Once the survivor notices it is alone, writes are refused with a retry hint, never held.
    def refused():
        t = time.monotonic()
        r = send(survivor, "q", "x")
        return r.status_code == 503 and time.monotonic() - t < 6 and r

    r = wait_for(refused, 20, "a prompt 503 without quorum")
    assert r.headers.get("retry-after") and r.json()["detail"]


def test_transfer_leadership(cluster):
    g = cluster(3)
    old = g.leader()
    target = g.followers()[0]
    with api(g.followers()[1]) as c:  # asked of a follower: forwarded to the leader
        r = c.post("/cluster/transfer-leader", json={"to": target.node_id})
    assert r.status_code == 200, r.text
    assert g.leader() is target and target is not old


def test_membership_3_to_5_to_3_under_traffic(cluster):
    g = cluster(3)
    with api(g.leader()) as c:
        c.post("/queues", json={"name": "m"})
    acked: set[int] = set()
    stop = threading.Event()
    errors: list[str] = []

    def producer(k: int) -> None:
        i = 0
        while not stop.is_set():
            nodes = g.running()
            node = nodes[i % len(nodes)]
            key = f"p{k}-{i}"
            try:
                r = send(node, "m", [k, i], dedup_key=key)
            except httpx.HTTPError:
                continue  # node going away: retry the same key elsewhere
            if r.status_code == 201:
                acked.add(r.json()["id"])
                i += 1
            elif r.status_code != 503:
                errors.append(r.text)

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    try:
        originals = list(g.nodes)
        for _ in range(2):  # 3 -> 4 -> 5, one at a time
            new = g.add_node()
            addr = f"127.0.0.1:{new.raft_port}"
            with api(g.leader()) as c:
                r = c.post("/cluster/members", json={"address": addr})
                assert r.status_code == 200, r.text
            new.wait_ready(20)
            wait_for(lambda: all(m["healthy"] for m in g.status(g.leader())["members"]), 15, "all members healthy")
        assert len(g.status()["members"]) == 5
        n_before = len(acked)
        wait_for(lambda: len(acked) > n_before + 20, 20, "writes to continue at 5 members")
        # 5 -> 4 -> 3: remove two of the original members, the leader last of all if it is one.
        leader = g.leader()
        leaving = [n for n in originals if n is not leader][:2]
        for n in leaving:
            with api(g.leader()) as c:
                r = c.delete(f"/cluster/members/{n.node_id}")
                assert r.status_code == 200, r.text
            n.stop()
        wait_for(lambda: len(g.status(g.leader())["members"]) == 3, 15, "three members")
        n_before = len(acked)
        wait_for(lambda: len(acked) > n_before + 20, 20, "writes to continue at 3 members")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    assert not errors
    leader = g.leader()
    with api(leader) as c:
        got = set()
        while True:
            batch = c.post("/queues/m/dequeue", json={"max": 1000}).json()["messages"]
            if not batch:
                break
            got |= {m["id"] for m in batch}
    assert acked <= got, f"{len(acked - got)} acknowledged enqueues lost"


def test_wiped_follower_rejoins_from_a_snapshot(tmp_path):
    g = Cluster(str(tmp_path / "snap"), 3)
    for n in g.nodes:
        n.extra += ["--snapshot-entries", "20"]
    try:
        g.start()
        leader = g.leader()
        with api(leader) as c:
            c.post("/queues", json={"name": "s"})
            for i in range(100):
                c.post("/queues/s/messages", json={"payload": i})
        victim = g.followers()[0]
        victim.kill9()
        shutil.rmtree(victim.data_dir)
        with api(leader) as c:
            for i in range(30):
                c.post("/queues/s/messages", json={"payload": i})
        wait_for(lambda: os.path.exists(os.path.join(leader.data_dir, "raft.snapshot")), 20, "a leader snapshot")
        victim.start_async()
        victim.wait_ready(30)
        wait_for(lambda: counts(victim, "s")["ready"] == 130, 30, "the wiped node to receive the state")
    finally:
        g.stop()


def test_wrong_raft_secret_cannot_join(tmp_path):
    g = Cluster(str(tmp_path / "sec"), 3)
    intruder = g.nodes[2]
    bad = os.path.join(str(tmp_path), "bad-secret")
    with open(bad, "w") as fh:
        fh.write("not-the-secret")
    intruder.secret_file = bad
    intruder.extra[-1] = bad
    try:
        for n in g.nodes:
            n.start_async()
        g.nodes[0].wait_ready(20)
        leader = g.leader(among=g.nodes[:2])
        status = g.status(leader)
        bad_member = [m for m in status["members"] if m["address"].endswith(f":{intruder.raft_port}")][0]
        assert bad_member["healthy"] is False
        r = httpx.get(intruder.url + "/readyz", timeout=2)
        assert r.status_code == 503
    finally:
        g.stop()


def test_client_moves_to_another_member_and_cli_shows_the_group(cluster):
    from click.testing import CliRunner

    from rankq import Client
    from rankq.cli import main as cli

    g = cluster(3)
    urls = [n.url for n in g.nodes]
    # A member publishes its id in the replicated directory shortly after it is ready: n0 must have
    # done so before it dies, or the group can only name it by its address.
    wait_for(lambda: {m["id"] for m in g.status()["members"]} == {"n0", "n1", "n2"}, 20, "every member's id")
    with Client(urls, timeout=5, retries=5) as client:
        client.create_queue("f")
        first = client.enqueue("f", {"n": 1}, dedup_key="order-1")
        g.nodes[0].kill9()  # the client's current node goes away
        again = client.enqueue("f", {"n": 1}, dedup_key="order-1")
        assert again.id == first.id and again.duplicate
        assert client.get_queue("f").counts.ready == 1
    out = CliRunner().invoke(cli, ["--url", ",".join(urls[1:]), "-o", "json", "cluster", "status"])
    assert out.exit_code == 0, out.output
    status = __import__("json").loads(out.output)
    assert {m["id"] for m in status["members"]} == {"n0", "n1", "n2"}
    assert [m for m in status["members"] if m["id"] == "n0"][0]["healthy"] is False
