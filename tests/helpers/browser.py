"""A real browser for the admin console's tests: Debian's chromium driven by Playwright, and axe-core.

Playwright's own browser download does not work everywhere, so the browser is Debian's chromium
(scripts/install-browser.sh installs it when /usr/bin/chromium is missing). axe-core comes from
the npm registry, checked against the integrity npm publishes, and is kept in the temporary
folder (outside the work tree) so a second run needs no network. It is injected through the DevTools protocol (an init script), which
the console's Content-Security-Policy does not apply to — the pages themselves stay under it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from tests.helpers.paths import ROOT

CHROMIUM = Path("/usr/bin/chromium")
AXE_VERSION = "4.14.1"
CACHE = Path(tempfile.gettempdir()) / "prognetwork-axe-core"
PHONE = {"width": 390, "height": 844}  # a common phone's CSS viewport
DESKTOP = {"width": 1280, "height": 900}


def ensure_chromium() -> Path:
    """Debian's chromium, installed by the project's script when it is missing."""
    if not CHROMIUM.exists():
        result = subprocess.run(["sh", str(ROOT / "scripts" / "install-browser.sh")], capture_output=True, text=True)
        assert CHROMIUM.exists(), f"scripts/install-browser.sh did not install chromium:\n{result.stdout}\n{result.stderr}"
    return CHROMIUM


def launch(playwright: Any) -> Any:
    """A headless chromium (Debian's) under Playwright."""
    return playwright.chromium.launch(executable_path=str(ensure_chromium()), headless=True)


def axe_source() -> str:
    """axe-core's browser build (axe.min.js), fetched once from the npm registry and verified."""
    cached = CACHE / AXE_VERSION / "axe.min.js"
    if cached.exists():
        return cached.read_text()
    npm = shutil.which("npm")
    assert npm, "npm is needed to fetch axe-core for the accessibility checks (Debian: apt-get install npm)"
    package = f"axe-core@{AXE_VERSION}"
    integrity = subprocess.run([npm, "view", package, "dist.integrity"], capture_output=True, text=True, check=True,
                               timeout=120).stdout.strip()
    algorithm, _, expected = integrity.partition("-")
    assert algorithm == "sha512", f"{package}: unexpected integrity {integrity!r}"
    with tempfile.TemporaryDirectory() as work:
        name = subprocess.run([npm, "pack", "--silent", package], capture_output=True, text=True, check=True,
                              cwd=work, timeout=300).stdout.strip().splitlines()[-1]
        tarball = Path(work) / name
        actual = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        assert actual == expected, f"{package}: the tarball's sha512 is not the one the registry publishes"
        with tarfile.open(tarball) as archive:
            member = archive.extractfile("package/axe.min.js")
            assert member is not None
            source = member.read().decode()
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_text(source)
    return source


def with_axe(context: Any) -> None:
    """Make axe-core available (as `window.axe`) on every page this browser context opens."""
    context.add_init_script(script=axe_source())


def axe_violations(page: Any, impacts: tuple[str, ...] = ("critical",)) -> list[dict]:
    """The page's axe-core violations of these impacts: [{id, impact, help, targets}]."""
    found = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations")
    return [
        {"id": v["id"], "impact": v["impact"], "help": v["help"],
         "targets": [node["target"] for node in v["nodes"]][:5]}
        for v in found if v["impact"] in impacts
    ]


def describe(violations: list[dict]) -> str:
    return json.dumps(violations, indent=2)


def screenshot(page: Any, directory: Path, name: str) -> Path:
    """A full-page PNG of what the page shows now, kept as a test artifact."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
