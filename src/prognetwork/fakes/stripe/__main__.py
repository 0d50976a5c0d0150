"""`python -m prognetwork.fakes.stripe --host H --port P --api-key sk_test_… --webhook-secret whsec_…
--webhook-url URL [--webhook-url URL …] [--public-url URL]`: serve the Stripe fake.

A bad argument is one line on stderr and exit status 2, so a start-up script fails plainly.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import NoReturn
from urllib.parse import urlsplit

import uvicorn

from prognetwork.fakes.stripe.app import FakeConfig, create_app

EXIT_BAD_ARGUMENTS = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_ARGUMENTS, f"{self.prog}: error: {message}\n")


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"not an http(s) URL: {value!r}")
    return value


def _port(value: str) -> int:
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"not a TCP port (1-65535): {value!r}")
    return int(value)


def _prefixed(prefix: str, what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not value.startswith(prefix) or len(value) <= len(prefix):
            raise argparse.ArgumentTypeError(f"{what} must start with {prefix!r}")
        return value

    return check


def parse(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(prog="python -m prognetwork.fakes.stripe", description="A local Stripe-compatible fake.")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", required=True, type=_port)
    # Test keys only: the fake must never be mistaken for, or handed the credentials of, live Stripe.
    parser.add_argument("--api-key", required=True, type=_prefixed("sk_test_", "--api-key"))
    parser.add_argument("--webhook-secret", required=True, type=_prefixed("whsec_", "--webhook-secret"))
    parser.add_argument("--webhook-url", required=True, action="append", type=_http_url, dest="webhook_urls")
    parser.add_argument("--public-url", type=_http_url, help="default: http://HOST:PORT")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse(sys.argv[1:] if argv is None else argv)
    config = FakeConfig(
        api_key=args.api_key,
        webhook_secret=args.webhook_secret,
        webhook_urls=args.webhook_urls,
        public_url=args.public_url or f"http://{args.host}:{args.port}",
    )
    print(f"stripe fake: http://{args.host}:{args.port} (pages at {config.public_url})", flush=True)
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
    )


if __name__ == "__main__":
    main()
