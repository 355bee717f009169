# Process bookkeeping for the control plane: one pidfile per component under $K8S_STATE_DIR/run.
# Sourced after lib.sh. A pidfile counts only while its pid is alive AND runs the recorded
# executable, so a recycled pid is never mistaken for (or killed as) ours.
# shellcheck shell=bash

proc_pidfile() { printf '%s/run/%s.pid\n' "$K8S_STATE_DIR" "$1"; }

# proc_pid NAME -> pid on stdout if that component runs, else return 1.
proc_pid() {
    local f pid exe want
    f="$(proc_pidfile "$1")"
    [ -f "$f" ] || return 1
    read -r pid want < "$f" || return 1
    { [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; } || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    exe="${exe% (deleted)}"
    if [ -n "$want" ] && [ "$exe" != "$want" ]; then return 1; fi
    printf '%s\n' "$pid"
}

port_in_use() { # port_in_use PORT: something listens on 127.0.0.1:PORT
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# proc_start NAME PORT BINARY ARGS...: start detached (own session) unless already running.
proc_start() {
    local name="$1" port="$2" bin="$3"; shift 3
    local pid real log
    if pid="$(proc_pid "$name")"; then
        k8s_log "$name already running (pid $pid)"
        return 0
    fi
    if [ -n "$port" ] && port_in_use "$port"; then
        k8s_die "port $port (for $name) is taken by a process this harness did not start; stop it or set RANKQ_K8S_*_PORT (see hack/k8s/lib.sh)"
    fi
    real="$(readlink -f "$bin")"
    log="$K8S_STATE_DIR/logs/$name.log"
    if [ -s "$log" ]; then mv -f "$log" "$log.1"; fi
    printf '# %s %s\n' "$(date -u +%FT%TZ)" "$real $*" > "$log"
    # fd 8 is the up/down lock (up.sh): a daemon must not inherit it, or down.sh would wait forever.
    setsid "$real" "$@" >> "$log" 2>&1 < /dev/null 8>&- &
    pid=$!
    printf '%s %s\n' "$pid" "$real" > "$(proc_pidfile "$name")"
    # Until the forked shell has exec'ed the binary, /proc/PID/exe still names bash.
    local i
    for ((i = 0; i < 100; i++)); do
        proc_pid "$name" >/dev/null && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    k8s_log "started $name (pid $pid, log ${log#"$REPO_ROOT"/})"
}

# proc_wait NAME TIMEOUT CMD...: poll CMD until it succeeds; fail early if NAME died.
proc_wait() {
    local name="$1" timeout="$2"; shift 2
    local deadline=$(( $(date +%s) + timeout ))
    while ! "$@" >/dev/null 2>&1; do
        if ! proc_pid "$name" >/dev/null; then
            k8s_log "$name exited; last lines of its log:"
            tail -n 25 "$K8S_STATE_DIR/logs/$name.log" >&2 || true
            exit 1
        fi
        if [ "$(date +%s)" -ge "$deadline" ]; then
            k8s_log "$name not ready after ${timeout}s ($*); last lines of its log:"
            tail -n 25 "$K8S_STATE_DIR/logs/$name.log" >&2 || true
            exit 1
        fi
        sleep 0.5
    done
}

# proc_stop NAME [GRACE_SECONDS]: SIGTERM, then SIGKILL after the grace period.
proc_stop() {
    local name="$1" grace="${2:-15}" pid i
    if pid="$(proc_pid "$name")"; then
        kill -TERM "$pid" 2>/dev/null || true
        for ((i = 0; i < grace * 10; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            k8s_log "$name (pid $pid) ignored SIGTERM for ${grace}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        k8s_log "stopped $name (pid $pid)"
    fi
    rm -f "$(proc_pidfile "$name")"
}
