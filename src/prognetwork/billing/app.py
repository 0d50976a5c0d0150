"""The billing service's ASGI app: its routes, its runtime and its background jobs."""

from __future__ import annotations

from fastapi import FastAPI

from prognetwork.billing import SPEC, api
from prognetwork.billing.runtime import open_runtime
from prognetwork.billing.settings import BillingSettings
from prognetwork.kit.app import create_service_app


def create_app(settings: BillingSettings | None = None) -> FastAPI:
    settings = settings or BillingSettings()
    return create_service_app(SPEC, settings, [api.router], runtime=open_runtime)
