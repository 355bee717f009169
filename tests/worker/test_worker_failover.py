"""Workers against a 3-node group whose leader is killed with kill -9 while they run: every
message is acked in the end, and no handler runs again while another run's lease is live."""

from __future__ import annotations

import re
import signal

from serverproc import Cluster, wait_for

from rankq import Client


def test_leader_kill_while_workers_run(tmp_path, workers, journal):
    cluster = Cluster(str(tmp_path / "group"), 3).start()
    try:
        urls = ",".join(n.url for n in cluster.nodes)
        queue, n = "failover", 400
        with Client(urls) as rq:
            rq.create_queue(queue, visibility_timeout=4)
            ids = []
            for start in range(0, n, 100):
                batch = [{"payload": {"n": i, "sleep": 0.05}, "dedup_key": f"m{i}"} for i in range(start, start + 100)]
                ids += [r.id for r in rq.enqueue_batch(queue, batch)]
            procs = [workers(urls, queue, "--concurrency", "4", "--poll-wait", "1") for _ in range(2)]
            wait_for(lambda: len(journal.events("done")) >= 60, 60, "work under way")
            leader = cluster.leader()
            leader.kill9()
            survivors = [node for node in cluster.nodes if node is not leader]
            cluster.leader(timeout=20, among=survivors)

            def all_acked():
                return all(rq.get_message(queue, i).state == "acked" for i in ids)

            wait_for(all_acked, 120, "every message acked")
            assert set(journal.counts("done")) == set(range(n))
            # A second run of a message is allowed only after the first one's lease was lost
            # (the worker says so in its log) — never two runs under live leases.
            lost = set()
            for p in procs:
                lost |= {int(m) for m in re.findall(r"lease of message (\d+) lost", p.logs())}
            starts: dict[int, list[dict]] = {}
            for e in journal.events("start"):
                starts.setdefault(e["id"], []).append(e)
            rerun = {mid for mid, runs in starts.items() if len(runs) > 1}
            assert rerun <= lost, f"re-run while the lease was live: {sorted(rerun - lost)}"
            for p in procs:
                p.signal(signal.SIGTERM)
            assert [p.wait(30) for p in procs] == [0, 0]
    finally:
        cluster.stop()
