"""The notification service's request dependencies, as `Annotated` aliases the routes declare."""

from __future__ import annotations

from prognetwork.kit.app import ReadOnlySession

__all__ = ["ReadOnlySession"]
