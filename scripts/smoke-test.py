#!/usr/bin/env python3
"""Post-deploy smoke test: the README's flow through the gateway's public URL.

    scripts/smoke-test.py https://api.staging.prognetwork.com      # SMOKE_EMAIL, SMOKE_PASSWORD set
    scripts/smoke-test.py http://127.0.0.1:8000                    # against `prog up`

With SMOKE_EMAIL and SMOKE_PASSWORD (a verified account kept for this, as in staging and
production, whose mail goes to real inboxes) it logs in as that account. Without them it
registers a new account and verifies it with the link from the development outbox
(`/api/v1/dev/outbox`, which only development serves), then logs in. Either way it reads
/api/v1/users/me with the access token, signs out and checks the token stops working at once.

One line per step; on the first failure one line saying what failed, and exit status 1.
Standard library only: it runs on any machine with Python 3.9+, the project installed or not.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request

TIMEOUT_SECONDS = 15
OUTBOX_DEADLINE_SECONDS = 30


class SmokeTestFailed(Exception):
    pass


def call(
    base: str, method: str, path: str, body: dict | None = None, token: str | None = None
) -> tuple[int, object]:
    headers = {"accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    if token:
        headers["authorization"] = f"Bearer {token}"
    # main() admits only http:// and https:// base URLs.
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:  # noqa: S310
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        raise SmokeTestFailed(
            f"{method} {base}{path}: no answer ({getattr(error, 'reason', error)})"
        ) from None
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")[:200]


def expect(status: int, wanted: int, what: str, answer: object) -> None:
    if status != wanted:
        detail = answer.get("detail") if isinstance(answer, dict) else answer
        raise SmokeTestFailed(f"{what}: HTTP {status} (expected {wanted}): {detail}")


def step(text: str) -> None:
    print(f"smoke-test: {text}", flush=True)


def new_verified_account(base: str) -> tuple[str, str]:
    email = f"smoke-{secrets.token_hex(6)}@example.com"
    password = secrets.token_urlsafe(18)
    status, answer = call(
        base, "POST", "/api/v1/auth/register", {"email": email, "password": password, "name": "Smoke"}
    )
    expect(status, 202, "register", answer)
    step(f"registered {email}")
    deadline = time.monotonic() + OUTBOX_DEADLINE_SECONDS
    while True:
        status, messages = call(base, "GET", f"/api/v1/dev/outbox?to={email}")
        if status == 404:
            raise SmokeTestFailed(
                "no development outbox here (staging and production have none): "
                "set SMOKE_EMAIL and SMOKE_PASSWORD to a verified account"
            )
        expect(status, 200, "read the development outbox", messages)
        links = [m for m in messages if isinstance(m, dict) and re.search(r"token=[\w-]+", m.get("text", ""))]
        if links:
            break
        if time.monotonic() > deadline:
            raise SmokeTestFailed(f"no verification email for {email} within {OUTBOX_DEADLINE_SECONDS} s")
        time.sleep(0.5)
    token = re.search(r"token=([\w-]+)", links[0]["text"])[1]
    status, answer = call(base, "POST", "/api/v1/auth/verify-email", {"token": token, "password": password})
    expect(status, 200, "verify the email address", answer)
    step("verified the address with the emailed link")
    return email, password


def run(base: str, email: str | None, password: str | None) -> None:
    if not (email and password):
        email, password = new_verified_account(base)
    status, tokens = call(base, "POST", "/api/v1/auth/login", {"email": email, "password": password})
    expect(status, 200, f"log in as {email}", tokens)
    assert isinstance(tokens, dict)
    step("logged in")
    status, me = call(base, "GET", "/api/v1/users/me", token=tokens["access_token"])
    expect(status, 200, "GET /api/v1/users/me", me)
    if not isinstance(me, dict) or me.get("email", "").lower() != email.lower():
        raise SmokeTestFailed(f"/api/v1/users/me answered someone else: {me}")
    step(f"/api/v1/users/me is {me['email']}")
    status, answer = call(
        base,
        "POST",
        "/api/v1/auth/logout",
        {"refresh_token": tokens["refresh_token"]},
        token=tokens["access_token"],
    )
    expect(status, 204, "log out", answer)
    status, answer = call(base, "GET", "/api/v1/users/me", token=tokens["access_token"])
    expect(status, 401, "the access token after logout", answer)
    step("signed out: the access token is refused")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not re.match(r"https?://[^/\s]+$", argv[1].rstrip("/")):
        print(
            "smoke-test: give the gateway's base URL, e.g. scripts/smoke-test.py https://api.example.com",
            file=sys.stderr,
        )
        return 2
    base = argv[1].rstrip("/")
    try:
        run(base, os.environ.get("SMOKE_EMAIL"), os.environ.get("SMOKE_PASSWORD"))
    except SmokeTestFailed as failure:
        print(f"smoke-test: FAILED: {failure}", file=sys.stderr)
        return 1
    step(f"passed against {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
