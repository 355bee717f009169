"""The README's examples run as written, the way a newcomer runs them.

A copy of the checkout (its tracked files, as a fresh clone has them) gets `make run` on free ports;
then every ```sh block runs in one shell, in order, and every ```python block runs twice (an example
must survive being run again). Ports in the examples are the defaults (8080..., 9090..., 7070...)
and are rewritten to the ones chosen here. A block fenced as ```sh no-run (Kubernetes, Docker, a
long-running server) is shown but not run; ``make run`` itself is what this test starts.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from serverproc import wait_for

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.timeout(300)


@dataclass(frozen=True)
class Block:
    lang: str
    run: bool
    code: str
    line: int


def readme_blocks(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        fence = re.match(r"^```(\S*)\s*(.*)$", lines[i])
        if fence is None:
            i += 1
            continue
        start = i
        i += 1
        body: list[str] = []
        while i < len(lines) and lines[i] != "```":
            body.append(lines[i])
            i += 1
        i += 1
        lang, info = fence.group(1), fence.group(2).split()
        blocks.append(Block(lang, lang in ("sh", "python") and "no-run" not in info, "\n".join(body), start + 1))
    return blocks


def _ports_free(base: int, count: int = 3) -> bool:
    for port in range(base, base + count):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _three_free_ports_each() -> tuple[int, int, int]:
    """Base ports for HTTP, gRPC and Raft, each with the next two free too (node i uses base+i)."""
    bases: list[int] = []
    candidate = 20000 + (os.getpid() % 500) * 20
    while len(bases) < 3:
        if _ports_free(candidate):
            bases.append(candidate)
        candidate += 7
    return bases[0], bases[1], bases[2]


def _rewrite_ports(code: str, http: int, grpc: int, raft: int) -> str:
    for default, chosen in ((8080, http), (9090, grpc), (7070, raft)):
        for i in range(3):
            code = re.sub(rf"(?<![0-9]){default + i}(?![0-9])", str(chosen + i), code)
    return code


def test_readme_blocks_are_marked():
    blocks = readme_blocks((REPO / "README.md").read_text())
    runnable = [b for b in blocks if b.run]
    assert sum(b.lang == "python" for b in runnable) >= 1 and sum(b.lang == "sh" for b in runnable) >= 2
    assert any("make run" in b.code for b in blocks if not b.run)


@pytest.fixture
def fresh_copy(tmp_path):
    """The tracked files of this checkout in a new directory, sharing the installed .venv."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    dest = tmp_path / "rankq"
    for name in files.decode().split("\0"):
        if name and (REPO / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
    venv = Path(sys.prefix)
    assert (venv / ".installed").exists() or (venv / "bin" / "rankq").exists(), "run from the project's .venv"
    (dest / ".venv").symlink_to(venv)
    return dest


def test_readme_examples_run_as_written(fresh_copy):
    http, grpc, raft = _three_free_ports_each()
    run_dir = fresh_copy / ".run"
    log = open(fresh_copy / "make-run.log", "w")
    group = subprocess.Popen(
        ["make", "run", f"HTTP_PORT={http}", f"GRPC_PORT={grpc}", f"RAFT_PORT={raft}", f"RUN_DIR={run_dir}"],
        cwd=fresh_copy,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(lambda: "leader elected" in (fresh_copy / "make-run.log").read_text(), 90, "make run's leader")
        wait_for(
            lambda: httpx.get(f"http://127.0.0.1:{http}/api/v1/queues/demo", timeout=2).status_code == 200,
            30,
            "the demo queue",
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("RANKQ_")}
        env.pop("VIRTUAL_ENV", None)
        blocks = [b for b in readme_blocks((fresh_copy / "README.md").read_text()) if b.run]
        for block in blocks:
            code = _rewrite_ports(block.code, http, grpc, raft)
            if block.lang == "sh":
                # One shell session, as a reader pastes block after block into one terminal.
                script = (
                    ". .venv/bin/activate\nexport RANKQ_URL="
                    + ",".join(f"http://127.0.0.1:{http + i}" for i in range(3))
                    + "\n"
                    + code
                )
                runs = 1
                cmd = ["bash", "-euo", "pipefail", "-c", script]
            else:
                runs = 2
                cmd = [str(fresh_copy / ".venv" / "bin" / "python"), "-c", code]
            for attempt in range(runs):
                done = subprocess.run(cmd, cwd=fresh_copy, env=env, capture_output=True, text=True, timeout=120)
                assert done.returncode == 0 and "Traceback" not in done.stderr, (
                    f"README.md line {block.line} ({block.lang}, run {attempt + 1}) failed with "
                    f"{done.returncode}\nstdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
                )
    finally:
        os.killpg(group.pid, signal.SIGINT)
        try:
            group.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(group.pid, signal.SIGKILL)
            group.wait(10)
        log.close()
