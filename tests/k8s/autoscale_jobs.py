"""The handler the autoscaling end-to-end test's workers run: a little work, then a journal line."""

from __future__ import annotations

import os
import time

WORK_SECONDS = 0.3  # per message, unless RANKQ_TEST_WORK_SECONDS says otherwise


def handle(msg) -> dict:
    time.sleep(float(os.environ.get("RANKQ_TEST_WORK_SECONDS", WORK_SECONDS)))
    with open(os.environ["RANKQ_TEST_JOURNAL"], "a") as fh:
        fh.write(f"{msg.id} {os.getpid()}\n")
    return {"done": True}
