"""Network namespaces for chaos runs: one per node, wired to a bridge, with partitions made by nftables.

Layout of one run (the /24 is picked per run among 10.213.0.0/16 so concurrent runs do not collide):

    root namespace: bridge rqb<tag> 10.213.N.1/24   <- the test process (producers, consumers) lives here
        veth rqv<tag><i>  <->  eth0 in namespace <prefix>-<run>-n<i>, address 10.213.N.(i+2)/24

A partition installs an nftables input rule in each node's namespace that drops packets from the
members outside its side (optionally only to the Raft port), so a 2/3 split is exact in both
directions, and client traffic from the bridge address is dropped only when asked. Every link and
namespace carries the run id (as a link alias or in the name); `sweep()` removes what a run whose
process is gone left behind, and `Network.destroy()` runs on every exit path.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
from contextlib import contextmanager

PREFIX = "rqchaos"
SUBNET_BASE = "10.213"
TABLE = "rankq_chaos"


class NetnsUnavailable(Exception):
    """Namespaces cannot be made here (not root, tools missing, no kernel support)."""


def run(*cmd: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, input=input, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")
    return out


def _install_tools() -> None:
    """Install iproute2 and nftables from Debian's packages when a fresh machine lacks them."""
    missing = [pkg for tool, pkg in (("ip", "iproute2"), ("nft", "nftables")) if shutil.which(tool) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise NetnsUnavailable(f"missing {', '.join(missing)} and no apt-get to install them")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
        if res.returncode != 0:
            raise NetnsUnavailable(f"{' '.join(cmd)} failed: {res.stderr.strip()[-300:]}")


def on_ci(environ) -> bool:
    """Whether this runs on CI, where a chaos run that cannot start must fail, not skip."""
    return environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def check_available() -> None:
    """Raise NetnsUnavailable with one clear reason unless namespaces and nftables work here."""
    if os.geteuid() != 0:
        raise NetnsUnavailable("needs root (network namespaces, veth pairs, nftables)")
    _install_tools()
    probe = f"{PREFIX}-{os.getpid()}-probe"
    try:
        res = run("ip", "netns", "add", probe, check=False)
        if res.returncode != 0:
            raise NetnsUnavailable(f"cannot create a network namespace: {res.stderr.strip()}")
        res = run("ip", "netns", "exec", probe, "nft", "add", "table", "inet", TABLE, check=False)
        if res.returncode != 0:
            raise NetnsUnavailable(f"nftables does not work inside a namespace: {res.stderr.strip()}")
    finally:
        run("ip", "netns", "del", probe, check=False)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_pid(run_id: str) -> int | None:
    try:
        return int(run_id.split("-")[0])
    except (ValueError, IndexError):
        return None


def _stale(run_id: str) -> bool:
    pid = _owner_pid(run_id)
    return pid is not None and not _pid_alive(pid)


def sweep(prefix: str = PREFIX) -> list[str]:
    """Remove namespaces and links left by earlier runs whose test process is gone; returns their names."""
    removed = []
    for line in run("ip", "netns", "list", check=False).stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        if not name.startswith(prefix + "-"):
            continue
        run_id = name[len(prefix) + 1 :].rsplit("-", 1)[0]
        if not _stale(run_id):
            continue
        for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)  # a server of that dead run, still inside
            except (ProcessLookupError, ValueError):
                pass
        run("ip", "netns", "del", name, check=False)
        removed.append(name)
    links = json.loads(run("ip", "-j", "link", "show", check=False).stdout or "[]")
    for link in links:
        alias = link.get("ifalias") or ""
        if alias.startswith(prefix + "-") and _stale(alias[len(prefix) + 1 :]):
            run("ip", "link", "del", link["ifname"], check=False)
            removed.append(link["ifname"])
    return removed


@contextmanager
def _subnet_lock():
    path = os.path.join(tempfile.gettempdir(), f"{PREFIX}-subnets.lock")
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _used_third_octets() -> set[int]:
    used = set()
    for line in run("ip", "-4", "route", "show", check=False).stdout.splitlines():
        dest = line.split()[0] if line.strip() else ""
        if dest.startswith(SUBNET_BASE + "."):
            try:
                used.add(int(dest.split(".")[2].split("/")[0]))
            except (IndexError, ValueError):
                pass
        elif dest == "default":
            continue
    return used


class Network:
    """N namespaces on one bridge; `partition()` / `heal()`; `destroy()` removes everything."""

    def __init__(self, size: int, prefix: str = PREFIX) -> None:
        self.size = size
        self.prefix = prefix
        self.run_id = f"{os.getpid()}-{secrets.token_hex(3)}"
        self.tag = secrets.token_hex(3)
        self.bridge = f"rqb{self.tag}"
        self.octet: int | None = None
        self.namespaces: list[str] = []
        self.root_links: list[str] = []
        self.partitions = 0

    # ---- addresses ------------------------------------------------------------------------------

    @property
    def subnet(self) -> str:
        return f"{SUBNET_BASE}.{self.octet}"

    @property
    def gateway(self) -> str:
        """The bridge's address in the root namespace: where client traffic comes from."""
        return f"{self.subnet}.1"

    def addr(self, i: int) -> str:
        return f"{self.subnet}.{i + 2}"

    def ns(self, i: int) -> str:
        return self.namespaces[i]

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.ns(i)]

    # ---- lifecycle ------------------------------------------------------------------------------

    def create(self) -> Network:
        sweep(self.prefix)
        alias = f"{self.prefix}-{self.run_id}"
        try:
            with _subnet_lock():
                used = _used_third_octets()
                free = [o for o in range(10, 250) if o not in used]
                if not free:
                    raise NetnsUnavailable(f"no free /24 left in {SUBNET_BASE}.0.0/16")
                self.octet = free[secrets.randbelow(len(free))]
                run("ip", "link", "add", self.bridge, "type", "bridge")
                self.root_links.append(self.bridge)
                run("ip", "link", "set", self.bridge, "alias", alias)
                run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
                run("ip", "link", "set", self.bridge, "up")
            for i in range(self.size):
                name = f"{self.prefix}-{self.run_id}-n{i}"
                run("ip", "netns", "add", name)
                self.namespaces.append(name)
                outer, inner = f"rqv{self.tag}{i}", f"rqi{self.tag}{i}"
                run("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
                self.root_links.append(outer)
                run("ip", "link", "set", outer, "alias", alias)
                run("ip", "link", "set", inner, "netns", name)
                run("ip", "link", "set", outer, "master", self.bridge, "up")
                run("ip", "-n", name, "link", "set", inner, "name", "eth0")
                run("ip", "-n", name, "addr", "add", f"{self.addr(i)}/24", "dev", "eth0")
                run("ip", "-n", name, "link", "set", "eth0", "up")
                run("ip", "-n", name, "link", "set", "lo", "up")
                self._nft(
                    i,
                    f"add table inet {TABLE}\n"
                    f"add chain inet {TABLE} input {{ type filter hook input priority 0; policy accept; }}\n",
                )
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Remove the namespaces (killing anything left inside) and the root-side links. Idempotent."""
        for name in self.namespaces:
            for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            run("ip", "netns", "del", name, check=False)
        self.namespaces = []
        for link in reversed(self.root_links):
            run("ip", "link", "del", link, check=False)
        self.root_links = []

    def __enter__(self) -> Network:
        return self.create()

    def __exit__(self, *exc) -> None:
        self.destroy()

    # ---- faults ---------------------------------------------------------------------------------

    def _nft(self, i: int, script: str) -> None:
        run("ip", "netns", "exec", self.ns(i), "nft", "-f", "-", input=script)

    def _drop_rules(self, i: int, sources: list[str], port: int | None) -> None:
        script = f"flush chain inet {TABLE} input\n"
        if sources:
            match = f"ip saddr {{ {', '.join(sources)} }}"
            if port is not None:
                # Both directions of the Raft connections: to this node's Raft port, and replies
                # from a peer's Raft port to connections this node opened.
                script += f"add rule inet {TABLE} input {match} tcp dport {port} drop\n"
                script += f"add rule inet {TABLE} input {match} tcp sport {port} drop\n"
            else:
                script += f"add rule inet {TABLE} input {match} drop\n"
        self._nft(i, script)

    def partition(
        self, groups: list[list[int]], raft_port: int | None = None, cut_clients: list[int] | tuple = ()
    ) -> None:
        """Only members of the same group hear each other; nodes in `cut_clients` also drop the root.

        With `raft_port`, only traffic to or from that port is dropped between groups.
        """
        side = {}
        for g, members in enumerate(groups):
            for i in members:
                side[i] = g
        for i in range(self.size):
            others = [self.addr(j) for j in range(self.size) if j != i and side.get(j) != side.get(i, -1 - i)]
            sources = others + ([self.gateway] if i in cut_clients else [])
            self._drop_rules(i, sources, raft_port if i not in cut_clients else None)
        self.partitions += 1

    def isolate(self, i: int, clients: bool = True, raft_only: bool = False, raft_port: int | None = None) -> None:
        """Cut node i from every other node; `clients=False` also cuts it from the root namespace."""
        rest = [j for j in range(self.size) if j != i]
        self.partition([[i], rest], raft_port=raft_port if raft_only else None, cut_clients=() if clients else (i,))

    def heal(self) -> None:
        for i in range(self.size):
            self._drop_rules(i, [], None)
