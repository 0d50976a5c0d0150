"""The migrations and the models describe the same schema, and the history runs both ways."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from alembic import command

from prognetwork.kit import migrations
from tests.helpers.databases import create_database, drop_database, with_database
from tests.helpers.threads import in_thread


@pytest.fixture
def empty_database(servers):
    name = f"prog_test_{uuid.uuid4().hex[:12]}"
    in_thread(asyncio.run, create_database(servers.pg_admin_url, name))
    yield with_database(servers.pg_admin_url, name)
    in_thread(asyncio.run, drop_database(servers.pg_admin_url, name))


def test_models_match_the_migrated_schema(empty_database):
    in_thread(migrations.upgrade, empty_database)
    # Raises if autogenerate would emit any operation: a model changed without a migration.
    in_thread(command.check, migrations.alembic_config(empty_database))


def test_history_downgrades_and_upgrades_again(empty_database):
    in_thread(migrations.upgrade, empty_database)
    in_thread(migrations.downgrade, empty_database, "base")
    in_thread(migrations.upgrade, empty_database)
    in_thread(command.check, migrations.alembic_config(empty_database))
