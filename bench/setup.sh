#!/usr/bin/env bash
# Install what `make bench` needs and print the load generators' paths as KEY=VALUE lines:
#   WRK=...        wrk (Debian package), the HTTP closed-loop load generator
#   RANKQ_LOAD=... bench/loadgen built with Go (paced HTTP, producer/consumer pairs, fills, gRPC)
# Re-running is cheap: wrk is installed only when missing, the Go tool rebuilt only when its
# sources are newer than the binary. Progress goes to stderr.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache="${RANKQ_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rankq/bench}"
mkdir -p "$cache"
log() { echo "bench/setup: $*" >&2; }

wrk_bin=$(command -v wrk || true)
if [ -z "$wrk_bin" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        log "installing wrk"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2 || true
        apt-get install -y -qq wrk >&2
    elif command -v sudo >/dev/null && command -v apt-get >/dev/null; then
        log "installing wrk with sudo"
        sudo apt-get update -qq >&2 || true
        sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >&2
    else
        log "wrk is missing: install it with your package manager (Debian/Ubuntu: apt-get install wrk)"
        exit 1
    fi
    wrk_bin=$(command -v wrk)
fi

command -v go >/dev/null || { log "Go is missing: the load generator is built from bench/loadgen with Go >= 1.26"; exit 1; }
load_bin="$cache/rankq-load"
newer=$(find "$here/loadgen" -newer "$load_bin" -type f 2>/dev/null | head -1 || true)
if [ ! -x "$load_bin" ] || [ -n "$newer" ]; then
    log "building rankq-load"
    (cd "$here/loadgen" && CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -buildvcs=false -mod=readonly" \
        go build -trimpath -o "$load_bin.tmp" . >&2)
    mv -f "$load_bin.tmp" "$load_bin"
fi

echo "WRK=$wrk_bin"
echo "RANKQ_LOAD=$load_bin"
