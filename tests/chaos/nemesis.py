"""The fault schedule: one fault at a time, held for a while, undone, then wait for the group to recover.

Kinds:
  kill9_leader, kill9_follower      SIGKILL, then start the process again on its data dir
  pause_leader, pause_follower      SIGSTOP for longer than an election timeout, then SIGCONT
  restart_all                       SIGKILL every member, then start them all
  isolate_leader                    drop Raft traffic between the leader and the rest; clients still
                                    reach it, so they talk to a deposed leader
  isolate_leader_full               cut the leader from its peers and from clients
  isolate_follower                  cut one follower from its peers (clients still reach it)
  split_leader_minority             5 nodes: {leader, one follower} | {the other three}
  split_leader_majority             5 nodes: {leader, two followers} | {the other two}
"""

from __future__ import annotations

import random
import time
from collections import Counter

from group import RAFT_PORT, NsGroup, NsNode
from history import History
from netns import Network

KINDS_3 = [
    "kill9_leader",
    "kill9_follower",
    "pause_leader",
    "pause_follower",
    "restart_all",
    "isolate_leader",
    "isolate_leader_full",
    "isolate_follower",
]
KINDS_5 = KINDS_3 + ["split_leader_minority", "split_leader_majority"]


def plan(kinds: list[str], count: int, rng: random.Random) -> list[str]:
    """`count` faults, every kind at least once when count allows, in a shuffled order."""
    out = list(kinds) * (count // len(kinds)) + rng.sample(kinds, count % len(kinds))
    rng.shuffle(out)
    return out


class Nemesis:
    def __init__(
        self,
        group: NsGroup,
        net: Network,
        history: History,
        rng: random.Random,
        *,
        hold: tuple[float, float] = (1.5, 3.0),
        partition_hold: tuple[float, float] = (3.0, 5.0),
        gap: tuple[float, float] = (0.5, 1.5),
        recover_timeout: float = 45.0,
        log=print,
    ) -> None:
        self.group = group
        self.net = net
        self.history = history
        self.rng = rng
        self.hold = hold
        self.partition_hold = partition_hold
        self.gap = gap
        self.recover_timeout = recover_timeout
        self.log = log
        self.counts: Counter = Counter()
        self.recoveries: list[float] = []
        self.slow_recoveries = 0

    # ---- schedule -------------------------------------------------------------------------------

    def run(self, kinds: list[str]) -> None:
        for n, kind in enumerate(kinds, 1):
            t0 = time.time()
            target = self.inject(kind)
            self.counts[kind] += 1
            t1 = time.time()
            self.history.fault(kind, target, t0, t1)
            recovered = self.recover()
            self.log(
                f"  fault {n}/{len(kinds)} {kind} on {target}: held {t1 - t0:.1f}s, healthy again {recovered:.1f}s later"
            )
            time.sleep(self.rng.uniform(*self.gap))

    def recover(self) -> float:
        """Wait until the group is healthy; if it does not get there, undo everything and wait again."""
        t0 = time.monotonic()
        try:
            self.group.wait_healthy(self.recover_timeout)
        except TimeoutError as err:
            self.slow_recoveries += 1
            self.log(f"  not healthy in {self.recover_timeout}s ({err}); healing everything")
            self.reset()
            self.group.wait_healthy(self.recover_timeout)
        took = time.monotonic() - t0
        self.recoveries.append(took)
        return took

    def reset(self) -> None:
        """Heal the network and bring every process back (used after the schedule and on trouble)."""
        self.net.heal()
        for n in self.group.nodes:
            if n.paused:
                n.resume()
            if not n.alive():
                n.start()

    # ---- faults ---------------------------------------------------------------------------------

    def _leader(self) -> NsNode:
        return self.group.wait_leader(30)

    def _followers(self, lead: NsNode) -> list[NsNode]:
        rest = [n for n in self.group.nodes if n is not lead]
        self.rng.shuffle(rest)
        return rest

    def _hold(self, partition: bool = False) -> None:
        time.sleep(self.rng.uniform(*(self.partition_hold if partition else self.hold)))

    def inject(self, kind: str) -> str:
        g, net = self.group, self.net
        lead = self._leader()
        followers = self._followers(lead)
        g.note(f"fault {kind} (leader {lead.node_id})")
        if kind in ("kill9_leader", "kill9_follower"):
            victim = lead if kind == "kill9_leader" else followers[0]
            victim.kill9()
            self._hold()
            victim.start()
            return victim.node_id
        if kind in ("pause_leader", "pause_follower"):
            victim = lead if kind == "pause_leader" else followers[0]
            victim.pause()
            self._hold()
            victim.resume()
            return victim.node_id
        if kind == "restart_all":
            for n in g.nodes:
                n.kill9()
            time.sleep(self.rng.uniform(0.2, 1.0))
            for n in g.nodes:
                n.start()
            return "all"
        if kind in ("isolate_leader", "isolate_leader_full", "isolate_follower"):
            victim = followers[0] if kind == "isolate_follower" else lead
            if kind == "isolate_leader":
                net.isolate(victim.index, clients=True, raft_only=True, raft_port=RAFT_PORT)
            else:
                net.isolate(victim.index, clients=kind != "isolate_leader_full")
            self._hold(partition=True)
            net.heal()
            g.note("healed")
            return victim.node_id
        if kind in ("split_leader_minority", "split_leader_majority"):
            if len(g.nodes) < 5:
                raise ValueError(f"{kind} needs 5 nodes")
            take = 1 if kind == "split_leader_minority" else 2
            side = [lead] + followers[:take]
            other = followers[take:]
            net.partition([[n.index for n in side], [n.index for n in other]])
            self._hold(partition=True)
            net.heal()
            g.note("healed")
            return "+".join(n.node_id for n in side) + "|" + "+".join(n.node_id for n in other)
        raise ValueError(f"unknown fault {kind}")
