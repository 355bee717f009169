"""A Raft member: PySyncObj configured for RankQ, ticked by a thread of our own.

Why our own tick thread: PySyncObj's auto-tick sleeps a fixed period between ticks, so a lone node
would acknowledge a write only after that period. Here the thread ticks again at once while
proposals of a single-node group wait for commit, and otherwise sleeps until a socket or a new
proposal wakes it (commands wake the poller when batching of append-entries is off; our batches
already amortise each entry).
"""

from __future__ import annotations

import logging
import os
import signal
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pysyncobj import SyncObjConf, SyncObjException
from pysyncobj.config import FAIL_REASON

from .secret import resolve_secret
from .state_machine import EngineStateMachine
from .syncobj import GuardedSyncObj
from .transport import parse_address, probe_member

log = logging.getLogger("rankq.replication")

FAIL_FAST_SECONDS = 10
# Without a leader this long, this node counts as cut off from the group (about as long as the
# server lets a write wait for its commit; an election takes about one second).
CUT_OFF_SECONDS = 5.0

FAIL_NAMES = {v: k.lower() for k, v in vars(FAIL_REASON).items() if k.isupper()}

# When to write a snapshot and compact the log (the server's --snapshot-* defaults come from here).
COMPACTION_MIN_ENTRIES = 20_000
COMPACTION_MIN_SECONDS = 300
COMPACTION_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class RaftSettings:
    self_address: str  # host:port other members reach this node at (a DNS name works)
    peers: list[str] = field(default_factory=list)  # the other members' host:port
    bind_address: str | None = None  # host:port to listen on; default: self_address
    data_dir: str = "."
    # The group's shared secret; without one a lone node generates its own (see secret.py).
    password: str | None = None
    tick_period: float = 0.05
    # Failover time is mostly the election timeout: a follower that hears nothing from the leader
    # for a random 0.5-1.0 s starts an election. Heartbeats every 0.1 s leave room for a busy
    # 2-core machine without spurious elections (measured by `make bench`, failover section).
    election_timeout: tuple[float, float] = (0.5, 1.0)
    heartbeat_period: float = 0.1
    # A leader that hears from no majority for this long steps down, so an isolated leader stops
    # answering as leader soon after the others have elected a new one.
    leader_fallback_timeout: float = 1.5
    connection_timeout: float = 2.0
    connection_retry: float = 0.5
    dns_cache_seconds: float = 2.0  # pod IPs change on restart: do not cache names for long
    compaction_min_entries: int = COMPACTION_MIN_ENTRIES
    compaction_min_seconds: int = COMPACTION_MIN_SECONDS
    # ...or once the log holds this many bytes: PySyncObj keeps every log entry in memory too, so
    # a log of a few large batches must be compacted by size, not only by count.
    compaction_max_bytes: int = COMPACTION_MAX_BYTES

    @property
    def journal_file(self) -> str:
        return os.path.join(self.data_dir, "raft.journal")

    @property
    def snapshot_file(self) -> str:
        return os.path.join(self.data_dir, "raft.snapshot")


def _after_fork_in_child() -> None:
    """In a child forked to write a snapshot: die with the parent, and let go of its sockets.

    A child that outlived a killed parent would go on to rename its (older) snapshot into place
    while a restarted server runs, and would hold the listening ports so that restart cannot bind.
    """
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in fds:
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                os.close(fd)
        except OSError:
            pass


_fork_hook_installed = False


def _install_fork_hook() -> None:
    global _fork_hook_installed
    if not _fork_hook_installed and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _fork_hook_installed = True


class ReplicationError(Exception):
    """A proposal was not committed (no leader, lost leadership, queue full)."""

    def __init__(self, reason: int) -> None:
        self.reason = FAIL_NAMES.get(reason, str(reason))
        super().__init__(f"write not committed: {self.reason}")


class BindError(Exception):
    """The Raft port could not be bound (taken, or an address this host does not have)."""


class RaftNode:
    def __init__(self, settings: RaftSettings, on_woken: Callable[[set[str]], None] | None = None) -> None:
        os.makedirs(settings.data_dir, exist_ok=True)
        _install_fork_hook()
        self.settings = settings
        for address in [settings.self_address, *settings.peers]:
            parse_address(address)
        password = resolve_secret(settings.password, settings.data_dir, bool(settings.peers))
        self.state_machine = EngineStateMachine(on_woken)
        conf = SyncObjConf(
            autoTick=False,
            appendEntriesUseBatch=False,
            journalFile=settings.journal_file,
            fullDumpFile=settings.snapshot_file,
            password=password,
            bindAddress=settings.bind_address,
            raftMinTimeout=settings.election_timeout[0],
            raftMaxTimeout=settings.election_timeout[1],
            appendEntriesPeriod=settings.heartbeat_period,
            leaderFallbackTimeout=settings.leader_fallback_timeout,
            connectionTimeout=settings.connection_timeout,
            connectionRetryTime=settings.connection_retry,
            dnsCacheTime=settings.dns_cache_seconds,
            dnsFailCacheTime=min(1.0, settings.dns_cache_seconds),
            logCompactionMinEntries=settings.compaction_min_entries,
            logCompactionMinTime=settings.compaction_min_seconds,
            dynamicMembershipChange=True,
            # Fail at once while no leader is known: the API answers 503 with a retry hint
            # instead of holding the request.
            commandsWaitLeader=False,
            # A Raft port that is taken is an error at start-up, not a silent retry loop.
            bindRetryTime=0.5,
            maxBindRetries=10,
        )
        try:
            self.syncobj = GuardedSyncObj(
                settings.self_address, list(settings.peers), conf, consumers=[self.state_machine]
            )
        except SyncObjException as err:
            raise BindError(str(err)) from err
        self._waiting = 0  # proposals not yet answered
        self._last_contact = time.monotonic()  # when this node last knew a leader it hears from
        self._waiting_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="raft-tick", daemon=True)

    # ---- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        sync = self.syncobj
        period = self.settings.tick_period
        next_size_check = 0.0
        failing_since = None
        try:
            while not self._stop.is_set():
                alone = not self._has_peers()
                try:
                    sync.doTick(0.0 if (alone and self._waiting) else period)
                    failing_since = None
                except Exception:
                    log.exception("raft tick failed")
                    failing_since = failing_since or time.monotonic()
                    if time.monotonic() - failing_since > FAIL_FAST_SECONDS:
                        # A committed entry that cannot be applied (say, written by an incompatible
                        # version) fails every tick from now on: a node that is alive but stuck
                        # helps nobody, so stop with an error a supervisor will see.
                        log.critical("raft ticks have failed for %ds; stopping this node", FAIL_FAST_SECONDS)
                        logging.shutdown()
                        os._exit(70)
                    self._stop.wait(period)
                now = time.monotonic()
                if now >= next_size_check:
                    next_size_check = now + 1.0
                    if self.log_bytes() > self.settings.compaction_max_bytes:
                        sync.forceLogCompaction()
        finally:
            sync.destroy()

    def log_bytes(self) -> int:
        """Bytes of log kept since the last snapshot (0 where the journal does not say)."""
        journal = getattr(self.syncobj, "_SyncObj__raftLog", None)
        return getattr(journal, "_FileJournal__currentOffset", 0)

    def _has_peers(self) -> bool:
        return bool(self.syncobj.otherNodes)

    # ---- proposals ----------------------------------------------------------------------------

    def propose(self, now: int, commands: list, done: Callable[[list | None, Exception | None], None]) -> None:
        """Replicate a batch; `done(results, error)` runs on the Raft thread once it is applied."""

        def callback(results, reason):
            with self._waiting_lock:
                self._waiting -= 1
            if reason == FAIL_REASON.SUCCESS:
                done(results, None)
            else:
                done(None, ReplicationError(reason))

        with self._waiting_lock:
            self._waiting += 1
        try:
            self.state_machine.apply_batch(now, commands, callback=callback)
        except BaseException:  # not serializable: it never reached the log, nothing to wait for
            with self._waiting_lock:
                self._waiting -= 1
            raise

    # ---- membership ---------------------------------------------------------------------------

    def _outcome(self, done: Callable[[Exception | None], None]):
        def callback(_result, reason):
            done(None if reason == FAIL_REASON.SUCCESS else ReplicationError(reason))

        return callback

    def add_member(self, address: str, done: Callable[[Exception | None], None]) -> None:
        """Add one member (committed as a log entry); wait for `done` before the next change."""
        self.syncobj.addNodeToCluster(address, callback=self._outcome(done))

    def probe_member(self, address: str, timeout: float = 2.0) -> None:
        """Raise ProbeError unless `address` answers and holds this group's secret (blocking)."""
        probe_member(address, self.syncobj.encryptor, timeout)

    def remove_member(self, address: str, done: Callable[[Exception | None], None]) -> None:
        self.syncobj.removeNodeFromCluster(address, callback=self._outcome(done))

    def transfer_leadership(self, address: str | None, done: Callable[[Exception | None], None]) -> None:
        """Ask the leader to hand over to `address` (or the most caught-up follower)."""
        self.syncobj.transferLeadership(address, callback=self._outcome(done))

    def members(self) -> list[str]:
        """Raft addresses of every member this node knows, itself first."""
        return [self.settings.self_address] + sorted(n.address for n in self.syncobj.otherNodes)

    def is_connected(self, address: str) -> bool:
        for node in self.syncobj.otherNodes:
            if node.address == address:
                return self.syncobj.isNodeConnected(node)
        return address == self.settings.self_address

    # ---- status -------------------------------------------------------------------------------

    @property
    def engine(self):
        return self.state_machine.engine

    @property
    def lock(self) -> threading.Lock:
        return self.state_machine.lock

    def is_leader(self) -> bool:
        return self.syncobj._isLeader()

    def leader(self) -> str | None:
        leader = self.syncobj._getLeader()
        return None if leader is None else leader.address if hasattr(leader, "address") else str(leader)

    def is_ready(self) -> bool:
        return self.syncobj.isReady() and self.leader() is not None

    def status(self) -> dict:
        return self.syncobj.getStatus()

    def cut_off(self) -> bool:
        """True when this node has been out of contact with any leader for over CUT_OFF_SECONDS.

        A member removed from the group, or not yet added, looks like this from inside: the others
        drop its connections, so it hears no leader; PySyncObj meanwhile either keeps naming the
        last leader it knew (it starts no election while connected to nobody) or runs elections
        nobody answers. Either way nothing it proposes can commit. A partitioned node looks alike.
        """
        now = time.monotonic()
        if self.is_leader():
            in_contact = True
        elif self.leader() is None:
            in_contact = False
        else:  # a follower expects to hear from its leader before its election deadline
            deadline = getattr(self.syncobj, "_SyncObj__raftElectionDeadline", 0)
            in_contact = not deadline or now <= deadline  # 0: an election was just requested
        if in_contact:
            self._last_contact = now
            return False
        return now - self._last_contact > CUT_OFF_SECONDS
