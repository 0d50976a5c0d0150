"""`prog scaffold`: a new service package in the house shape (see CONTRIBUTING.md).

It writes the package only. Its deploy entries (Docker target, compose service, Kubernetes
workload, scrape job) are declarative and listed at the end; `tests/deploy/test_service_registry.py`
fails until each exists, so none is forgotten.
"""

from __future__ import annotations

import re
from pathlib import Path

NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PACKAGE = re.compile(r"^[a-z][a-z0-9_]*$")
MIN_PORT, MAX_PORT = 1024, 64535  # the ops port (port + 1000) must fit too


class ScaffoldError(ValueError):
    """What is wrong with the request, in one line that says how to fix it."""


def package_name(service: str) -> str:
    """`billing-service` → `billing`: the short import name the registry maps to the service."""
    return re.sub(r"-(service|client)$", "", service).replace("-", "_")


def check(
    service: str, package: str, port: int, taken_ports: set[int], taken_names: set[str], into: Path
) -> None:
    if not NAME.match(service):
        raise ScaffoldError(
            f"service name {service!r} must be lower-case words joined by '-' (e.g. billing-service)"
        )
    if not PACKAGE.match(package):
        raise ScaffoldError(f"package name {package!r} must be a Python identifier in lower case")
    if service in taken_names:
        raise ScaffoldError(f"a service called {service} exists already")
    if not MIN_PORT <= port <= MAX_PORT:
        raise ScaffoldError(f"port {port} must be between {MIN_PORT} and {MAX_PORT}")
    clash = {port, port + 1000} & taken_ports
    if clash:
        raise ScaffoldError(
            f"port {port} (ops port {port + 1000}) collides with a registered service's {sorted(clash)}"
        )
    if (into / package).exists():
        raise ScaffoldError(f"{into / package} exists already; choose another --package")


def write(service: str, package: str, port: int, into: Path) -> list[Path]:
    """Write the package; the files written."""
    title = service.replace("-", " ")
    cls = "".join(part.title() for part in package.split("_")) + "Settings"
    values = {"service": service, "package": package, "port": port, "title": title, "settings": cls}
    directory = into / package
    directory.mkdir(parents=True)
    written = []
    for filename, template in TEMPLATES.items():
        path = directory / filename
        path.write_text(_sorted_imports(template.format(**values).lstrip("\n")))
        written.append(path)
    return written


def _sorted_imports(text: str) -> str:
    """Each run of `from prognetwork…` lines in isort's order, whatever the package is called."""
    lines, out = text.splitlines(keepends=True), []
    run: list[str] = []
    for line in [*lines, ""]:
        if line.startswith("from prognetwork"):
            run.append(line)
            continue
        out += sorted(run, key=lambda s: s.split(" import ")[0])
        run = []
        out.append(line)
    return "".join(out)


def deploy_checklist(service: str, port: int) -> list[str]:
    return [
        f"deploy/docker/Dockerfile: a target `{service}` running `prog serve {service}` (copy another service's)",
        f"deploy/docker/compose.yaml: a service `{service}` (PORT {port}, OPS_PORT {port + 1000}, its dependencies)",
        f"deploy/k8s/base/{service}.yaml (+ kustomization.yaml): Deployment, Service, HPA, PDB, NetworkPolicy",
        f"deploy/monitoring/prometheus/local.yml: a job `{service}` (prog up --with-monitoring scrapes it)",
        "migrations: if it has models, add them to its ServiceSpec.models and run `alembic revision --autogenerate`",
        "then: make test (tests/deploy/test_service_registry.py names whatever is still missing)",
    ]


TEMPLATES = {
    "__init__.py": '''
"""The {title} (port {port}): say here what it does and what it owns."""

from prognetwork.{package}.settings import {settings}
from prognetwork.kit.service import ServiceSpec

# needs: "postgres" and/or "redis" (readiness checks them; `prog config check` requires them);
# secrets: names read through the secrets provider; models: modules the migrations describe.
SPEC = ServiceSpec(name="{service}", package=__name__, port={port}, settings={settings})
''',
    "settings.py": '''
"""The {title}'s own settings (what every process shares is in kit.settings)."""

from __future__ import annotations

from prognetwork.kit.settings import Settings


class {settings}(Settings):
    def own_problems(self) -> list[str]:
        """What makes this service's own settings unfit outside development."""
        return []
''',
    "runtime.py": '''
"""What a running {title} holds, built once at start-up and closed by the same lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prognetwork.{package}.settings import {settings}
from prognetwork.kit.app import Connections


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: {settings}


@asynccontextmanager
async def open_runtime(settings: {settings}, connections: Connections) -> AsyncIterator[Runtime]:
    # Open here what the service holds beyond the kit's connections; close it after the yield.
    yield Runtime(settings)
''',
    "deps.py": '''
"""The {title}'s request dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from prognetwork.{package}.runtime import Runtime


async def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(runtime)]
''',
    "problems.py": '''
"""The problems the {title} answers with, besides the kit's shared ones (kit.problems)."""

from prognetwork.kit.problems import ProblemType

__all__ = ["ProblemType"]
''',
    "api.py": '''
"""HTTP routes of the {title}: thin translations onto its service layer."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
''',
    "app.py": '''
"""The {title}'s ASGI app: its routes, its runtime and its background jobs."""

from __future__ import annotations

from fastapi import FastAPI

from prognetwork.{package} import SPEC, api
from prognetwork.{package}.runtime import open_runtime
from prognetwork.{package}.settings import {settings}
from prognetwork.kit.app import create_service_app


def create_app(settings: {settings} | None = None) -> FastAPI:
    settings = settings or {settings}()
    return create_service_app(SPEC, settings, [api.router], runtime=open_runtime)
''',
}
