"""The admin client's own settings (what every process shares is in kit.settings)."""

from __future__ import annotations

from prognetwork.kit.settings import Settings


class AdminSettings(Settings):
    def own_problems(self) -> list[str]:
        """What makes this service's own settings unfit outside development."""
        return []
