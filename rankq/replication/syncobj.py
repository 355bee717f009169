"""PySyncObj's SyncObj with one correction to how a follower treats overlapping append-entries.

Why: the leader pipelines append-entries (it advances a follower's next index before the answer
arrives), and an answer to an older message moves that index back, so the follower later receives
entries it already holds. PySyncObj's follower then deletes everything after `prevLogIdx` and
appends what the message carries (logging "truncating already-applied log entries"). Because a
message carries at most `appendEntriesBatchSizeBytes`, it can carry *fewer* entries than were
deleted, dropping entries the leader already counted for commit on that follower. In a 3-node
group under load that opens a window where an acknowledged write exists on a single node.

The correction is Raft's own rule (§5.3): a follower deletes entries only on a conflict (same
index, different term); an entry it holds with the same index and term is kept, and entries of the
sending leader's own term are never in conflict with it. Messages are trimmed to what is new before
PySyncObj handles them; everything else (terms, votes, commit index, snapshots) is untouched.

A second correction concerns restarts after a snapshot. A snapshot is written by a forked child;
only when the parent sees it finished does it drop the log entries the snapshot covers. A parent
killed between the two restarts with a snapshot whose last entries are no longer the first ones of
its log, and PySyncObj then *clears the whole log*, losing every committed entry after the
snapshot (seen in tests as acknowledged writes missing after kill -9). Before the snapshot is
loaded, the log is now trimmed to start at the snapshot's entries when it holds them, which is what
the parent would have done had it lived.

A third correction: a snapshot chunk never advances a follower's commit index (see
`snapshot_chunk_without_commit`).

Finally, members send each other a small keepalive. PySyncObj counts a connection that has read
nothing for `connectionTimeout` as dead, but checks only when it next sends; followers send each
other nothing while a leader lives, so the first vote request after the leader dies went into a
"dead" connection and was dropped, and every election needed a second round (measured: all 20
leader kills of the failover benchmark took two terms).

Peers talk through `transport.PeerTransport` (authenticated, encrypted, bounded frames).
"""

from __future__ import annotations

import time

from pysyncobj import SyncObj

from .transport import PeerTransport

KEEPALIVE_PERIOD = 0.5  # well inside the connection timeout


def snapshot_chunk_without_commit(message: dict, commit_index: int) -> dict:
    """A snapshot chunk (append_entries without prevLogIdx) that cannot move the commit index.

    PySyncObj lets every append_entries raise a follower's commit index to min(leader's commit
    index, the follower's *whole* log), but a snapshot chunk verifies nothing about that log. A
    deposed leader that still holds entries of its old term which the group never committed
    (written while it was cut off) would then apply them when the new leader starts sending it a
    snapshot, and answer their clients "committed": writes acknowledged and then gone (seen in the
    chaos sample: an enqueue answered 201 by a partitioned ex-leader, unknown to the group). Raft
    commits on a follower only up to the last entry the leader has verified (§5.3); the regular
    append_entries path does that, and a loaded snapshot sets the commit index itself.
    """
    return {**message, "commit_index": commit_index}


class GuardedSyncObj(SyncObj):
    def __init__(self, *args, **kwargs) -> None:
        self._next_keepalive = 0.0  # set before SyncObj's init: not part of snapshots
        kwargs.setdefault("transportClass", PeerTransport)
        super().__init__(*args, **kwargs)
        serializer = self._SyncObj__serializer
        load = serializer.deserialize

        def deserialize():
            data = load()
            self._align_log_to_snapshot(data)
            return data

        serializer.deserialize = deserialize

    def _onTick(self, timeToWait=0.0):
        super()._onTick(timeToWait)
        now = time.monotonic()
        if now >= self._next_keepalive:
            self._next_keepalive = now + KEEPALIVE_PERIOD
            transport = self._SyncObj__transport
            for node in list(self._SyncObj__connectedNodes):
                transport.send(node, {"type": "rankq_keepalive"})  # ignored by the receiver

    def _align_log_to_snapshot(self, data) -> None:
        """Drop log entries before the snapshot's last two when the log holds those very entries."""
        try:
            last, before = data[1], data[2]
        except (TypeError, IndexError):
            return
        log = self._SyncObj__raftLog
        if len(log) < 2 or (log[0] == before and log[1] == last):
            return
        first = log[0][1]
        pos = before[1] - first
        if 0 <= pos < len(log) - 1 and log[pos] == before and log[pos + 1] == last:
            log.deleteEntriesTo(pos)

    def _SyncObj__onMessageReceived(self, node, message):  # overrides the name-mangled handler
        if type(message) is dict and message.get("type") == "append_entries":
            if "prevLogIdx" not in message:
                message = snapshot_chunk_without_commit(message, self._SyncObj__raftCommitIndex)
            elif "transmission" not in message and message.get("entries"):
                message = self._trim_known_entries(message)
        return SyncObj._SyncObj__onMessageReceived(self, node, message)

    def _trim_known_entries(self, message: dict) -> dict:
        log = self._SyncObj__raftLog
        if len(log) == 0:
            return message
        first_idx = log[0][1]
        last_idx = log[-1][1]
        entries = message["entries"]
        matched = 0
        for entry in entries:
            idx, term = entry[1], entry[2]
            if idx < first_idx or idx > last_idx:
                break
            if log[idx - first_idx][2] != term:
                return message  # a real conflict: let PySyncObj truncate from here
            matched += 1
        if matched == 0:
            return message
        rest = entries[matched:]
        last_matched = entries[matched - 1]
        if rest:
            # Everything up to our last entry matched; append only the new tail.
            return {**message, "prevLogIdx": last_matched[1], "prevLogTerm": last_matched[2], "entries": rest}
        # All carried entries are already here. Keep whatever follows them when it was written in
        # the sender's term (it came from this very leader, so it is in the leader's log too).
        tail_idx = last_matched[1]
        leader_term = message["term"]
        for idx in range(tail_idx + 1, last_idx + 1):
            if log[idx - first_idx][2] != leader_term:
                # An older term's tail: unverified, so answer only for what was matched and let
                # PySyncObj drop the unverified rest, as Raft allows for uncommitted entries.
                return {**message, "prevLogIdx": tail_idx, "prevLogTerm": last_matched[2], "entries": []}
        last = log[-1]
        return {**message, "prevLogIdx": last[1], "prevLogTerm": last[2], "entries": []}
