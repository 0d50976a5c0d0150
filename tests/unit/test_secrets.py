"""The secrets provider: sources in order, an expiring cache (rotation), nothing leaks."""

from __future__ import annotations

from prognetwork.kit.secrets import DirectorySource, EnvironmentSource, MissingSecret, Secrets, build_secrets


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
