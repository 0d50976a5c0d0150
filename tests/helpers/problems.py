"""Checking an HTTP answer is the RFC 9457 problem the test expects."""

from __future__ import annotations


def assert_problem(response, status: int, kind: str | None = None) -> dict:
    """`response` (httpx) is problem+json with this status (and kind); its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["detail"] and body["title"]
    if kind:
        assert body["type"].endswith("/" + kind), body
    return body
