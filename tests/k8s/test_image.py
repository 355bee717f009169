"""The image `make image` builds without Docker: the Dockerfile's settings, and `rankq` runs inside it.

The image is built once per change of its sources (hack/k8s/image.sh --if-changed, ~3-5 min cold;
`make test` builds it before pytest) unless RANKQ_IMAGE_ARCHIVE names an archive already built.
Needs root and mmdebstrap (Debian: apt-get install mmdebstrap); skipped without them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HACK = REPO_ROOT / "hack" / "k8s"
pytestmark = [pytest.mark.k8s, pytest.mark.timeout(900)]


def _oci() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rankq_hack_oci", HACK / "oci.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


oci = _oci()


@pytest.fixture(scope="session")
def image_archive() -> Path:
    given = os.environ.get("RANKQ_IMAGE_ARCHIVE")
    if given:
        return Path(given)
    if os.geteuid() != 0 or not shutil.which("mmdebstrap"):
        pytest.skip("make image needs root and mmdebstrap (apt-get install mmdebstrap)")
    proc = subprocess.run(
        ["bash", str(HACK / "image.sh"), "--if-changed"],  # make test's prepare step usually built it
        capture_output=True,
        text=True,
        timeout=840,
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def rootfs(image_archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("rootfs")
    oci.extract_layer(image_archive, dest)
    return dest


def _env(config: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in config["config"]["Env"])


def test_image_config_matches_the_dockerfile(image_archive: Path) -> None:
    index, manifest, config = oci.read_archive(image_archive)
    dockerfile = oci.parse_dockerfile((REPO_ROOT / "Dockerfile").read_text())
    c = config["config"]
    # What a Pod spec relies on, stated literally so a parser slip cannot hide a drift.
    assert c["User"] == "10001"
    assert c["Entrypoint"] == ["rankq"]
    assert c["WorkingDir"] == "/data"
    # Everything else the Dockerfile declares.
    assert c["User"] == dockerfile["user"]
    assert c["Entrypoint"] == dockerfile["entrypoint"]
    assert c["Cmd"] == dockerfile["cmd"]
    assert sorted(c["ExposedPorts"]) == sorted(dockerfile["expose"])
    env = _env(config)
    for k, v in dockerfile["env"].items():
        assert env[k] == v
    assert env["PATH"].split(":")[0] == "/opt/rankq/bin"
    assert index["manifests"][0]["annotations"]["io.containerd.image.name"].startswith("docker.io/library/rankq:")
    assert len(manifest["layers"]) == 1 and config["rootfs"]["diff_ids"]


def test_rankq_runs_inside_the_image_as_its_user(image_archive: Path, rootfs: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("chroot needs root")
    _, _, config = oci.read_archive(image_archive)
    user = config["config"]["User"]
    argv = ["chroot", f"--userspec={user}:{user}", str(rootfs), *config["config"]["Entrypoint"], "--version"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120, env=_env(config))
    assert proc.returncode == 0, proc.stderr
    assert "0." in proc.stdout or "version" in proc.stdout.lower(), proc.stdout
    py = subprocess.run(
        ["chroot", str(rootfs), "/opt/rankq/bin/python", "-c", "import sys, rankq; print(sys.version_info[:2])"],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(config),
    )
    assert py.stdout.strip() == "(3, 11)", py.stderr
    data = (rootfs / "data").stat()
    assert data.st_uid == int(user), "the non-root user must own /data"
    passwd = (rootfs / "etc" / "passwd").read_text()
    assert any(line.split(":")[2] == user for line in passwd.splitlines())


def test_image_runs_under_runc(image_archive: Path, rootfs: Path, tmp_path: Path) -> None:
    """The OCI runtime the real node uses runs the image's entrypoint as its user."""
    if os.geteuid() != 0 or not shutil.which("runc"):
        pytest.skip("needs root and runc (apt-get install runc)")
    _, _, config = oci.read_archive(image_archive)
    c = config["config"]
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True, timeout=30)
    spec = json.loads((bundle / "config.json").read_text())
    spec["root"] = {"path": str(rootfs), "readonly": True}
    spec["process"].update(
        terminal=False,
        args=[*c["Entrypoint"], "--version"],
        env=c["Env"],
        cwd=c["WorkingDir"],
        user={"uid": int(c["User"]), "gid": int(c["User"])},
    )
    (bundle / "config.json").write_text(json.dumps(spec))
    name = f"rankq-image-test-{os.getpid()}"
    proc = subprocess.run(["runc", "run", "--bundle", str(bundle), name], capture_output=True, text=True, timeout=120)
    subprocess.run(["runc", "delete", "--force", name], capture_output=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip(), "rankq --version printed nothing"
