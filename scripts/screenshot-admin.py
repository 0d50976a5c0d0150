#!/usr/bin/env python3
"""Take the README's picture of the admin console from a running platform.

    prog up                                                   # in one terminal
    prog users create --email admin@example.com --role admin  # once
    .venv/bin/python scripts/screenshot-admin.py --email admin@example.com --password '…'

Signs in through the real sign-in form with Debian's chromium under Playwright (installed by
scripts/install-browser.sh when missing), opens PAGE (default: the Users page) and writes a PNG
(default: docs/images/admin-console.png). ADMIN_EMAIL and ADMIN_PASSWORD may stand for the options.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000", help="the console (default: %(default)s)")
    parser.add_argument(
        "--email", default=os.environ.get("ADMIN_EMAIL"), help="an admin's or operator's email"
    )
    parser.add_argument("--password", default=os.environ.get("ADMIN_PASSWORD"), help="their password")
    parser.add_argument("--page", default="/users", help="the page to take (default: %(default)s)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=720)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "images" / "admin-console.png")
    args = parser.parse_args()
    if not args.email or not args.password:
        parser.error("--email and --password (or ADMIN_EMAIL and ADMIN_PASSWORD) are required")
    if not CHROMIUM.exists():
        subprocess.run(["sh", str(ROOT / "scripts" / "install-browser.sh")], check=True)  # noqa: S603,S607 - our own script

    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.goto(f"{args.url}/login")
            page.get_by_label("Email").fill(args.email)
            page.get_by_label("Password").fill(args.password)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("navigation", name="Main")).to_be_visible()
            page.goto(args.url + args.page)
            page.wait_for_load_state("load")
            args.output.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.output))
        finally:
            browser.close()
    print(f"screenshot of {args.url}{args.page}: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
