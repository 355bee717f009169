"""The pace of a Queue's Raft-state check: fast while things move, backing off while settled."""

from __future__ import annotations

from rankq.operator.handlers import CHECK_DEGRADED, CHECK_FAST, CHECK_SETTLED, CHECK_SILENT, next_check
from rankq.operator.reconcile import QueueController


def controller(seen=None, degraded=None) -> QueueController:
    c = QueueController.__new__(QueueController)
    c.seen, c.degraded = seen, degraded
    return c


def settle(c: QueueController, steps: int = 10) -> list[float]:
    out, interval = [], CHECK_FAST
    for _ in range(steps):
        interval = next_check(interval, True, c)
        out.append(interval)
    return out


def test_settled_group_with_members_answering_backs_off_to_the_failover_bound():
    pace = settle(controller(seen=("q-0", ["q-0", "q-1", "q-2"], 3, [])))
    assert pace[0] == 2 * CHECK_FAST and pace == sorted(pace) and pace[-1] == CHECK_SETTLED


def test_group_nobody_answers_backs_off_further():
    assert settle(controller(seen=(None, [], None, [])))[-1] == CHECK_SILENT


def test_any_change_returns_to_the_fast_pace_and_degraded_retries_slowly():
    assert next_check(CHECK_SETTLED, False, controller(seen=("q-0", ["q-0"], 1, []))) == CHECK_FAST
    pace, interval = [], CHECK_FAST
    for _ in range(8):
        interval = next_check(interval, False, controller(degraded=("AuthSecretMissing", "x")))
        pace.append(interval)
    assert pace[0] == 1.0 and pace[-1] == CHECK_DEGRADED
