"""Schemathesis hooks for tests/server/test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

They keep a generated run useful against one live node, and record what was answered:
- outside the stateful phase (which follows its own links), half of the requests that name a queue
  are pointed at the queue the test primed ("q", never deleted), and half of those that name a
  message at one of its ids, so ack, nack, extend and friends reach past "404 queue not found";
- a long-poll `wait` is capped at 0.2 s (a generated 20 s wait on an empty queue only costs time);
- a well-formed `POST /cluster/members` names the node itself (409 "already a member"): adding a
  member that does not run would leave a one-node group without quorum, which is not what this run
  is about;
- every answer is appended to RANKQ_ST_LOG as `METHOD PATH-TEMPLATE STATUS`.
"""

from __future__ import annotations

import itertools
import os
import re

import schemathesis

_turn = itertools.count()
_ADDRESS = re.compile(r"^[^\s:]+:\d{1,5}$")


@schemathesis.hook
def before_call(context, case, kwargs):
    turn = next(_turn)
    params = case.path_parameters or {}
    stateful = case.meta is not None and case.meta.phase.name == "stateful"  # keeps its own links
    deletes_queue = case.method.upper() == "DELETE" and case.operation.path.endswith("/queues/{name}")
    if "name" in params and turn % 2 == 0 and not stateful and not deletes_queue:
        params["name"] = "q"
        if "id" in params and turn % 4 == 0:
            ids = [int(i) for i in os.environ["RANKQ_ST_IDS"].split(",")]
            params["id"] = ids[(turn // 4) % len(ids)]
    body = case.body
    if isinstance(body, dict):
        if (
            case.operation.path.endswith("/dequeue")
            and isinstance(body.get("wait"), (int, float))
            and not isinstance(body.get("wait"), bool)
            and body["wait"] > 0.2
        ):
            body["wait"] = 0.2
        if (
            case.operation.path.endswith("/cluster/members")
            and case.method.upper() == "POST"
            and isinstance(body.get("address"), str)
            and _ADDRESS.match(body["address"])
        ):
            body["address"] = os.environ["RANKQ_ST_SELF"]


@schemathesis.hook
def after_call(context, case, response):
    with open(os.environ["RANKQ_ST_LOG"], "a", encoding="utf-8") as fh:
        fh.write(f"{case.method.upper()} {case.operation.path} {response.status_code}\n")
