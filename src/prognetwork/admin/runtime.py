"""What a running admin client holds, built once at start-up and closed by the same lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from prognetwork.admin.settings import AdminSettings
from prognetwork.kit.app import Connections


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: AdminSettings


@asynccontextmanager
async def open_runtime(settings: AdminSettings, connections: Connections) -> AsyncIterator[Runtime]:
    # Open here what the service holds beyond the kit's connections; close it after the yield.
    yield Runtime(settings)
