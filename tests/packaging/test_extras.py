"""`pip install rankq` is the client; the server and operator are extras, and saying so is clear.

Builds the wheel from this tree, installs it without extras into a fresh virtualenv (its
dependencies come from the package index, or pip's cache), and uses it from there.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SERVER_ONLY = (
    "fastapi",
    "uvicorn",
    "grpc",
    "grpc_reflection",
    "pysyncobj",
    "kopf",
    "lightkube",
    "psycopg",
    "pydantic_settings",
)


@pytest.fixture(scope="module")
def bare(tmp_path_factory) -> Path:
    """A virtualenv with the rankq wheel installed without extras; returns its bin directory."""
    work = tmp_path_factory.mktemp("bare")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "rankq", src / "rankq", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(work / "dist"),
            str(src),
        ],
        check=True,
        timeout=180,
    )
    wheel = next((work / "dist").glob("rankq-*.whl"))
    venv.create(work / "env", with_pip=True)
    bin_dir = work / "env" / "bin"
    subprocess.run(
        [str(bin_dir / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=240,
    )
    return bin_dir


def run(bin_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANKQ_", "PYTHON"))}
    return subprocess.run([*args], capture_output=True, text=True, timeout=timeout, env=env, cwd=bin_dir.parent)


@pytest.mark.timeout(480)
def test_the_bare_wheel_is_the_client_without_server_parts(bare: Path) -> None:
    code = (
        "import importlib.util, json, rankq.client, rankq.worker\n"
        "from rankq import Client, AsyncClient, Worker, RankQError\n"
        "import rankq, pathlib\n"
        f"missing = [m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m) is None]\n"
        "typed = (pathlib.Path(rankq.__file__).parent / 'py.typed').exists()\n"
        "print(json.dumps({'missing': missing, 'typed': typed}))\n"
    )
    out = run(bare, str(bare / "python"), "-c", code)
    assert out.returncode == 0, out.stderr
    import json

    result = json.loads(out.stdout)
    assert sorted(result["missing"]) == sorted(SERVER_ONLY), "the bare install pulled in server or operator parts"
    assert result["typed"], "rankq/py.typed is not in the wheel"


@pytest.mark.timeout(480)
def test_the_bare_cli_names_the_extra_it_needs(bare: Path, tmp_path: Path) -> None:
    helped = run(bare, str(bare / "rankq"), "--help")
    assert helped.returncode == 0, helped.stderr
    assert "server" in helped.stdout

    out = run(bare, str(bare / "rankq"), "server", "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2
    assert "pip install 'rankq[server]'" in out.stderr
    assert "Traceback" not in out.stderr

    out = run(bare, str(bare / "rankq"), "--url", "grpc://127.0.0.1:1", "queue", "list")
    assert out.returncode == 2
    assert "pip install 'rankq[grpc]'" in out.stderr
    assert "Traceback" not in out.stderr

    out = run(bare, str(bare / "rankq"), "operator")
    assert out.returncode != 0
    assert "pip install 'rankq[operator]'" in out.stderr
    assert "Traceback" not in out.stderr
