"""`prog scaffold`: a new service is a package that declares itself, and it runs."""

from __future__ import annotations

import subprocess
import sys

import pytest

import prognetwork
from prognetwork import registry
from prognetwork.scaffold import ScaffoldError, check, package_name, write
from tests.helpers.paths import ROOT

PYPROJECT = ROOT / "pyproject.toml"  # the project's lint rules, wherever the package was written


@pytest.fixture
def packages(tmp_path):
    """A second folder of service packages, seen by the registry for the length of the test."""
    prognetwork.__path__.append(str(tmp_path))
    registry.services.cache_clear()
    yield tmp_path
    prognetwork.__path__.remove(str(tmp_path))
    registry.services.cache_clear()
    for name in [m for m in sys.modules if m.startswith("prognetwork.ledger")]:
        del sys.modules[name]


async def test_a_scaffolded_service_registers_itself_and_serves(packages, serve_app, make_settings):
    files = write("ledger-service", package_name("ledger-service"), 3011, packages)
    assert {f.name for f in files} == {"__init__.py", "settings.py", "runtime.py", "deps.py", "problems.py",
                                       "api.py", "app.py"}
    ruff = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "--config", str(PYPROJECT),
                           str(packages / "ledger")], capture_output=True, text=True)
    assert ruff.returncode == 0, ruff.stdout + ruff.stderr
    spec = registry.service("ledger-service")
    assert (spec.port, spec.ops_port, spec.package) == (3011, 4011, "prognetwork.ledger")
    client = await serve_app(spec.create_app(make_settings("ledger-service")))
    health = await client.get("/health")
    assert health.json()["status"] == "ok" and health.json()["service"] == "ledger-service"
    assert (await client.get("/readiness")).status_code == 200


@pytest.mark.parametrize(("name", "port", "complaint"), [
    ("Ledger", 3011, "lower-case words"),
    ("user-service", 3011, "exists already"),
    ("ledger-service", 3007, "collides"),
    ("ledger-service", 3000 + 1007 - 1000, "collides"),  # its ops port would be user-service's
    ("ledger-service", 80, "between"),
])
def test_scaffold_refuses_what_would_clash(tmp_path, name, port, complaint):
    known = registry.services()
    with pytest.raises(ScaffoldError, match=complaint):
        check(name, package_name(name), port, {p for s in known.values() for p in (s.port, s.ops_port)}, set(known),
              tmp_path)


def test_the_cli_says_what_is_wrong_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "prognetwork", "scaffold", "user-service", "--port", "3011",
                             "--into", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "exists already" in result.stderr
