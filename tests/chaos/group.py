"""A Raft group of real `rankq server` processes, one per network namespace, driven from the root namespace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
from netns import Network

HTTP_PORT = 8080
RAFT_PORT = 7070


def client(timeout: float = 8.0) -> httpx.Client:
    # trust_env=False: a proxy from the environment must never carry traffic meant for the namespaces.
    return httpx.Client(timeout=timeout, trust_env=False)


class NsNode:
    def __init__(self, net: Network, index: int, data_dir: str, peers: str, secret_file: str) -> None:
        self.net = net
        self.index = index
        self.node_id = f"n{index}"
        self.data_dir = data_dir
        self.host = net.addr(index)
        self.peers = peers
        self.secret_file = secret_file
        self.proc: subprocess.Popen | None = None
        self.paused = False
        self.log_path = os.path.join(data_dir, "server.log")
        self._log = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{HTTP_PORT}"

    @property
    def raft_address(self) -> str:
        return f"{self.host}:{RAFT_PORT}"

    def start(self) -> None:
        os.makedirs(self.data_dir, exist_ok=True)
        cmd = [
            *self.net.exec_prefix(self.index),
            sys.executable,
            "-m",
            "rankq.cli",
            "server",
            "--data-dir",
            self.data_dir,
            "--host",
            self.host,
            "--http-port",
            str(HTTP_PORT),
            "--grpc-port",
            "0",
            "--raft-port",
            str(RAFT_PORT),
            "--node-id",
            self.node_id,
            "--peers",
            self.peers,
            "--raft-password-file",
            self.secret_file,
            # Snapshots every few hundred entries, so faults also hit log compaction, restarts
            # from a snapshot and snapshot transfer to lagging members.
            "--snapshot-entries",
            "300",
            # The API listens on the namespace's private address, reachable only from this test.
            "--insecure-no-auth",
        ]
        if self._log is None or self._log.closed:
            self._log = open(self.log_path, "ab")
        self._log.write(f"---- chaos: start at {time.time():.3f}\n".encode())
        self._log.flush()
        # `ip netns exec` execs the server in place, so this pid is the server's own.
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        self.paused = False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.paused = False

    def pause(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.alive():
            if self.paused:
                self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
        if self._log is not None and not self._log.closed:
            self._log.close()

    def note(self, text: str) -> None:
        """Mark a fault in this node's log so the log lines around a violation can be found."""
        if self._log is not None and not self._log.closed:
            self._log.write(f"---- chaos: {text} at {time.time():.3f}\n".encode())
            self._log.flush()


class NsGroup:
    def __init__(self, net: Network, root: str, password: str = "chaos-secret") -> None:
        self.net = net
        self.root = root
        os.makedirs(root, exist_ok=True)
        secret = os.path.join(root, "raft-secret")
        with open(secret, "w") as fh:
            fh.write(password)
        peers = ",".join(f"n{i}={net.addr(i)}:{RAFT_PORT}" for i in range(net.size))
        self.nodes = [NsNode(net, i, os.path.join(root, f"n{i}"), peers, secret) for i in range(net.size)]
        self._http = client(timeout=2.0)

    def start(self, timeout: float = 60.0) -> NsGroup:
        for n in self.nodes:
            n.start()
        self.wait_healthy(timeout)
        return self

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        self._http.close()

    def status(self, node: NsNode) -> dict | None:
        try:
            r = self._http.get(node.url + "/api/v1/cluster")
            return r.json() if r.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def by_address(self, address: str | None) -> NsNode | None:
        return next((n for n in self.nodes if n.raft_address == address), None)

    def leader(self) -> NsNode | None:
        """The node a majority of members name as leader and that names itself, or None."""
        votes: dict[str, int] = {}
        for n in self.nodes:
            if not n.alive() or n.paused:
                continue
            st = self.status(n)
            if st and st.get("leader_address"):
                votes[st["leader_address"]] = votes.get(st["leader_address"], 0) + 1
        for addr, count in votes.items():
            if count * 2 > len(self.nodes):
                lead = self.by_address(addr)
                st = self.status(lead) if lead is not None else None
                if st and st.get("leader_address") == addr:
                    return lead
        return None

    def wait_leader(self, timeout: float) -> NsNode:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lead = self.leader()
            if lead is not None:
                return lead
            time.sleep(0.1)
        raise TimeoutError(f"no agreed leader within {timeout}s")

    def wait_healthy(self, timeout: float) -> NsNode:
        """Every node runs, answers /readyz, and a majority agrees on a leader that can take a write."""
        deadline = time.monotonic() + timeout
        last = "nothing checked yet"
        while time.monotonic() < deadline:
            for n in self.nodes:
                if not n.alive():
                    raise RuntimeError(f"{n.node_id} exited with {n.proc.returncode}; see {n.log_path}")
            try:
                unready = [n.node_id for n in self.nodes if self._http.get(n.url + "/readyz").status_code != 200]
                if not unready:
                    lead = self.leader()
                    if lead is not None:
                        return lead
                    last = "no agreed leader"
                else:
                    last = f"not ready: {', '.join(unready)}"
            except httpx.HTTPError as err:
                last = f"{type(err).__name__}: {err}"
            time.sleep(0.1)
        raise TimeoutError(f"group not healthy within {timeout}s ({last}); last server errors:\n{self.error_tail()}")

    def note(self, text: str) -> None:
        for n in self.nodes:
            n.note(text)

    def error_tail(self, lines: int = 6) -> str:
        """The last log lines of each node that are neither request lines nor expected client errors."""
        out = []
        for n in self.nodes:
            try:
                with open(n.log_path, encoding="utf-8", errors="replace") as fh:
                    tail = fh.readlines()[-3000:]
            except OSError:
                continue
            keep = [ln.rstrip() for ln in tail if "Received " not in ln and "[ERROR] /api/" not in ln]
            out.append(f"{n.node_id} ({n.log_path}):\n    " + "\n    ".join(keep[-lines:]))
        return "\n".join(out)
