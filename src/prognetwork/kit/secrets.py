"""Secrets through one interface, with a cache whose entries expire.

A source answers "what is secret NAME now?"; `Secrets` caches answers for `ttl` seconds so
a rotated secret (a new file in a mounted Kubernetes Secret, a new version in a secret
store) is picked up without a restart. Values are `SecretStr`, so they never show in
`repr`, logs or tracebacks.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from pydantic import SecretStr


class SecretSource(Protocol):
    def fetch(self, name: str) -> str | None: ...


class EnvironmentSource:
    """`NAME` from the environment, or the file named by `NAME_FILE` (compose/Docker secrets)."""

    def fetch(self, name: str) -> str | None:
        path = os.environ.get(f"{name}_FILE")
        if path:
            return _read(Path(path))
        return os.environ.get(name) or None


class DirectorySource:
    """One file per secret in a directory, as Kubernetes mounts a Secret volume."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def fetch(self, name: str) -> str | None:
        return _read(self.directory / name)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (FileNotFoundError, IsADirectoryError):
        return None


class Secrets:
    def __init__(
        self, sources: list[SecretSource], ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.sources = sources
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, SecretStr | None]] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> SecretStr | None:
        now = self.clock()
        cached = self._cache.get(name)
        if cached is not None and cached[0] > now:
            return cached[1]
        value = next((v for v in (s.fetch(name) for s in self.sources) if v is not None), None)
        secret = SecretStr(value) if value is not None else None
        with self._lock:
            self._cache[name] = (now + self.ttl, secret)
        return secret

    def require(self, name: str) -> SecretStr:
        value = self.get(name)
        if value is None:
            raise MissingSecret(name)
        return value

    def __repr__(self) -> str:
        return f"Secrets(sources={[type(s).__name__ for s in self.sources]}, ttl={self.ttl})"


class MissingSecret(RuntimeError):
    def __init__(self, name: str) -> None:
        super().__init__(
            f"secret {name} is not set (environment variable, {name}_FILE, or secrets directory)"
        )
        self.name = name


def build_secrets(backend: str, directory: Path, ttl: float) -> Secrets:
    # The environment always answers last, so a local override works with any backend.
    sources: list[SecretSource] = [EnvironmentSource()]
    if backend == "file":
        sources.insert(0, DirectorySource(directory))
    return Secrets(sources, ttl)
