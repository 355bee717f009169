"""/docs and /redoc load every asset from the server itself (they work without internet access)."""

from __future__ import annotations

import re

import httpx


def test_docs_and_redoc_use_only_local_assets(shared_server):
    for page in ("/docs", "/redoc"):
        html = httpx.get(shared_server.url + page, timeout=5).text
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs, page
        for ref in refs:
            assert ref.startswith("/"), f"{page} loads {ref} from elsewhere"
            r = httpx.get(shared_server.url + ref, timeout=10)
            assert r.status_code == 200 and len(r.content) > 1000, ref
        assert "cdn" not in html.lower() and "fonts.googleapis" not in html


def test_ui_is_served_and_packaged(shared_server):
    page = httpx.get(shared_server.url + "/ui", timeout=5)
    assert page.status_code == 200 and "RankQ dashboard" in page.text
    for ref in re.findall(r'(?:src|href)="(/ui/[^"]+)"', page.text):
        assert httpx.get(shared_server.url + ref, timeout=5).status_code == 200
    assert httpx.get(shared_server.url + "/ui/static/nope.js", timeout=5).status_code == 404


def test_peek_refuses_bad_limits_and_unknown_queues(shared_server):
    assert httpx.get(shared_server.url + "/api/v1/queues/nope/peek", timeout=5).status_code == 404
    httpx.post(shared_server.url + "/api/v1/queues", json={"name": "peeked"}, timeout=5)
    r = httpx.get(shared_server.url + "/api/v1/queues/peeked/peek?limit=0", timeout=5)
    assert r.status_code == 422 and "limit" in r.json()["detail"]
    assert httpx.get(shared_server.url + "/api/v1/queues/peeked/peek?limit=abc", timeout=5).status_code == 422
