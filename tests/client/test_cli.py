"""The `rankq` command against a real server process: output people read, JSON scripts read, exit codes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

from rankq.cli import main


@pytest.fixture
def rankq(server):
    """Run `rankq --url <server> ARGS...` in-process; returns the click Result."""
    runner = CliRunner(env={"RANKQ_URL": None, "COLUMNS": "160"})

    def run(*args: str, input: str | None = None, url: str | None = None):
        return runner.invoke(main, ["--url", url or server.url, *args], input=input, catch_exceptions=False)

    return run


def ok(result) -> str:
    assert result.exit_code == 0, f"exit {result.exit_code}; stdout={result.stdout!r} stderr={result.stderr!r}"
    return result.stdout


def as_json(result):
    return json.loads(ok(result))


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


# ---- queues -----------------------------------------------------------------------------------------


def test_queue_create_list_show_update_delete(rankq, qname):
    out = ok(
        rankq(
            "queue",
            "create",
            qname,
            "--policy",
            "weighted",
            "--weights",
            "1=30,2=25,3=20",
            "--visibility-timeout",
            "45",
            "--max-deliveries",
            "3",
            "--max-length",
            "10",
            "--fair-groups",
            "--group-max-inflight",
            "2",
            "--no-dead-letter",
            "--retention",
            "60",
        )
    )
    assert out.strip() == f"created queue {qname} (policy weighted)"

    info = as_json(rankq("-o", "json", "queue", "show", qname))
    assert info["settings"] == {
        **info["settings"],
        "policy": "weighted",
        "weights": {"1": 30, "2": 25, "3": 20},
        "visibility_timeout": 45.0,
        "max_deliveries": 3,
        "max_length": 10,
        "fair_groups": True,
        "group_max_inflight": 2,
        "dead_letter": False,
        "retention": 60.0,
    }

    ok(rankq("send", qname, "1"))
    listing = ok(rankq("queue", "list"))
    header = next(line for line in listing.splitlines() if "name" in line)
    assert header.split() == ["name", "policy", "ready", "delayed", "waiting", "leased", "dead"]
    row = next(line for line in listing.splitlines() if qname in line)
    assert row.split() == [qname, "weighted", "1", "0", "0", "0", "0"]

    shown = ok(rankq("queue", "show", qname))
    assert "max_deliveries" in shown and "visibility_timeout" in shown and "45.0" in shown

    out = ok(rankq("queue", "update", qname, "--max-length", "none", "--no-fair-groups"))
    assert out.strip() == f"updated queue {qname}: max_length=none, fair_groups=false"
    settings = as_json(rankq("-o", "json", "queue", "show", qname))["settings"]
    assert (settings["max_length"], settings["fair_groups"], settings["max_deliveries"]) == (None, False, 3)

    assert ok(rankq("queue", "delete", qname, "--yes")).strip() == f"deleted queue {qname}"
    assert qname not in [q["name"] for q in as_json(rankq("-o", "json", "queue", "list"))]


def test_queue_delete_asks_first(rankq, qname):
    ok(rankq("queue", "create", qname))
    refused = rankq("queue", "delete", qname, input="n\n")
    assert refused.exit_code == 1
    ok(rankq("queue", "show", qname))  # still there
    ok(rankq("queue", "delete", qname, input="y\n"))
    assert rankq("queue", "show", qname).exit_code == 1


def test_queue_update_needs_a_change(rankq, qname):
    ok(rankq("queue", "create", qname))
    res = rankq("queue", "update", qname)
    assert res.exit_code == 2 and "nothing to change" in res.stderr


# ---- send / receive / ack / nack / message --------------------------------------------------------------


def test_send_receive_ack_with_result(rankq, qname):
    ok(rankq("queue", "create", qname))
    sent = as_json(
        rankq(
            "-o",
            "json",
            "send",
            qname,
            '{"to": "a@example.com"}',
            "--priority",
            "1",
            "--group",
            "g1",
            "--header",
            "trace=abc",
            "--header",
            "k=v=w",
        )
    )
    [msg] = as_json(rankq("-o", "json", "receive", qname, "--max", "5"))
    assert msg["id"] == sent["id"] and msg["payload"] == {"to": "a@example.com"}
    assert (msg["priority"], msg["group"], msg["deliveries"]) == (1, "g1", 1)
    assert msg["headers"] == {"trace": "abc", "k": "v=w"}

    out = ok(rankq("ack", qname, str(msg["id"]), msg["lease_token"], "--result", '{"ok": true}'))
    assert out.strip() == f"acked message {msg['id']}"
    status = as_json(rankq("-o", "json", "message", qname, str(msg["id"])))
    assert (status["state"], status["result"]) == ("acked", {"ok": True})

    again = rankq("ack", qname, str(msg["id"]), msg["lease_token"])
    assert again.exit_code == 1
    assert again.stderr.startswith("error: 409: ") and again.stderr.count("\n") == 1


def test_receive_table_shows_ids_tokens_and_payloads(rankq, qname):
    ok(rankq("queue", "create", qname))
    ok(rankq("send", qname, "hello world"))  # not JSON: sent as a string
    ok(rankq("send", qname, "[1, 2]", "--priority", "2"))
    out = ok(rankq("receive", qname, "--max", "10"))
    lines = out.splitlines()
    header = next(line for line in lines if "lease token" in line)
    assert header.split() == ["id", "priority", "group", "deliveries", "lease", "token", "payload"]
    rows = [line.split(maxsplit=5) for line in lines if line.strip() and line.split()[0].isdigit()]
    assert [(r[1], r[2], r[3], r[5].strip()) for r in rows] == [
        ("2", "default", "1", "[1, 2]"),
        ("3", "default", "1", '"hello world"'),
    ]
    assert all(len(r[4]) >= 16 for r in rows)  # the lease token, whole


def test_receive_nothing_and_receive_with_ack(rankq, qname):
    ok(rankq("queue", "create", qname))
    empty = rankq("receive", qname)
    assert empty.exit_code == 0 and empty.stdout == "" and "no messages" in empty.stderr
    assert as_json(rankq("-o", "json", "receive", qname, "--wait", "0.2")) == []

    ok(rankq("send", qname, "a"))
    ok(rankq("send", qname, "b"))
    got = as_json(rankq("-o", "json", "receive", qname, "--max", "5", "--ack"))
    assert [(m["payload"], m["acked"]) for m in got] == [("a", True), ("b", True)]
    counts = as_json(rankq("-o", "json", "queue", "show", qname))["counts"]
    assert (counts["ready"], counts["leased"]) == (0, 0)


def test_send_raw_keeps_json_looking_text_a_string(rankq, qname):
    ok(rankq("queue", "create", qname))
    ok(rankq("send", qname, "123", "--raw"))
    ok(rankq("send", qname, "123"))
    got = as_json(rankq("-o", "json", "receive", qname, "--max", "2", "--ack"))
    assert [m["payload"] for m in got] == ["123", 123]


def test_send_lines_from_stdin_in_batches(rankq, qname):
    ok(rankq("queue", "create", qname))
    lines = [json.dumps({"n": i}) for i in range(250)] + ["", "plain text"]
    out = ok(rankq("send", qname, "-", "--priority", "2", input="\n".join(lines) + "\n"))
    assert out.startswith("enqueued 251 messages (ids ")
    info = as_json(rankq("-o", "json", "queue", "show", qname))
    assert info["counts"]["ready"] == 251
    got = as_json(rankq("-o", "json", "receive", qname, "--max", "1000", "--ack"))
    assert [m["payload"] for m in got] == [{"n": i} for i in range(250)] + ["plain text"]
    assert {m["priority"] for m in got} == {2}


def test_send_dedup_key(rankq, qname):
    ok(rankq("queue", "create", qname))
    first = as_json(rankq("-o", "json", "send", qname, "x", "--dedup-key", "once"))
    again = ok(rankq("send", qname, "x", "--dedup-key", "once"))
    assert f"message {first['id']} (duplicate" in again
    res = rankq("send", qname, "-", "--dedup-key", "k", input="1\n")
    assert res.exit_code == 2 and "--dedup-key" in res.stderr


def test_nack_redelivers_and_message_shows_status(rankq, qname):
    ok(rankq("queue", "create", qname))
    ok(rankq("send", qname, "job"))
    [msg] = as_json(rankq("-o", "json", "receive", qname))
    out = ok(rankq("nack", qname, str(msg["id"]), msg["lease_token"], "--delay", "0", "--error", "boom"))
    assert out.strip() == f"message {msg['id']} is ready"
    [again] = as_json(rankq("-o", "json", "receive", qname))
    assert (again["id"], again["deliveries"]) == (msg["id"], 2)

    shown = ok(rankq("message", qname, str(msg["id"])))
    fields = dict(line.strip().split(maxsplit=1) for line in shown.splitlines()[2:] if len(line.split()) >= 2)
    assert fields["state"] == "leased" and fields["last_error"] == "boom" and fields["deliveries"] == "2"
    out = ok(rankq("nack", qname, str(msg["id"]), again["lease_token"], "--delay", "600"))
    assert out.startswith(f"message {msg['id']} is delayed until 20")


# ---- dead letters -----------------------------------------------------------------------------------


def test_dlq_list_and_redrive(rankq, qname):
    ok(rankq("queue", "create", qname, "--max-deliveries", "1"))
    ok(rankq("send", qname, "-", input="a\nb\nc\n"))
    for msg in as_json(rankq("-o", "json", "receive", qname, "--max", "3")):
        ok(rankq("nack", qname, str(msg["id"]), msg["lease_token"], "--error", "failed " + msg["payload"]))

    dead = as_json(rankq("-o", "json", "dlq", "list", qname))
    assert [(m["payload"], m["last_error"]) for m in dead] == [("a", "failed a"), ("b", "failed b"), ("c", "failed c")]
    page = rankq("dlq", "list", qname, "--limit", "2")
    assert f"--after {dead[1]['id']}" in page.stderr
    assert "failed a" in ok(page) and "failed c" not in page.stdout

    out = ok(rankq("dlq", "redrive", qname, str(dead[0]["id"])))
    assert out.strip() == f"redriven 1 message(s): {dead[0]['id']}"
    out = ok(rankq("dlq", "redrive", qname, "--all"))
    assert out.strip() == f"redriven 2 message(s): {dead[1]['id']}, {dead[2]['id']}"
    assert "no dead letters" in rankq("dlq", "list", qname).stderr
    assert as_json(rankq("-o", "json", "queue", "show", qname))["counts"]["ready"] == 3


def test_dlq_redrive_needs_ids_or_all(rankq, qname):
    ok(rankq("queue", "create", qname))
    for args in ([], ["1", "--all"]):
        res = rankq("dlq", "redrive", qname, *args)
        assert res.exit_code == 2 and "--all" in res.stderr


# ---- errors -----------------------------------------------------------------------------------------


def test_api_errors_are_one_line_and_exit_1(rankq):
    res = rankq("queue", "show", "missing-queue")
    assert res.exit_code == 1
    assert res.stderr == "error: 404: queue 'missing-queue' not found\n"
    assert res.stdout == ""


def test_unreachable_server_is_a_clear_error(rankq):
    res = rankq("queue", "list", url=closed_port_url())
    assert res.exit_code == 1
    assert res.stderr.startswith("error: cannot reach http://127.0.0.1:") and res.stderr.count("\n") == 1


def test_usage_errors_exit_2(rankq, qname):
    assert rankq("--url", "ftp://example", "queue", "list").exit_code == 2
    assert rankq("queue", "create", qname, "--weights", "1:30").exit_code == 2
    assert rankq("send", qname, "x", "--header", "novalue").exit_code == 2
    assert rankq("receive").exit_code == 2


def test_the_installed_command_reports_errors_with_exit_status(server):
    env = {**os.environ, "RANKQ_URL": server.url}
    proc = subprocess.run(
        [sys.executable, "-m", "rankq.cli", "message", "nope", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 1
    assert proc.stderr == "error: 404: queue 'nope' not found\n"
    proc = subprocess.run(
        [sys.executable, "-m", "rankq.cli", "-o", "json", "queue", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and isinstance(json.loads(proc.stdout), list)


def test_help_lists_the_commands(rankq):
    out = ok(rankq("--help"))
    for command in ("queue", "send", "receive", "ack", "nack", "message", "dlq", "server"):
        assert f"  {command} " in out


# ---- narrow terminals -------------------------------------------------------------------------------


@pytest.fixture
def rankq80(server):
    """`rankq` in an 80-column terminal."""
    runner = CliRunner(env={"RANKQ_URL": None, "COLUMNS": "80"})

    def run(*args: str):
        return runner.invoke(main, ["--url", server.url, *args], catch_exceptions=False)

    return run


def test_tables_fit_80_columns_and_keep_every_column(rankq80, qname, server):
    ok(rankq80("queue", "create", qname))
    ok(rankq80("send", qname, '{"to": "someone@example.com", "subject": "a fairly long subject line"}'))
    out = ok(rankq80("receive", qname, "--ack"))
    assert max(len(line) for line in out.splitlines()) <= 80, out
    header = next(line for line in out.splitlines() if "deliveries" in line)
    assert header.split() == ["id", "priority", "group", "deliveries", "acked", "payload"]
    assert any(line.split()[4:5] == ["yes"] for line in out.splitlines() if line.split()[:1][0:1] != []), out

    out = ok(rankq80("cluster", "status"))
    assert max(len(line) for line in out.splitlines()) <= 80, out
    address = f"127.0.0.1:{server.raft_port}"
    assert address in out and server.url in out, out  # whole, not cut
    header = next(line for line in out.splitlines() if "role" in line)
    assert header.split() == ["address", "role", "health", "match", "lag", "http"]


# ---- task commands ------------------------------------------------------------------------------------


def test_extend_set_priority_and_cancel(rankq, qname):
    ok(rankq("queue", "create", qname))
    first = as_json(rankq("-o", "json", "send", qname, "a"))["id"]
    second = as_json(rankq("-o", "json", "send", qname, "b", "--delay", "60"))["id"]
    out = ok(rankq("set-priority", qname, str(second), "0"))
    assert out.strip() == f"message {second} has priority 0"
    assert as_json(rankq("-o", "json", "message", qname, str(second)))["priority"] == 0
    assert ok(rankq("cancel", qname, str(second))).strip() == f"cancelled message {second}"
    assert rankq("message", qname, str(second)).exit_code == 1  # gone
    [msg] = as_json(rankq("-o", "json", "receive", qname, "--visibility-timeout", "5"))
    extended = as_json(
        rankq("-o", "json", "extend", qname, str(first), msg["lease_token"], "--visibility-timeout", "600")
    )
    assert extended["lease_expires_at"] > msg["lease_expires_at"]
    assert ok(rankq("extend", qname, str(first), msg["lease_token"])).startswith(f"message {first} is leased until ")
    stale = rankq("extend", qname, str(first), "0" * 24)
    assert stale.exit_code == 1 and "409" in stale.stderr


def test_send_with_dependencies_and_ttl(rankq, qname):
    ok(rankq("queue", "create", qname))
    parent = as_json(rankq("-o", "json", "send", qname, "parent"))["id"]
    child = as_json(
        rankq(
            "-o",
            "json",
            "send",
            qname,
            "child",
            "--depends-on",
            str(parent),
            "--depends-on",
            f"{qname}/{parent}",
            "--ttl",
            "600",
        )
    )["id"]
    status = as_json(rankq("-o", "json", "message", qname, str(child)))
    assert status["state"] == "waiting" and status["expires_at"]
    assert status["depends_on"] == [{"id": parent, "queue": qname}]  # the same message named twice counts once
    bad = rankq("send", qname, "x", "--depends-on", "a/b")
    assert bad.exit_code == 2 and "ID or QUEUE/ID" in bad.stderr


def test_paced_redrive_status_and_stop(rankq, qname):
    ok(rankq("queue", "create", qname))
    for i in range(20):
        ok(rankq("send", qname, str(i)))
    for msg in as_json(rankq("-o", "json", "receive", qname, "--max", "20")):
        ok(rankq("nack", qname, str(msg["id"]), msg["lease_token"], "--dead"))
    out = ok(rankq("dlq", "redrive", qname, "--all", "--rate", "5"))
    assert out.startswith(f"redrive of {qname}: running, ") and "at 5/s" in out
    again = rankq("dlq", "redrive", qname, "--all", "--rate", "5")
    assert again.exit_code == 1 and "409" in again.stderr
    status = as_json(rankq("-o", "json", "dlq", "redrive-status", qname))
    assert status["total"] == 20 and status["rate"] == 5
    stopped = as_json(rankq("-o", "json", "dlq", "redrive-stop", qname))
    assert stopped["state"] == "stopped"
    assert ok(rankq("dlq", "redrive-status", qname)).startswith(f"redrive of {qname}: stopped, ")
    assert rankq("dlq", "redrive", qname, "--all", "--rate", "0").exit_code == 2
