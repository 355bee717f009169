#!/usr/bin/env bash
# Build the RankQ OCI image without a Docker daemon or a registry (`make image`).
#
#   hack/k8s/image.sh      -> $RANKQ_IMAGE_DIR/rankq-<version>.oci.tar (default ~/.cache/rankq/image)
#   hack/k8s/image.sh --if-changed        build only if the sources changed since the last build
#   hack/k8s/image.sh --also-tag T        also write rankq-T.oci.tar: the same layer under a second
#                                         tag, a distinct image (new config), in seconds
#
# The root filesystem is Debian bookworm from Debian's packages (mmdebstrap, Python 3.11 from
# Debian); RankQ's wheel and its dependencies from PyPI go into a venv at /opt/rankq. The image's
# settings (ENV, USER, WORKDIR, EXPOSE, ENTRYPOINT, CMD) and the non-root user step are read from
# the Dockerfile, so `docker build` and this script describe one image (tests/k8s/test_image.py).
# The archive imports into containerd: ctr -n k8s.io images import <archive>.
#
# Environment: RANKQ_IMAGE_DIR (output dir), RANKQ_IMAGE_TAG (default: the project version),
# RANKQ_IMAGE_NAME (default docker.io/library/rankq, what the chart's `rankq` resolves to),
# RANKQ_DEBIAN_MIRROR (default http://deb.debian.org/debian), PYTHON (builds the wheel).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HERE/../.." && pwd)"
log() { printf '[image] %s\n' "$*" >&2; }
die() { printf '[image] error: %s\n' "$*" >&2; exit 1; }

if_changed=0; also_tags=()
while [ "$#" -gt 0 ]; do
    case "$1" in
        --if-changed) if_changed=1 ;;
        --also-tag) also_tags+=("$2"); shift ;;
        *) die "usage: $0 [--if-changed] [--also-tag TAG]..." ;;
    esac
    shift
done

PYTHON="${PYTHON:-python3}"
IMAGE_DIR="${RANKQ_IMAGE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/rankq/image}"
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_ROOT/pyproject.toml" | head -n1)"
TAG="${RANKQ_IMAGE_TAG:-$VERSION}"
NAME="${RANKQ_IMAGE_NAME:-docker.io/library/rankq}:$TAG"
MIRROR="${RANKQ_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
VENV=/opt/rankq
OUT="$IMAGE_DIR/rankq-$TAG.oci.tar"

# What goes into the image: a build is current while this fingerprint is unchanged.
inputs_digest() {
    (cd "$REPO_ROOT" && git ls-files -co --exclude-standard -- rankq pyproject.toml README.md Dockerfile \
        hack/k8s/image.sh hack/k8s/oci.py | LC_ALL=C sort | xargs -d '\n' sha256sum) | sha256sum | cut -c1-16
}
DIGEST="$(inputs_digest)"

retag() { # retag TAG: the built image's layer under a second tag
    local out="$IMAGE_DIR/rankq-$1.oci.tar"
    [ -f "$out" ] && [ "$out" -nt "$OUT" ] && return 0
    "$PYTHON" "$HERE/oci.py" retag "$OUT" "$out" --name "${RANKQ_IMAGE_NAME:-docker.io/library/rankq}:$1" \
        --label "org.opencontainers.image.version=$1" >/dev/null
    log "image ${RANKQ_IMAGE_NAME:-docker.io/library/rankq}:$1 (same layer as $TAG): $out"
}

if [ "$if_changed" = 1 ] && [ -f "$OUT" ] && [ "$(cat "$OUT.inputs" 2>/dev/null)" = "$DIGEST" ]; then
    log "$OUT is current (sources unchanged since it was built)"
    for t in "${also_tags[@]}"; do retag "$t"; done
    printf '%s\n' "$OUT"
    exit 0
fi

command -v mmdebstrap >/dev/null || die "mmdebstrap not found (Debian: apt-get install mmdebstrap)"
[ "$(id -u)" = 0 ] || command -v newuidmap >/dev/null \
    || die "mmdebstrap needs root, or subordinate uids for its unshare mode (apt-get install uidmap)"

# pip inside the new root trusts what the host trusts (e.g. a proxy's CA) for the build only; the
# image keeps Debian's ca-certificates.
BUILD_CA="${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}"
[ -f "$BUILD_CA" ] || die "no CA bundle at $BUILD_CA (set PIP_CERT)"

t0=$(date +%s)
mkdir -p "$IMAGE_DIR/pip-cache" "$IMAGE_DIR/debs"
work="$(mktemp -d "$IMAGE_DIR/.build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$REPO_ROOT" log -1 --format=%ct 2>/dev/null || date +%s)}"

log "building the rankq $VERSION wheel"
mkdir -p "$work/wheels"
"$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$work/wheels" "$REPO_ROOT" > "$work/wheel.log" 2>&1 \
    || { tail -n 20 "$work/wheel.log"; die "pip wheel failed"; }

# The Dockerfile's RUN steps other than the pip install (the non-root user and /data).
user_steps="$("$PYTHON" "$HERE/oci.py" dockerfile "$REPO_ROOT/Dockerfile" \
    | "$PYTHON" -c 'import json,sys; print(" && ".join(s for s in json.load(sys.stdin)["run"] if "pip install" not in s))')"
[ -n "$user_steps" ] || die "no user step found in the Dockerfile"

log "root filesystem: Debian bookworm + python3 from $MIRROR, rankq into $VENV from PyPI (a few minutes)"
# Hooks run with $1 = the new root. sync-in/sync-out carry the downloaded .debs and pip's cache
# across builds without mounting anything into the tree mmdebstrap will tar up.
mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates --skip=essential/unlink \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
    --setup-hook="sync-in '$IMAGE_DIR/debs' /var/cache/apt/archives/" \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook="sync-out /var/cache/apt/archives '$IMAGE_DIR/debs'" \
    --customize-hook='mkdir -p "$1"/tmp/wheels "$1"/tmp/pip-cache' \
    --customize-hook="sync-in '$work/wheels' /tmp/wheels" \
    --customize-hook="sync-in '$IMAGE_DIR/pip-cache' /tmp/pip-cache" \
    --customize-hook="chroot \"\$1\" python3 -m venv $VENV" \
    --customize-hook="copy-in '$BUILD_CA' /tmp/wheels" \
    --customize-hook="chroot \"\$1\" env -i PATH=/usr/bin:/bin HOME=/root $VENV/bin/pip install --no-input \
        --disable-pip-version-check --cert /tmp/wheels/${BUILD_CA##*/} --cache-dir /tmp/pip-cache \
        '/tmp/wheels/rankq-$VERSION-py3-none-any.whl[all]'" \
    --customize-hook="sync-out /tmp/pip-cache '$IMAGE_DIR/pip-cache'" \
    --customize-hook="chroot \"\$1\" sh -ec '$user_steps'" \
    --customize-hook='rm -rf "$1"/tmp/wheels "$1"/tmp/pip-cache "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/log/apt "$1"/var/log/dpkg.log' \
    bookworm "$work/rootfs.tar" "deb $MIRROR bookworm main" "deb $MIRROR bookworm-updates main" \
    > "$work/mmdebstrap.log" 2>&1 || { tail -n 30 "$work/mmdebstrap.log"; die "mmdebstrap failed (log above)"; }

log "writing the OCI archive $OUT"
"$PYTHON" "$HERE/oci.py" write "$work/rootfs.tar" "$OUT" --dockerfile "$REPO_ROOT/Dockerfile" --name "$NAME" \
    --path-prefix "$VENV/bin" --label "org.opencontainers.image.version=$TAG" \
    --label "org.opencontainers.image.title=rankq" > "$work/result.json"
printf '%s\n' "$DIGEST" > "$OUT.inputs"
rootfs_mb=$(( $(stat -c %s "$work/rootfs.tar") / 1048576 ))
archive_mb=$(( $(stat -c %s "$OUT") / 1048576 ))
log "image $NAME: $archive_mb MiB compressed, $rootfs_mb MiB unpacked, built in $(( $(date +%s) - t0 ))s"
for t in "${also_tags[@]}"; do retag "$t"; done
log "import into containerd: ctr -n k8s.io images import $OUT"
printf '%s\n' "$OUT"
