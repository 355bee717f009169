"""`rankq dev cluster` (what `make run` starts): refuses taken ports, names how a node stopped."""

from __future__ import annotations

import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
from serverproc import free_port, wait_for

from rankq.devcluster import exit_reason, own_error


def _free_block() -> tuple[int, int, int]:
    """Three ports that are free now (one node needs one of each)."""
    return free_port(), free_port(), free_port()


class Supervisor:
    """A `rankq dev cluster` process whose output is read line by line."""

    def __init__(self, tmp_path, http: int, grpc: int, raft: int) -> None:
        self.data_dir = str(tmp_path / "run")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rankq.cli",
                "dev",
                "cluster",
                "--nodes",
                "1",
                "--data-dir",
                self.data_dir,
                "--http-port",
                str(http),
                "--grpc-port",
                str(grpc),
                "--raft-port",
                str(raft),
                "--demo-queue",
                "",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, text: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            if text in line:
                return line
        raise AssertionError(f"no line with {text!r} within {timeout}s; output so far: {self.seen}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _node_pid(data_dir: str) -> int:
    """The pid of the `rankq server` process whose data dir lies under data_dir."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                argv = fh.read().split(b"\0")
        except OSError:
            continue
        if b"server" in argv and any(a.startswith(data_dir.encode()) for a in argv):
            return int(entry)
    raise LookupError("node process not found")


def test_taken_port_is_named_and_nothing_starts(tmp_path):
    http, grpc, raft = _free_block()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", raft))
        holder.listen()
        sup = Supervisor(tmp_path, http, grpc, raft)
        try:
            assert sup.proc.wait(30) == 1
            line = sup.expect("cannot start", timeout=10)
        finally:
            sup.stop()
    assert f"port {raft} (Raft of node-0) is in use" in line
    assert "RAFT_PORT=" in line
    assert not any("leader elected" in seen for seen in sup.seen)
    assert not os.path.exists(os.path.join(sup.data_dir, "node-0.log"))


def test_kill_9_is_named_as_a_signal_not_a_request_error(tmp_path):
    http, grpc, raft = _free_block()
    sup = Supervisor(tmp_path, http, grpc, raft)
    try:
        sup.expect("leader elected")
        # A request error in the node's log (a 404) is not why the node stopped.
        assert httpx.get(f"http://127.0.0.1:{http}/static/nothing", timeout=5).status_code == 404
        wait_for(lambda: "Not Found" in open(os.path.join(sup.data_dir, "node-0.log")).read(), 10, "404 logged")
        os.kill(_node_pid(sup.data_dir), signal.SIGKILL)
        line = sup.expect("node-0 ", timeout=30)
        assert "killed by SIGKILL" in line, line
        assert "Not Found" not in line and "/static" not in line, line
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{http}/readyz", timeout=1).status_code == 200,
            60,
            "the restarted node to be ready",
        )
    finally:
        sup.stop()
    assert sup.proc.returncode == 0


@pytest.mark.parametrize(
    ("code", "words"),
    [(-9, "killed by SIGKILL"), (-15, "killed by SIGTERM"), (1, "exited with code 1"), (70, "exited with code 70")],
)
def test_exit_reason_in_words(code, words):
    assert exit_reason(code) == words


def test_own_error_ignores_request_errors():
    lines = [
        "2026-11-23 05:06:53.665 [ERROR] rankq.server: cannot listen for Raft on 127.0.0.1:7070 (x): is the port taken?",
        "2026-11-23 05:06:54.000 [ERROR] /static: Not Found",
        "2026-11-23 05:06:55.000 [INFO] rankq.server: shutting down",
    ]
    assert "cannot listen for Raft" in (own_error(lines) or "")
    assert own_error(lines[1:]) is None
