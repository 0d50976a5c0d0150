"""The development Stripe fake (`python -m prognetwork.fakes.stripe`) as a real process for tests.

`running_stripe_fake` starts it on a free port, waits until `/_fake/health` answers, and stops it
on exit; `StripeFake` wraps its control endpoints (`/_fake/...`) and its hosted checkout page, so
a test can drive the cases real Stripe makes hard to reach: declined payments, renewals that fail,
webhooks held back, resent or delivered out of order, and API outages.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from prognetwork.kit.process import wait_ready
from tests.helpers.paths import ROOT
from tests.helpers.ports import free_port

START_TIMEOUT_SECONDS = 30.0


@dataclass
class StripeFake:
    url: str  # give this to StripeClient(base_addresses={"api": url})
    api_key: str
    webhook_secret: str

    def _control(self, method: str, path: str, json: dict | None = None) -> httpx.Response:
        response = httpx.request(method, f"{self.url}{path}", json=json, timeout=10)
        if response.is_error:
            raise AssertionError(f"{method} {path} answered {response.status_code}: {response.text}")
        return response

    def events(self) -> list[dict]:
        """Every event, oldest first, as delivered plus `delivery_status` ("held", "pending",
        "delivered" or "failed", over all webhook URLs) and `endpoint_status` ({url: status})."""
        return self._control("GET", "/_fake/events").json()["data"]

    def deliveries(self) -> list[dict]:
        """Every delivery attempt, oldest first: `{event_id, type, url, attempt, status_code|None,
        error|None, at}` (`at` in Unix seconds)."""
        return self._control("GET", "/_fake/deliveries").json()["data"]

    def resend(self, event_id: str) -> None:
        self._control("POST", f"/_fake/events/{event_id}/resend")

    def pause(self) -> None:
        self._control("POST", "/_fake/webhooks/pause")

    def resume(self, order: str = "fifo") -> None:
        self._control("POST", "/_fake/webhooks/resume", {"order": order})

    def pay(self, checkout_url: str) -> httpx.Response:
        """Submit the hosted checkout page as paid; the 303 to success_url is returned, not followed."""
        return httpx.post(checkout_url, data={"outcome": "paid"}, follow_redirects=False, timeout=10)

    def decline(self, checkout_url: str) -> httpx.Response:
        return httpx.post(checkout_url, data={"outcome": "declined"}, follow_redirects=False, timeout=10)

    def fail_payment(self, subscription_id: str) -> None:
        """A renewal fails: a new open invoice, the subscription past_due, and their webhooks."""
        self._control("POST", f"/_fake/subscriptions/{subscription_id}/fail-payment")

    def set_status(self, subscription_id: str, status: str) -> None:
        self._control("POST", f"/_fake/subscriptions/{subscription_id}/status", {"status": status})

    def outage(self, status: int = 503) -> None:
        """Every /v1 call answers `status` with a Stripe api_error until `end_outage`."""
        self._control("POST", "/_fake/outage", {"status": status})

    def end_outage(self) -> None:
        self._control("DELETE", "/_fake/outage")


def fake_command(
    port: int, api_key: str, webhook_secret: str, webhook_urls: list[str], host: str = "127.0.0.1"
) -> list[str]:
    command = [sys.executable, "-m", "prognetwork.fakes.stripe", "--host", host, "--port", str(port)]
    command += ["--api-key", api_key, "--webhook-secret", webhook_secret]
    for url in webhook_urls:
        command += ["--webhook-url", url]
    return command


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@contextmanager
def running_stripe_fake(
    webhook_urls: list[str],
    log_dir: Path,
    *,
    api_key: str = "sk_test_fake",
    webhook_secret: str = "whsec_test_fake",
) -> Iterator[StripeFake]:
    """The fake as a process of its own, ready when this yields; its log is surfaced if it fails to
    start or the block raises."""
    port = free_port()
    log_path = log_dir / f"stripe-fake-{port}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            fake_command(port, api_key, webhook_secret, webhook_urls),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
    fake = StripeFake(f"http://127.0.0.1:{port}", api_key, webhook_secret)
    try:
        wait_ready({"the Stripe fake": (process, fake.url)}, START_TIMEOUT_SECONDS, path="/_fake/health")
        yield fake
    except Exception as exc:
        _stop(process)
        exc.add_note(f"--- stripe fake log ({log_path}) ---\n{log_path.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        _stop(process)
