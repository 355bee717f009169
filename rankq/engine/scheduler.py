"""Which ready message goes out next: priority levels, fair groups and the two policies.

Ready messages live in one `Level` per priority number. Inside a level, each group has a min-heap of
message ids (ids grow with log order, so the heap is FIFO and a redelivered message keeps its
place). Groups are served round robin when fair groups are on; otherwise every message shares one
group slot. Heaps are cleaned lazily: an id whose message is no longer ready at this level is
skipped when it reaches the top.
"""

from __future__ import annotations

import bisect
import heapq
from collections import deque
from collections.abc import Callable, Iterable

from .message import READY, Message

ALL = ""  # the single group slot used when fair groups are off


class Level:
    __slots__ = ("priority", "heaps", "rotation", "ready", "group_cw")

    def __init__(self, priority: int) -> None:
        self.priority = priority
        self.heaps: dict[str, list[int]] = {}
        self.rotation: deque[str] = deque()  # group slots with (possibly stale) entries
        self.ready = 0
        self.group_cw: dict[str, int] = {}  # smooth weighted round robin state over groups (group_weights)

    def push(self, slot: str, msg_id: int) -> None:
        heap = self.heaps.get(slot)
        if heap is None:
            heap = self.heaps[slot] = []
            self.rotation.append(slot)
        heapq.heappush(heap, msg_id)

    def _clean(self, slot: str, messages: dict[int, Message], slot_of: Callable[[Message], str]) -> list[int]:
        """The slot's heap with stale entries dropped from its top."""
        heap = self.heaps[slot]
        while heap:
            msg = messages.get(heap[0])
            if msg is not None and msg.state == READY and msg.priority == self.priority and slot_of(msg) == slot:
                break
            heapq.heappop(heap)
        return heap

    def pop_weighted(
        self,
        messages: dict[int, Message],
        slot_of: Callable[[Message], str],
        eligible: Callable[[str], bool] | None,
        weights: dict[str, int],
    ) -> Message | None:
        """Take the oldest ready message of the group that smooth weighted round robin picks among
        the eligible groups (a group not in `weights` weighs 1), or None."""
        cw = getattr(self, "group_cw", None)
        if cw is None:  # a level from a snapshot of an earlier build
            cw = self.group_cw = {}
        candidates = []
        for slot in self.rotation:
            if self._clean(slot, messages, slot_of):
                candidates.append(slot)
            else:
                del self.heaps[slot]
                cw.pop(slot, None)
        if len(candidates) != len(self.rotation):
            self.rotation = deque(candidates)
        while candidates:
            total = 0
            for slot in candidates:
                w = weights.get(slot, 1)
                total += w
                cw[slot] = cw.get(slot, 0) + w
            best = candidates[0]
            for slot in candidates[1:]:
                if cw[slot] > cw[best]:
                    best = slot
            cw[best] -= total
            if eligible is None or eligible(best):
                return messages[heapq.heappop(self.heaps[best])]
            for slot in candidates:  # not eligible (caps, rate): undo this round and go without it
                cw[slot] -= weights.get(slot, 1)
            cw[best] += total
            candidates.remove(best)
        return None

    def pop(
        self,
        messages: dict[int, Message],
        slot_of: Callable[[Message], str],
        eligible: Callable[[str], bool] | None,
        group_weights: dict[str, int] | None = None,
    ) -> Message | None:
        """Take the oldest ready message of the next eligible group slot, or None."""
        if group_weights:
            return self.pop_weighted(messages, slot_of, eligible, group_weights)
        rotation = self.rotation
        attempts = len(rotation)
        while attempts > 0 and rotation:
            attempts -= 1
            slot = rotation[0]
            heap = self.heaps[slot]
            while heap:
                msg = messages.get(heap[0])
                if msg is not None and msg.state == READY and msg.priority == self.priority and slot_of(msg) == slot:
                    break
                heapq.heappop(heap)
            if not heap:
                del self.heaps[slot]
                rotation.popleft()
                continue
            rotation.rotate(-1)
            if eligible is not None and not eligible(slot):
                continue
            return messages[heapq.heappop(heap)]
        return None

    def head_ids(
        self, slot: str, messages: dict[int, Message], slot_of: Callable[[Message], str], limit: int
    ) -> list[int]:
        """The `limit` oldest ready ids of one group slot, read without changing the heap.

        Walks the heap as the tree it is, smallest first (a heap of (id, position) candidates), so
        the cost grows with `limit` and the stale entries met on the way, not with the heap's size."""
        heap = self.heaps.get(slot) or []
        out: list[int] = []
        seen: set[int] = set()
        frontier = [(heap[0], 0)] if heap else []
        size = len(heap)
        while frontier and len(out) < limit:
            mid, i = heapq.heappop(frontier)
            if mid not in seen:  # an id pushed twice (ready again) is one message
                seen.add(mid)
                msg = messages.get(mid)
                if msg is not None and msg.state == READY and msg.priority == self.priority and slot_of(msg) == slot:
                    out.append(mid)
            for child in (2 * i + 1, 2 * i + 2):
                if child < size:
                    heapq.heappush(frontier, (heap[child], child))
        return out


class ReadySet:
    """All ready messages of one queue, by priority level."""

    __slots__ = ("levels", "active", "current_weight", "fair")

    def __init__(self, fair: bool) -> None:
        self.levels: dict[int, Level] = {}
        self.active: list[int] = []  # sorted priorities whose level has ready messages
        self.current_weight: dict[int, int] = {}  # smooth weighted round robin state
        self.fair = fair

    def slot_of(self, msg: Message) -> str:
        return msg.group if self.fair else ALL

    def add(self, msg: Message) -> None:
        level = self.levels.get(msg.priority)
        if level is None:
            level = self.levels[msg.priority] = Level(msg.priority)
        level.push(self.slot_of(msg), msg.id)
        level.ready += 1
        if level.ready == 1:
            bisect.insort(self.active, msg.priority)

    def discard(self, msg: Message) -> None:
        """Count a ready message out; its heap entry is dropped lazily."""
        level = self.levels[msg.priority]
        level.ready -= 1
        if level.ready == 0:
            self._deactivate(level)

    def _deactivate(self, level: Level) -> None:
        self.active.remove(level.priority)
        self.current_weight.pop(level.priority, None)
        del self.levels[level.priority]

    def __len__(self) -> int:
        return sum(self.levels[p].ready for p in self.active)

    def _take(
        self,
        level: Level,
        messages: dict[int, Message],
        eligible: Callable[[str], bool] | None,
        group_weights: dict[str, int] | None = None,
    ) -> Message | None:
        msg = level.pop(messages, self.slot_of, eligible, group_weights)
        if msg is not None:
            level.ready -= 1
            if level.ready == 0:
                self._deactivate(level)
        return msg

    def take_strict(
        self,
        messages: dict[int, Message],
        eligible: Callable[[str], bool] | None,
        group_weights: dict[str, int] | None = None,
    ) -> Message | None:
        for priority in list(self.active):
            msg = self._take(self.levels[priority], messages, eligible, group_weights)
            if msg is not None:
                return msg
        return None

    def take_weighted(
        self,
        messages: dict[int, Message],
        weights: dict[int, int],
        eligible: Callable[[str], bool] | None,
        group_weights: dict[str, int] | None = None,
    ) -> Message | None:
        """Smooth weighted round robin over the non-empty classes.

        A priority without a configured weight (left over from a policy change) gets weight 1.
        """
        candidates = list(self.active)
        cw = self.current_weight
        while candidates:
            total = 0
            for p in candidates:
                w = weights.get(p, 1)
                total += w
                cw[p] = cw.get(p, 0) + w
            best = candidates[0]
            for p in candidates[1:]:
                if cw[p] > cw[best]:
                    best = p
            cw[best] -= total
            msg = self._take(self.levels[best], messages, eligible, group_weights)
            if msg is not None:
                return msg
            # Nothing eligible there (group caps): undo this round and try without it.
            for p in candidates:
                if p in cw:
                    cw[p] -= weights.get(p, 1)
            if best in cw:
                cw[best] += total
            candidates.remove(best)
        return None

    def shadow(self, messages: dict[int, Message], limit: int) -> ReadySet:
        """A throwaway copy holding at most `limit` ready ids per group slot, so a look ahead can
        run the real selection (`take_*`) without touching this set."""
        new = ReadySet(self.fair)
        new.active = list(self.active)
        new.current_weight = dict(self.current_weight)
        for p in self.active:
            level = self.levels[p]
            copy = new.levels[p] = Level(p)
            copy.rotation = deque(level.rotation)
            copy.group_cw = dict(getattr(level, "group_cw", None) or {})
            copy.heaps = {slot: level.head_ids(slot, messages, self.slot_of, limit) for slot in level.rotation}
            copy.ready = level.ready
        return new

    def oldest_id(self, messages: dict[int, Message]) -> int | None:
        """The smallest ready id (ids follow log order, so: the longest-waiting ready message)."""
        best = None
        for p in self.active:
            level = self.levels[p]
            for slot in level.rotation:
                head = level.head_ids(slot, messages, self.slot_of, 1)
                if head and (best is None or head[0] < best):
                    best = head[0]
        return best

    def rebuilt(self, fair: bool, ready_messages: Iterable[Message]) -> ReadySet:
        new = ReadySet(fair)
        for msg in ready_messages:
            new.add(msg)
        return new
