"""End-to-end fixtures: services as real processes."""

from __future__ import annotations

import pytest

from tests.support import start_service


@pytest.fixture
def users(service_env, tmp_path):
    """The user service as a process (here `users` is a process, not an in-process client)."""
    process = start_service("users", service_env, tmp_path)
    yield process
    process.stop()
