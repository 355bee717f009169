"""Operator load on the API server and its own CPU, on the local control plane (`make k8s-up`).

    .venv/bin/python bench/operator_load.py --queues 10 --window 60

1. installs the chart (the operator runs locally with a token of the chart's ServiceAccount);
2. creates N settings-only Queues (`replicas: 1`, ephemeral storage; kwok runs their pods, no
   server answers, so they never elect a leader) and times how long until every Queue has all its
   children, its pod labelled and its status written for generation 1 ("reconciled");
3. with `--servers K`, K more Queues, in a namespace of their own, get a real `rankq server` per
   pod (as in the e2e tests) and must reach Ready;
4. counts `apiserver_request_total` (all verbs, all resources) over a settled window with the
   operator running, then over the same window with the operator stopped; the difference is the
   operator's requests. It prints JSON: requests per minute in total and per Queue, the reconcile
   time, and the operator's CPU seconds while reconciling and while settled.

Other clients (controller-manager, scheduler, kwok) are in both windows and cancel out; run it on
an otherwise idle control plane.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "k8s"))

from operator_support import OperatorProcess, StandIns, drop_finalizers, install_chart, unique  # noqa: E402


class K8s:
    """The few kubectl calls the bench needs, against the local control plane."""

    def __init__(self) -> None:
        state = Path(os.environ.get("RANKQ_K8S_DIR") or REPO / ".k8s")
        self.kubeconfig = state / "kubeconfig"
        self.bin = state / "bin"
        self.helm_path = self.bin / "helm"

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=120,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {proc.stderr}")
        return proc

    def get_json(self, *args: str) -> dict:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)


def requests_total(k8s: K8s) -> float:
    total = 0.0
    for line in k8s.kubectl("get", "--raw", "/metrics").stdout.splitlines():
        if line.startswith("apiserver_request_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reconciled(k8s: K8s, ns: str, names: list[str], need_ready: bool) -> bool:
    queues = {q["metadata"]["name"]: q for q in k8s.get_json("queues", "-n", ns)["items"]}
    pods = k8s.get_json("pods", "-n", ns, "-l", "app.kubernetes.io/name=rankq")["items"]
    labelled = {
        p["metadata"]["labels"].get("rankq.io/queue") for p in pods if p["metadata"]["labels"].get("rankq.io/role")
    }
    cms = {c["metadata"]["name"] for c in k8s.get_json("configmaps", "-n", ns)["items"]}
    for name in names:
        st = (queues.get(name) or {}).get("status") or {}
        conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
        if st.get("observedGeneration") != 1 or name not in labelled or f"{name}-config" not in cms:
            return False
        if need_ready and conds.get("Ready") != "True":
            return False
    return True


def wait(cond, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return time.monotonic() - t0
        time.sleep(1)
    raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--queues", type=int, default=10, help="settings-only Queues (no servers)")
    ap.add_argument("--servers", type=int, default=0, help="Queues (replicas 1) backed by real servers")
    ap.add_argument("--window", type=float, default=60.0, help="seconds per measuring window")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds to wait after reconciling")
    args = ap.parse_args()

    k8s = K8s()
    tmp = Path(tempfile.mkdtemp(prefix="operator-load-"))
    sys_ns, ns, srv_ns, release = unique("rankq-sys"), unique("load"), unique("served"), unique("rq")
    for namespace in (sys_ns, ns, srv_ns):
        k8s.kubectl("create", "namespace", namespace)
    kubeconfig = install_chart(k8s, sys_ns, release, tmp)
    endpoints = tmp / "endpoints.json"
    op = OperatorProcess(kubeconfig, sys_ns, endpoints, tmp / "operator.log").start()
    stand = None
    try:
        wait(lambda: "holding lease" in op.tail(50), 60, "the operator to hold its Lease")
        names = [f"s{i}" for i in range(args.queues)]
        served = [f"r{i}" for i in range(args.servers)]
        if served:
            stand = StandIns(k8s.kubeconfig, srv_ns, tmp / "pods", endpoints)
            for name in served:
                stand.reserve(name, 1)
            stand.start()
        cpu0 = cpu_seconds(op.proc.pid)
        for namespace, group in ((ns, names), (srv_ns, served)):
            if not group:
                continue
            manifests = [
                {
                    "apiVersion": "rankq.io/v1alpha1",
                    "kind": "Queue",
                    "metadata": {"name": n},
                    "spec": {"replicas": 1, "storage": {"ephemeral": True}},
                }
                for n in group
            ]
            k8s.kubectl(
                "apply",
                "-n",
                namespace,
                "-f",
                "-",
                input=json.dumps({"apiVersion": "v1", "kind": "List", "items": manifests}),
            )
        took = wait(
            lambda: reconciled(k8s, ns, names, False) and (not served or reconciled(k8s, srv_ns, served, True)),
            600,
            "every Queue reconciled",
        )
        cpu_reconcile = cpu_seconds(op.proc.pid) - cpu0
        time.sleep(args.settle)

        cpu1, r1 = cpu_seconds(op.proc.pid), requests_total(k8s)
        time.sleep(args.window)
        r2, cpu_settled = requests_total(k8s), cpu_seconds(op.proc.pid) - cpu1
        op.stop()
        time.sleep(5)
        r3 = requests_total(k8s)
        time.sleep(args.window)
        r4 = requests_total(k8s)
        per_min = 60.0 / args.window
        with_op, without_op = (r2 - r1) * per_min, (r4 - r3) * per_min
        total = len(names) + len(served)
        print(
            json.dumps(
                {
                    "queues": len(names),
                    "queues_with_servers": len(served),
                    "reconciled_s": round(took, 1),
                    "operator_cpu_s_reconciling": round(cpu_reconcile, 2),
                    "operator_cpu_s_per_min_settled": round(cpu_settled * per_min, 2),
                    "apiserver_requests_per_min_with_operator": round(with_op),
                    "apiserver_requests_per_min_without_operator": round(without_op),
                    "operator_requests_per_min": round(with_op - without_op),
                    "operator_requests_per_queue_per_min": round((with_op - without_op) / max(total, 1), 1),
                },
                indent=1,
            )
        )
    finally:
        if stand is not None:
            stand.stop()
        op.kill()
        for namespace in (ns, srv_ns):
            drop_finalizers(k8s, namespace)
            k8s.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        k8s.kubectl(
            "delete", "clusterrole,clusterrolebinding", "-l", f"app.kubernetes.io/instance={release}", check=False
        )
        k8s.kubectl("delete", "namespace", sys_ns, "--wait=false", check=False)


if __name__ == "__main__":
    main()
