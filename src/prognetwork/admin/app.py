"""The admin client's ASGI app: its routes, its runtime and its background jobs."""

from __future__ import annotations

from fastapi import FastAPI

from prognetwork.admin import SPEC, api
from prognetwork.admin.runtime import open_runtime
from prognetwork.admin.settings import AdminSettings
from prognetwork.kit.app import create_service_app


def create_app(settings: AdminSettings | None = None) -> FastAPI:
    settings = settings or AdminSettings()
    return create_service_app(SPEC, settings, [api.router], runtime=open_runtime)
