"""The dashboard in a real headless Chromium against a live 3-node group (and a token-protected node).

Screenshots go to the test's tmp dir and to tests/artifacts/ (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest
from browser import console_errors, start_browser
from selenium.webdriver.common.by import By
from serverproc import Cluster, ServerProcess, wait_for

ARTIFACTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "artifacts")

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    g = Cluster(str(tmp_path_factory.mktemp("ui-group")), 3).start()
    yield g
    g.stop()


@pytest.fixture(scope="module")
def browser():
    driver = start_browser()
    yield driver
    driver.quit()


@pytest.fixture
def shot(browser, tmp_path):
    os.makedirs(ARTIFACTS, exist_ok=True)

    def save(name: str) -> str:
        path = os.path.join(ARTIFACTS, f"dashboard-{name}.png")
        browser.save_screenshot(str(tmp_path / f"{name}.png"))
        browser.save_screenshot(path)
        return path

    return save


def cell(browser, queue: str, column: str) -> str:
    return browser.find_element(By.CSS_SELECTOR, f'#queues tr[data-queue="{queue}"] td.{column}').text


def text(browser, css: str) -> str:
    """An element's text, found afresh (live tables are re-rendered as the feed updates)."""
    return wait_for(lambda: browser.find_element(By.CSS_SELECTOR, css).text or " ", 10, f"text of {css}")


def click(browser, css: str) -> None:
    wait_for(lambda: browser.find_element(By.CSS_SELECTOR, css).click() or True, 10, f"a click on {css}")


def make_queue(url: str, name: str, **settings) -> None:
    r = httpx.post(url + "/api/v1/queues", json={"name": name, **settings}, timeout=10)
    assert r.status_code in (201, 409), r.text


def test_overview_is_live_and_clean(group, browser, shot):
    leader = group.leader()
    make_queue(leader.url, "orders")
    browser.get(leader.url + "/ui")
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, '#queues tr[data-queue="orders"]'), 10, "the queue row")
    wait_for(lambda: "live" == browser.find_element(By.ID, "live").text, 10, "the live feed")
    before = int(cell(browser, "orders", "ready").replace(",", ""))

    with httpx.Client(base_url=group.followers()[0].url, timeout=10) as other:  # another client, another node
        for i in range(3):
            assert (
                other.post("/api/v1/queues/orders/messages", json={"payload": {"n": i}, "priority": 1}).status_code
                == 201
            )
    sent = time.monotonic()
    wait_for(
        lambda: int(cell(browser, "orders", "ready").replace(",", "")) == before + 3, 2.0, "the ready count to change"
    )
    print(f"overview showed the enqueue {time.monotonic() - sent:.2f}s after it was acknowledged")

    members = browser.find_elements(By.CSS_SELECTOR, "#members tbody tr")
    assert len(members) == 3
    assert "leader" in text(browser, "#members")
    assert text(browser, "#cluster-summary").count("\n") >= 4
    wait_for(lambda: cell(browser, "orders", "age") not in ("–", ""), 5, "the oldest-ready age")
    shot("overview")
    assert console_errors(browser) == []


def test_dead_letter_found_and_redriven_from_the_dlq_page(group, browser, shot):
    leader = group.leader()
    make_queue(leader.url, "payments", max_deliveries=1)
    with httpx.Client(base_url=leader.url, timeout=10) as c:
        mid = c.post("/api/v1/queues/payments/messages", json={"payload": {"charge": 42}}).json()["id"]
        keep = c.post("/api/v1/queues/payments/messages", json={"payload": {"charge": 7}}).json()["id"]
        got = c.post("/api/v1/queues/payments/dequeue", json={"max": 1}).json()["messages"][0]
        assert got["id"] == mid
        r = c.post(
            f"/api/v1/queues/payments/messages/{mid}/nack",
            json={"lease_token": got["lease_token"], "error": "card declined"},
        )
        assert r.json()["state"] == "dead"

    browser.get(leader.url + "/ui#/queue/payments")
    row = f'#dlq tr[data-id="{mid}"]'
    wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, row), 10, "the dead letter in the DLQ table")
    assert "card declined" in text(browser, row)
    wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, f'#peek tr[data-id="{keep}"]'),
        10,
        "the ready message in the peek",
    )

    browser.find_element(By.ID, "lookup-id").send_keys(str(mid))
    click(browser, "#lookup-go")
    wait_for(lambda: "dead" in browser.find_element(By.ID, "lookup-result").text, 10, "the looked-up message")
    assert "card declined" in text(browser, "#lookup-result")
    shot("dlq")

    click(browser, row + " input[type=checkbox]")
    wait_for(
        lambda: browser.find_element(By.CSS_SELECTOR, row + " input[type=checkbox]").is_selected(),
        10,
        "the row selected",
    )
    click(browser, "#redrive-selected")
    wait_for(lambda: "Redrove 1" in browser.find_element(By.ID, "banner").text, 10, "the redrive confirmation")
    wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, row), 10, "the dead letter to leave the table")
    assert httpx.get(f"{leader.url}/api/v1/queues/payments/messages/{mid}", timeout=5).json()["state"] == "ready"
    wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, f'#peek tr[data-id="{mid}"]'),
        10,
        "the redriven message in the peek",
    )
    shot("after-redrive")
    # peeking leased nothing
    assert httpx.get(f"{leader.url}/api/v1/queues/payments", timeout=5).json()["counts"]["leased"] == 0
    assert console_errors(browser) == []


def test_the_page_works_against_a_follower(group, browser, shot):
    follower = group.followers()[1]
    leader = group.leader()
    make_queue(leader.url, "emails", max_deliveries=1)
    browser.get(follower.url + "/ui")
    wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, '#queues tr[data-queue="emails"]'),
        10,
        "the queue row on a follower",
    )
    wait_for(lambda: "follower" in browser.find_element(By.ID, "node").text, 10, "the node's role in the header")
    httpx.post(leader.url + "/api/v1/queues/emails/messages", json={"payload": "hi"}, timeout=10)
    wait_for(lambda: cell(browser, "emails", "ready") == "1", 5, "the follower's page to follow the leader's write")

    with httpx.Client(base_url=leader.url, timeout=10) as c:  # two dead letters: one deleted, one redriven
        c.post("/api/v1/queues/emails/messages", json={"payload": "spam"})
        dead = []
        for got in c.post("/api/v1/queues/emails/dequeue", json={"max": 2}).json()["messages"]:
            c.post(f"/api/v1/queues/emails/messages/{got['id']}/nack", json={"lease_token": got["lease_token"]})
            dead.append(got["id"])
    keep, drop = dead
    browser.get(follower.url + "/ui#/queue/emails")
    rows = {mid: f'#dlq tr[data-id="{mid}"]' for mid in dead}
    wait_for(
        lambda: all(browser.find_elements(By.CSS_SELECTOR, r) for r in rows.values()),
        10,
        "the dead letters on the follower's page",
    )
    click(browser, rows[drop] + " input[type=checkbox]")
    wait_for(
        lambda: browser.find_element(By.CSS_SELECTOR, rows[drop] + " input[type=checkbox]").is_selected(),
        10,
        "the row selected",
    )
    click(browser, "#delete-selected")
    wait_for(
        lambda: not browser.find_elements(By.CSS_SELECTOR, rows[drop]), 10, "the deleted dead letter to leave the table"
    )
    assert httpx.get(f"{leader.url}/api/v1/queues/emails/messages/{drop}", timeout=5).status_code == 404
    click(browser, "#redrive-all")
    wait_for(
        lambda: not browser.find_elements(By.CSS_SELECTOR, rows[keep]),
        10,
        "the redriven dead letter to leave the table",
    )
    assert httpx.get(f"{leader.url}/api/v1/queues/emails/messages/{keep}", timeout=5).json()["state"] == "ready"
    shot("follower")
    assert console_errors(browser) == []


def _server_has_scopes() -> bool:
    out = subprocess.run([sys.executable, "-m", "rankq.cli", "server", "--help"], capture_output=True, text=True).stdout
    return "scope" in out.lower()


@pytest.fixture(scope="module")
def protected(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui-auth")
    token_file = root / "token"
    token_file.write_text(os.urandom(16).hex())
    srv = ServerProcess(str(root / "n"), extra=["--api-token-file", str(token_file)]).start()
    srv.token = token_file.read_text()
    yield srv
    srv.stop()


def test_with_a_token_the_page_asks_for_it(protected, browser, shot):
    auth = {"authorization": f"Bearer {protected.token}"}
    r = httpx.post(protected.url + "/api/v1/queues", json={"name": "secret-jobs"}, headers=auth, timeout=10)
    assert r.status_code == 201, r.text
    browser.get(protected.url + "/ui")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    dialog = browser.find_element(By.ID, "token-dialog")
    wait_for(lambda: dialog.get_attribute("open") is not None, 10, "the token prompt")
    assert browser.find_elements(By.CSS_SELECTOR, '#queues tr[data-queue="secret-jobs"]') == []
    shot("token-prompt")

    browser.find_element(By.ID, "token-input").send_keys("wrong")
    browser.find_element(By.ID, "token-save").click()
    wait_for(lambda: dialog.get_attribute("open") is not None, 10, "the prompt to come back for a wrong token")

    browser.find_element(By.ID, "token-input").send_keys(protected.token)
    browser.find_element(By.ID, "token-save").click()
    wait_for(
        lambda: browser.find_elements(By.CSS_SELECTOR, '#queues tr[data-queue="secret-jobs"]'),
        10,
        "the queues after the token",
    )
    assert protected.token not in browser.current_url
    assert browser.execute_script("return sessionStorage.getItem('rankq.token')") == protected.token
    shot("token-accepted")


def test_read_only_tokens_cannot_redrive(tmp_path, browser, shot):
    if not _server_has_scopes():
        pytest.skip("this server has a single full-access token; no token scopes to test")
    full, reader = os.urandom(16).hex(), os.urandom(16).hex()
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{full}\n{reader} produce,consume\n")  # the reader lacks the admin scope
    srv = ServerProcess(str(tmp_path / "n"), extra=["--api-token-file", str(tokens)]).start()
    try:
        with httpx.Client(base_url=srv.url, timeout=10, headers={"authorization": f"Bearer {full}"}) as c:
            assert c.post("/api/v1/queues", json={"name": "ro", "max_deliveries": 1}).status_code == 201
            mid = c.post("/api/v1/queues/ro/messages", json={"payload": 1}).json()["id"]
            got = c.post("/api/v1/queues/ro/dequeue", json={"max": 1}).json()["messages"][0]
            c.post(f"/api/v1/queues/ro/messages/{mid}/nack", json={"lease_token": got["lease_token"]})
        browser.get(srv.url + "/ui")
        browser.execute_script("sessionStorage.setItem('rankq.token', arguments[0])", reader)
        browser.get(srv.url + "/ui#/queue/ro")
        browser.refresh()
        row = f'#dlq tr[data-id="{mid}"]'
        wait_for(
            lambda: browser.find_elements(By.CSS_SELECTOR, row), 10, "the dead letter, readable with a read-only token"
        )
        click(browser, row + " input[type=checkbox]")
        click(browser, "#redrive-selected")
        wait_for(lambda: "read-only" in browser.find_element(By.ID, "banner").text, 10, "the read-only message")
        assert not browser.find_element(By.ID, "redrive-selected").is_enabled()
        assert not browser.find_element(By.ID, "delete-selected").is_enabled()
        shot("read-only")
        state = httpx.get(
            f"{srv.url}/api/v1/queues/ro/messages/{mid}", headers={"authorization": f"Bearer {full}"}, timeout=5
        )
        assert state.json()["state"] == "dead"
    finally:
        srv.stop()
