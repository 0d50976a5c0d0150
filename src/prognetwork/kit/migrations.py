"""Alembic, driven from code: `prog migrate`, readiness's expected revision, tests."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

SCRIPT_LOCATION = "prognetwork:migrations"


def alembic_config(dsn: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    # Passed as an attribute, not an ini option, so '%' in passwords needs no escaping.
    config.attributes["dsn"] = dsn
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def upgrade(dsn: str, revision: str = "head") -> None:
    """Blocking: call from a thread when inside an event loop."""
    command.upgrade(alembic_config(dsn), revision)


def downgrade(dsn: str, revision: str) -> None:
    command.downgrade(alembic_config(dsn), revision)
