"""Secrets through one interface, with a cache whose entries expire.

A source answers "what is secret NAME now?"; `Secrets` caches answers for `ttl` seconds so
a rotated secret (a new file in a mounted Kubernetes Secret, a new version in AWS Secrets
Manager) is picked up without a restart, and `refresh` reads one again at once (a server
rejected the password it held). Values are `SecretStr`, so they never show in `repr`, logs or
tracebacks, and no error message carries one.

Backends (`SECRETS_BACKEND`): `env` (the environment, `NAME_FILE` files), `file` (one file per
secret in a directory, as Kubernetes mounts a Secret) and `aws` (one AWS Secrets Manager secret
per environment, `prognetwork/<PROG_ENV>/app`, holding a JSON object with one property per
secret name — the secret the ExternalSecret reads). Whatever the backend, values configured in
settings and then the environment answer after it, so a local override works everywhere.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import structlog
from pydantic import SecretStr

log = structlog.get_logger("prognetwork.secrets")

# A refresh (after a rejected password) reuses a value read this recently: when many
# connections are refused at once, one read answers them all.
REFRESH_MIN_AGE = 1.0
# After a failed read, the value held is served this long before the store is asked again.
STALE_RETRY_SECONDS = 30.0
AWS_REGION_MISSING = "SECRETS_BACKEND=aws needs a region: set AWS_REGION (or AWS_DEFAULT_REGION)"


class SecretSource(Protocol):
    def fetch(self, name: str) -> str | None: ...


class SecretsUnavailable(RuntimeError):
    """A secret store could not be read (no credentials, access denied, not found, unreachable).
    The message says what to fix; it never carries a secret value."""


class EnvironmentSource:
    """`NAME` from the environment, or the file named by `NAME_FILE` (compose/Docker secrets)."""

    def fetch(self, name: str) -> str | None:
        path = os.environ.get(f"{name}_FILE")
        if path:
            return _read(Path(path))
        return os.environ.get(name) or None

    def __str__(self) -> str:
        return "the environment (NAME or NAME_FILE)"


class DirectorySource:
    """One file per secret in a directory, as Kubernetes mounts a Secret volume."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def fetch(self, name: str) -> str | None:
        return _read(self.directory / name)

    def __str__(self) -> str:
        return f"the secrets directory {self.directory}"


class ConfiguredSource:
    """Values the process was configured with (its settings), behind the secret store."""

    def __init__(self, values: Mapping[str, str | None]) -> None:
        self._values = dict(values)

    def fetch(self, name: str) -> str | None:
        return self._values.get(name) or None

    def __str__(self) -> str:
        return "the settings"


class AwsSecretsManagerSource:
    """The properties of one AWS Secrets Manager secret holding a JSON object.

    `AWS_ENDPOINT_URL` (honoured by boto3) points it elsewhere, e.g. at moto in tests.
    Credentials come from boto3's usual chain (IRSA web identity, environment, profile).
    """

    def __init__(self, secret_id: str, region: str | None, client: Any = None) -> None:
        self.secret_id = secret_id
        self.region = region
        self._client = client
        self._client_lock = threading.Lock()

    def fetch(self, name: str) -> str | None:
        value = self.document().get(name)
        if value is None:
            return None
        return value if isinstance(value, str) else json.dumps(value)

    def document(self) -> dict[str, Any]:
        """The secret's current version (AWSCURRENT), parsed."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self.client().get_secret_value(SecretId=self.secret_id)
        except ClientError as exc:
            raise SecretsUnavailable(self._refusal(exc.response)) from None
        except BotoCoreError as exc:
            raise SecretsUnavailable(self._failure(exc)) from None
        text = answer.get("SecretString")
        try:
            document = json.loads(text) if text is not None else None
        except ValueError:
            document = None
        if not isinstance(document, dict):
            raise SecretsUnavailable(
                f"AWS Secrets Manager secret {self.secret_id} is not a JSON object of secret names "
                "and values (store it as key/value pairs)"
            )
        return document

    def client(self) -> Any:
        if not self.region:
            raise SecretsUnavailable(AWS_REGION_MISSING)
        with self._client_lock:
            if self._client is None:
                import boto3
                from botocore.config import Config
                from botocore.exceptions import BotoCoreError

                config = Config(
                    connect_timeout=3, read_timeout=5, retries={"max_attempts": 3, "mode": "standard"}
                )
                try:
                    self._client = boto3.session.Session().client(
                        "secretsmanager", region_name=self.region, config=config
                    )
                except BotoCoreError as exc:
                    raise SecretsUnavailable(self._failure(exc)) from None
            return self._client

    def _refusal(self, response: Any) -> str:
        where = f"AWS Secrets Manager secret {self.secret_id}"
        code = response.get("Error", {}).get("Code", "")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "ResourceNotFoundException":
            return (
                f"{where} does not exist in region {self.region or '(default)'}: create it, "
                "or name the right one with SECRETS_AWS_SECRET_ID"
            )
        if code in ("AccessDeniedException", "AccessDenied"):
            return (
                f"access denied reading {where}: allow secretsmanager:GetSecretValue on it "
                "(and kms:Decrypt on its key) for this workload's role"
            )
        if code in (
            "UnrecognizedClientException",
            "InvalidClientTokenId",
            "InvalidSignatureException",
            "ExpiredTokenException",
            "SignatureDoesNotMatch",
        ):
            return f"AWS rejected this workload's credentials ({code}) reading {where}"
        if code == "DecryptionFailure":
            return f"{where} cannot be decrypted: allow kms:Decrypt on its KMS key for this workload's role"
        if code == "InvalidRequestException":
            return f"{where} cannot be read now ({code}: scheduled for deletion?)"
        if status == 403:  # refused, in an answer that names no code we know
            return (
                f"access denied reading {where} (HTTP 403): allow secretsmanager:GetSecretValue on it "
                "for this workload's role, and check that role's credentials"
            )
        return f"{where} cannot be read ({code or 'unknown error'})"

    def _failure(self, exc: Exception) -> str:
        from botocore.exceptions import EndpointConnectionError, NoCredentialsError, NoRegionError

        if isinstance(exc, NoRegionError):
            return AWS_REGION_MISSING
        if isinstance(exc, NoCredentialsError):
            return (
                f"no AWS credentials to read AWS Secrets Manager secret {self.secret_id} (IRSA web "
                "identity, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)"
            )
        if isinstance(exc, EndpointConnectionError):
            return f"cannot reach AWS Secrets Manager ({exc}) to read secret {self.secret_id}"
        return f"AWS Secrets Manager secret {self.secret_id} cannot be read ({type(exc).__name__}: {exc})"

    def __str__(self) -> str:
        return f"AWS Secrets Manager secret {self.secret_id}"


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except (FileNotFoundError, IsADirectoryError):
        return None


class Secrets:
    """The sources in order, the first that has a secret answering it; answers cached `ttl` seconds.

    When a source cannot be read (SecretsUnavailable), a secret read before is still served (and
    the failure logged); one never read raises. Reads of one name are never made twice at once."""

    def __init__(
        self, sources: list[SecretSource], ttl: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.sources = sources
        self.ttl = ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, SecretStr | None]] = {}  # name: (when read, value)
        self._lock = threading.Lock()
        self._reading: dict[str, threading.Lock] = {}

    def get(self, name: str) -> SecretStr | None:
        return self._get(name, max_age=self.ttl)

    def refresh(self, name: str) -> SecretStr | None:
        """Read `name` again now, whatever the cache holds (a server refused the value it held)."""
        return self._get(name, max_age=min(self.ttl, REFRESH_MIN_AGE))

    def _get(self, name: str, max_age: float) -> SecretStr | None:
        cached = self._fresh(name, max_age)
        if cached is not None:
            return cached[1]
        with self._lock:
            reading = self._reading.setdefault(name, threading.Lock())
        with reading:
            cached = self._fresh(name, max_age)  # read by another thread meanwhile
            if cached is not None:
                return cached[1]
            try:
                value = next((v for v in (s.fetch(name) for s in self.sources) if v is not None), None)
            except SecretsUnavailable as exc:
                stale = self._cache.get(name)
                if stale is None:
                    raise
                log.warning("secret_refresh_failed", name=name, error=str(exc))
                # Served as if read now: the threads waiting on this read, and the reads of the
                # next STALE_RETRY_SECONDS, take it instead of each waiting out a store that is
                # not answering (seconds per attempt) one after the other.
                with self._lock:
                    self._cache[name] = (self.clock() - max(0.0, self.ttl - STALE_RETRY_SECONDS), stale[1])
                return stale[1]
            secret = SecretStr(value) if value is not None else None
            with self._lock:
                self._cache[name] = (self.clock(), secret)
            return secret

    def _fresh(self, name: str, max_age: float) -> tuple[float, SecretStr | None] | None:
        cached = self._cache.get(name)
        if cached is not None and self.clock() - cached[0] < max_age:
            return cached
        return None

    def require(self, name: str) -> SecretStr:
        value = self.get(name)
        if value is None:
            raise MissingSecret(name, self.where())
        return value

    def where(self) -> str:
        """Where a secret is looked for, in order."""
        return ", then ".join(str(s) for s in self.sources)

    def __repr__(self) -> str:
        return f"Secrets(sources={[type(s).__name__ for s in self.sources]}, ttl={self.ttl})"


class MissingSecret(RuntimeError):
    def __init__(self, name: str, where: str | None = None) -> None:
        super().__init__(
            f"secret {name} is not set ("
            + (f"looked in {where}" if where else f"environment variable, {name}_FILE, or secrets directory")
            + ")"
        )
        self.name = name


def build_secrets(
    backend: str,
    directory: Path,
    ttl: float,
    *,
    aws_secret_id: str = "",
    aws_region: str | None = None,
    configured: Mapping[str, str | None] | None = None,
) -> Secrets:
    # The settings' own values, then the environment, answer last, so a local override works
    # with any backend.
    sources: list[SecretSource] = [ConfiguredSource(configured or {}), EnvironmentSource()]
    if backend == "file":
        sources.insert(0, DirectorySource(directory))
    elif backend == "aws":
        sources.insert(0, AwsSecretsManagerSource(aws_secret_id, aws_region))
    return Secrets(sources, ttl)
