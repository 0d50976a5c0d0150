"""The secrets provider: sources in order, an expiring cache (rotation), nothing leaks."""

from __future__ import annotations

import threading

import pytest

from prognetwork.kit.secrets import (
    REFRESH_MIN_AGE,
    DirectorySource,
    EnvironmentSource,
    MissingSecret,
    Secrets,
    SecretsUnavailable,
    build_secrets,
)
from tests.helpers.polling import eventually


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_directory_secret_rotation_is_picked_up_after_ttl(tmp_path):
    (tmp_path / "API_KEY").write_text("first-value\n")
    clock = Clock()
    secrets = Secrets([DirectorySource(tmp_path)], ttl=60, clock=clock)
    assert secrets.require("API_KEY").get_secret_value() == "first-value"
    (tmp_path / "API_KEY").write_text("rotated-value")
    clock.now += 59
    assert secrets.require("API_KEY").get_secret_value() == "first-value"  # still cached
    clock.now += 2
    assert secrets.require("API_KEY").get_secret_value() == "rotated-value"


def test_missing_secret_is_cached_too_and_then_found(tmp_path):
    clock = Clock()
    secrets = Secrets([DirectorySource(tmp_path)], ttl=10, clock=clock)
    assert secrets.get("LATE") is None
    (tmp_path / "LATE").write_text("now-here")
    clock.now += 11
    assert secrets.get("LATE").get_secret_value() == "now-here"


def test_environment_and_file_convention(monkeypatch, tmp_path):
    monkeypatch.setenv("PLAIN", "from-env")
    (tmp_path / "key.txt").write_text("from-file")
    monkeypatch.setenv("VIA_FILE_FILE", str(tmp_path / "key.txt"))
    source = EnvironmentSource()
    assert source.fetch("PLAIN") == "from-env"
    assert source.fetch("VIA_FILE") == "from-file"
    assert source.fetch("ABSENT_SECRET_NAME") is None


def test_directory_backend_wins_over_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TOKEN_X", "env")
    (tmp_path / "TOKEN_X").write_text("dir")
    assert build_secrets("file", tmp_path, 0).require("TOKEN_X").get_secret_value() == "dir"
    assert build_secrets("env", tmp_path, 0).require("TOKEN_X").get_secret_value() == "env"


def test_values_never_in_repr_or_errors(tmp_path):
    (tmp_path / "S").write_text("hunter2-very-secret")
    secrets = Secrets([DirectorySource(tmp_path)], ttl=0)
    value = secrets.require("S")
    assert "hunter2" not in repr(value) and "hunter2" not in str(value) and "hunter2" not in repr(secrets)
    try:
        secrets.require("OTHER")
    except MissingSecret as exc:
        assert "OTHER" in str(exc)
    else:
        raise AssertionError("missing secret not reported")


class CountingSource:
    """A store whose value the test sets, counting reads; `fail` makes it unreadable."""

    def __init__(self, value: str | None = "first") -> None:
        self.value = value
        self.reads = 0
        self.fail = False
        self.release = threading.Event()
        self.release.set()

    def fetch(self, name: str) -> str | None:
        self.reads += 1
        self.release.wait(10)
        if self.fail:
            raise SecretsUnavailable("the store cannot be read (test)")
        return self.value


def test_refresh_reads_again_at_once_but_not_more_than_once_a_second():
    clock, source = Clock(), CountingSource()
    secrets = Secrets([source], ttl=3600, clock=clock)
    assert secrets.require("DATABASE_URL").get_secret_value() == "first"
    source.value = "rotated"
    clock.now += 5
    assert secrets.get("DATABASE_URL").get_secret_value() == "first"  # the cache holds for an hour
    assert secrets.refresh("DATABASE_URL").get_secret_value() == "rotated"
    reads = source.reads
    clock.now += REFRESH_MIN_AGE / 2
    assert secrets.refresh("DATABASE_URL").get_secret_value() == "rotated"  # many refusals, one read
    assert source.reads == reads


def test_a_value_read_before_is_served_while_the_store_is_unreadable():
    clock, source = Clock(), CountingSource()
    secrets = Secrets([source], ttl=10, clock=clock)
    assert secrets.require("KEY").get_secret_value() == "first"
    source.fail = True
    clock.now += 11
    assert secrets.require("KEY").get_secret_value() == "first"
    with pytest.raises(SecretsUnavailable, match="cannot be read"):
        secrets.get("NEVER_READ")


def test_simultaneous_reads_of_one_secret_read_the_store_once():
    source = CountingSource()
    source.release.clear()
    secrets = Secrets([source], ttl=60)
    answers: list[str] = []
    threads = [threading.Thread(target=lambda: answers.append(secrets.require("KEY").get_secret_value()))
               for _ in range(5)]
    for thread in threads:
        thread.start()
    eventually(lambda: source.reads == 1, timeout=10, what="the first read to start")
    source.release.set()
    for thread in threads:
        thread.join(10)
    assert answers == ["first"] * 5 and source.reads == 1


def test_configured_values_answer_after_the_store_and_before_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DATABASE_URL", "postgresql://from-environment/db")
    secrets = build_secrets("file", tmp_path, 0, configured={"DATABASE_URL": "postgresql://configured/db"})
    assert secrets.require("DATABASE_URL").get_secret_value() == "postgresql://configured/db"
    (tmp_path / "DATABASE_URL").write_text("postgresql://stored/db")
    assert secrets.require("DATABASE_URL").get_secret_value() == "postgresql://stored/db"
    assert "secrets directory" in secrets.where() and secrets.where().endswith("the environment (NAME or NAME_FILE)")
