"""`rankq server` settings: one model (rankq.server.config.ServerSettings) behind the options and the
RANKQ_* environment; bad values end in one clear line and exit status 2, through the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import httpx
import pytest
from serverproc import free_port, wait_for

from rankq.replication import RaftSettings
from rankq.server.command import server as server_command
from rankq.server.config import ServerSettings, option_name

pytestmark = pytest.mark.timeout(120)


def rankq_server(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RANKQ_")}
    return subprocess.run(
        [sys.executable, "-m", "rankq.cli", "server", *args],
        capture_output=True,
        text=True,
        env={**base, **(env or {})},
        timeout=timeout,
    )


@pytest.mark.parametrize(
    "args, env, says",
    [
        (["--http-port", "70000"], {}, "--http-port"),
        (["--raft-port", "-1"], {}, "--raft-port"),
        (["--grpc-port", "many"], {}, "--grpc-port"),
        ([], {"RANKQ_HTTP_PORT": "0"}, "RANKQ_HTTP_PORT"),
        (["--log-level", "LOUD"], {}, "--log-level"),
        ([], {"RANKQ_LOG_FORMAT": "xml"}, "--log-format"),
        (["--tls-cert", "/no/such/cert.pem"], {}, "no such file"),
        (["--api-token-file", "/"], {}, "not a file"),
        (["--snapshot-entries", "3"], {}, "--snapshot-entries"),
    ],
)
def test_a_bad_setting_is_one_line_and_exit_2(tmp_path, args, env, says):
    out = rankq_server("--data-dir", str(tmp_path / "d"), *args, env=env)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert says in lines[0]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "d" / "raft.journal").exists()


def test_a_data_dir_that_cannot_be_used_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for data_dir in (blocker, blocker / "below"):
        out = rankq_server("--data-dir", str(data_dir))
        assert out.returncode == 2
        assert out.stderr.startswith("error: --data-dir") and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_environment_sets_what_the_command_line_does_not(tmp_path):
    """RANKQ_* variables are read; an option on the command line wins over its variable."""
    env_port, cli_port, raft_port = free_port(), free_port(), free_port()
    data_dir = tmp_path / "from-env"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RANKQ_")}
    env = {
        **base,
        "RANKQ_HTTP_PORT": str(env_port),
        "RANKQ_RAFT_PORT": str(raft_port),
        "RANKQ_GRPC_PORT": "0",
        "RANKQ_DATA_DIR": str(data_dir),
        "RANKQ_LOG_LEVEL": "debug",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "rankq.cli", "server", "--http-port", str(cli_port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def ready() -> bool:
            assert proc.poll() is None, "server exited"
            try:
                return httpx.get(f"http://127.0.0.1:{cli_port}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(ready, 30, "server on the command line's port")
        status = httpx.get(f"http://127.0.0.1:{cli_port}/api/v1/cluster", timeout=5).json()
        assert status["self"] == f"127.0.0.1:{raft_port}"
        assert status["members"][0]["address"] == f"127.0.0.1:{raft_port}"
        assert (data_dir / "raft.journal").exists() or any(data_dir.iterdir())
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_every_setting_is_an_option_with_the_models_default():
    options = {p.name: p for p in server_command.params}
    for name, field in ServerSettings.model_fields.items():
        if name == "raft_password":  # environment only: a secret stays out of `ps`
            assert name not in options
            continue
        assert option_name(name) in options[name].opts
        assert options[name].help and field.description and options[name].help.startswith(field.description)
        default = field.get_default(call_default_factory=True)
        if default not in (None, [], False):
            assert options[name].default == str(default), name
    # The snapshot defaults are the replication layer's own.
    raft = RaftSettings("127.0.0.1:1")
    defaults = ServerSettings.model_construct()
    assert defaults.snapshot_entries == raft.compaction_min_entries
    assert defaults.snapshot_seconds == raft.compaction_min_seconds
    assert defaults.snapshot_mib * 1024 * 1024 == raft.compaction_max_bytes
