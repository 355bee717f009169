"""Write an OCI image archive from a root filesystem tarball, with the config the Dockerfile declares.

Used by hack/k8s/image.sh (``make image``), which builds the root filesystem without Docker. The
image's runtime settings (ENV, USER, WORKDIR, EXPOSE, ENTRYPOINT, CMD) are read from the Dockerfile
here, so both build paths describe one image; ``tests/k8s/test_image.py`` checks the result.

    oci.py dockerfile DOCKERFILE            print the parsed settings and RUN steps as JSON
    oci.py write ROOTFS_TAR OUT_TAR --dockerfile F --name N [--path-prefix P] [--label K=V ...]
    oci.py write ROOTFS_TAR OUT_TAR --entrypoint /pause --user 65535 --name N
    oci.py retag IN_TAR OUT_TAR --name N [--label K=V ...]   same layer, new config and name

Only the Python standard library is used: this runs before any virtualenv exists.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _logical_lines(text: str) -> list[str]:
    """Dockerfile lines with backslash continuations joined and comments dropped."""
    out: list[str] = []
    cur = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not cur and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            cur += line[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    if cur:
        out.append(cur)
    return out


def _json_or_shell(arg: str) -> list[str]:
    arg = arg.strip()
    if arg.startswith("["):
        value = json.loads(arg)
        return [str(v) for v in value]
    return ["/bin/sh", "-c", arg]


def parse_dockerfile(text: str) -> dict[str, Any]:
    """The final stage's runtime settings and RUN steps (the subset of the syntax the Dockerfile uses)."""
    env: dict[str, str] = {}
    conf: dict[str, Any] = {
        "env": env,
        "user": "",
        "workdir": "/",
        "expose": [],
        "entrypoint": [],
        "cmd": [],
        "run": [],
    }
    for line in _logical_lines(text):
        word, _, arg = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            env.clear()
            conf.update(user="", workdir="/", expose=[], entrypoint=[], cmd=[], run=[], base=arg.strip())
        elif word == "ENV":
            parts = shlex.split(arg)
            if len(parts) == 2 and "=" not in parts[0]:
                env[parts[0]] = parts[1]
            else:
                for p in parts:
                    k, _, v = p.partition("=")
                    env[k] = v
        elif word == "USER":
            conf["user"] = arg.strip()
        elif word == "WORKDIR":
            conf["workdir"] = arg.strip()
        elif word == "EXPOSE":
            conf["expose"] += [p if "/" in p else f"{p}/tcp" for p in arg.split()]
        elif word == "ENTRYPOINT":
            conf["entrypoint"] = _json_or_shell(arg)
        elif word == "CMD":
            conf["cmd"] = _json_or_shell(arg)
        elif word == "RUN":
            conf["run"].append(arg.strip())
    return conf


def image_config(dockerfile: dict[str, Any], path_prefix: str, labels: dict[str, str], created: str) -> dict[str, Any]:
    """The OCI image config for the Dockerfile's settings; PATH leads with the venv's bin."""
    env = {"PATH": f"{path_prefix}:{DEFAULT_PATH}" if path_prefix else DEFAULT_PATH, **dockerfile["env"]}
    return {
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": dockerfile["user"],
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Entrypoint": dockerfile["entrypoint"],
            "Cmd": dockerfile["cmd"],
            "WorkingDir": dockerfile["workdir"],
            "ExposedPorts": {p: {} for p in dockerfile["expose"]},
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [{"created": created, "created_by": "hack/k8s/image.sh (mmdebstrap)"}],
    }


def _blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_archive(rootfs_tar: Path, out: Path, config: dict[str, Any], name: str) -> dict[str, Any]:
    """One-layer OCI archive at ``out`` (written to a temp file first), importable by ``ctr images import``."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmpdir:
        layout = Path(tmpdir) / "layout"
        (layout / "blobs" / "sha256").mkdir(parents=True)
        diff = hashlib.sha256()
        layer_tmp = layout / "layer.tmp"
        with open(rootfs_tar, "rb") as src, open(layer_tmp, "wb") as raw:
            with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
                while chunk := src.read(1 << 20):
                    diff.update(chunk)
                    gz.write(chunk)
        layer_digest = hashlib.sha256()
        with open(layer_tmp, "rb") as f:
            while chunk := f.read(1 << 20):
                layer_digest.update(chunk)
        layer_size = layer_tmp.stat().st_size
        layer_tmp.rename(layout / "blobs" / "sha256" / layer_digest.hexdigest())
        config["rootfs"]["diff_ids"] = [f"sha256:{diff.hexdigest()}"]
        conf_desc = _blob(layout, json.dumps(config, sort_keys=True).encode())
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": {"mediaType": MEDIA_CONFIG, **conf_desc},
            "layers": [{"mediaType": MEDIA_LAYER, "digest": f"sha256:{layer_digest.hexdigest()}", "size": layer_size}],
        }
        man_desc = _blob(layout, json.dumps(manifest, sort_keys=True).encode())
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
        index = {
            "schemaVersion": 2,
            "mediaType": MEDIA_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_MANIFEST,
                    **man_desc,
                    "platform": {"architecture": "amd64", "os": "linux"},
                    # containerd names the imported image after io.containerd.image.name.
                    "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
                }
            ],
        }
        (layout / "index.json").write_text(json.dumps(index, sort_keys=True))
        (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        tmp_out = Path(tmpdir) / "out.tar"
        with tarfile.open(tmp_out, "w") as tar:
            for p in sorted(layout.rglob("*")):
                tar.add(p, arcname=str(p.relative_to(layout)), recursive=False, filter=_plain)
        shutil.move(str(tmp_out), out)
    return {"name": name, "manifest": man_desc["digest"], "layer_bytes": layer_size}


def retag_archive(src: Path, out: Path, name: str, labels: dict[str, str]) -> dict[str, Any]:
    """A second image from an archive's layer: a new config (labels) and name, the layer blob as is.

    Why: a rolling image change needs a second, distinct image (its own config and manifest digest,
    so the runtime sees a new image ID) but not a second build of an identical root filesystem.
    """
    index, manifest, config = read_archive(src)
    for k, v in labels.items():
        config["config"].setdefault("Labels", {})[k] = v
    layer_digest = manifest["layers"][0]["digest"].split(":", 1)[1]
    with tempfile.TemporaryDirectory(dir=out.parent) as tmpdir:
        layout = Path(tmpdir) / "layout"
        (layout / "blobs" / "sha256").mkdir(parents=True)
        with tarfile.open(src) as tar:
            f = tar.extractfile(f"blobs/sha256/{layer_digest}")
            assert f is not None
            with open(layout / "blobs" / "sha256" / layer_digest, "wb") as dst:
                shutil.copyfileobj(f, dst, 1 << 20)
        conf_desc = _blob(layout, json.dumps(config, sort_keys=True).encode())
        manifest = {**manifest, "config": {**manifest["config"], **conf_desc}}
        man_desc = _blob(layout, json.dumps(manifest, sort_keys=True).encode())
        tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
        entry = {**index["manifests"][0], **man_desc}
        entry["annotations"] = {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag}
        (layout / "index.json").write_text(json.dumps({**index, "manifests": [entry]}, sort_keys=True))
        (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        tmp_out = Path(tmpdir) / "out.tar"
        with tarfile.open(tmp_out, "w") as tar:
            for p in sorted(layout.rglob("*")):
                tar.add(p, arcname=str(p.relative_to(layout)), recursive=False, filter=_plain)
        shutil.move(str(tmp_out), out)
    return {"name": name, "manifest": man_desc["digest"], "layer": f"sha256:{layer_digest}"}


def _plain(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def read_archive(path: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(index, manifest, config) of a one-image OCI archive; used by the tests."""
    with tarfile.open(path) as tar:

        def load(member: str) -> dict[str, Any]:
            f = tar.extractfile(member)
            assert f is not None
            return json.load(f)

        index = load("index.json")
        manifest = load("blobs/sha256/" + index["manifests"][0]["digest"].split(":", 1)[1])
        config = load("blobs/sha256/" + manifest["config"]["digest"].split(":", 1)[1])
    return index, manifest, config


def extract_layer(path: Path, dest: Path) -> None:
    """Unpack the image's single layer into ``dest`` (ownership kept when run as root)."""
    index, manifest, _ = read_archive(path)
    layer = manifest["layers"][0]["digest"].split(":", 1)[1]
    with tarfile.open(path) as outer:
        f = outer.extractfile(f"blobs/sha256/{layer}")
        assert f is not None
        with tarfile.open(fileobj=io.BufferedReader(f), mode="r|gz") as inner:  # type: ignore[arg-type]
            inner.extractall(dest, filter="fully_trusted" if hasattr(tarfile, "data_filter") else None)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dockerfile")
    d.add_argument("dockerfile", type=Path)
    w = sub.add_parser("write")
    w.add_argument("rootfs_tar", type=Path)
    w.add_argument("out", type=Path)
    w.add_argument("--dockerfile", type=Path, help="take ENV, USER, ... from this Dockerfile")
    w.add_argument("--entrypoint", help="without --dockerfile: the one-word entrypoint")
    w.add_argument("--user", default="", help="without --dockerfile: the user")
    w.add_argument("--name", required=True)
    w.add_argument("--path-prefix", default="")
    w.add_argument("--label", action="append", default=[])
    r = sub.add_parser("retag")
    r.add_argument("src", type=Path)
    r.add_argument("out", type=Path)
    r.add_argument("--name", required=True)
    r.add_argument("--label", action="append", default=[])
    args = ap.parse_args(argv)
    if args.cmd == "retag":
        labels = dict(kv.split("=", 1) for kv in args.label)
        print(json.dumps(retag_archive(args.src, args.out, args.name, labels)))
        return 0
    if args.cmd == "dockerfile":
        print(json.dumps(parse_dockerfile(args.dockerfile.read_text()), indent=2))
        return 0
    if args.dockerfile:
        df = parse_dockerfile(args.dockerfile.read_text())
    else:
        df = parse_dockerfile(f"FROM scratch\nUSER {args.user}\nENTRYPOINT [{json.dumps(args.entrypoint)}]\n")
    labels = dict(kv.split("=", 1) for kv in args.label)
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    created = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    conf = image_config(df, args.path_prefix, labels, created.strftime("%Y-%m-%dT%H:%M:%SZ"))
    print(json.dumps(write_archive(args.rootfs_tar, args.out, conf, args.name)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
