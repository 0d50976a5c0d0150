"""Where batch jobs keep their files: a local directory or an S3 prefix, behind one interface.

`open_target("path/to/dir")` or `open_target("s3://bucket/prefix")` gives a `Target`. Invariants
every target keeps, which backups and archives rely on:

- `writer(name)` streams: memory holds at most one upload part, the local disk nothing extra.
- An object becomes visible under its name only when the `with` block exits without error (a
  temporary file renamed into place locally; a multipart upload completed on S3). On error the
  partial data is removed (the temporary file deleted; the multipart upload aborted), so a name
  that lists always holds a whole object.
- Names are relative, `/`-separated, never starting with `.` in any part (those are the local
  target's temporary files) and never containing `..`.

S3 objects are written with server-side encryption by KMS (`ServerSideEncryption=aws:kms`) under
the key `S3_KMS_KEY_ID` (id, ARN or alias; without it S3 uses the AWS managed key aws/s3, not the
bucket's default key, so set it). Region and endpoint come from the usual AWS variables
(`AWS_REGION` / `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL`), credentials from boto3's own
chain (IRSA in Kubernetes).
"""

from __future__ import annotations

import contextlib
import io
import os
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol, cast

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from typing_extensions import Buffer

# S3 parts must be at least 5 MiB (except the last); 10,000 parts of 16 MiB allow 160 GiB objects.
PART_BYTES = 16 * 1024 * 1024
CHUNK_BYTES = 1024 * 1024


class StorageError(Exception):
    """A target cannot be opened or an object cannot be found; the message says which and why."""


class StorageSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    s3_region: str | None = Field(None, validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"))
    s3_endpoint_url: str | None = Field(None, alias="AWS_ENDPOINT_URL")
    # None: S3 encrypts with the AWS managed key aws/s3.
    s3_kms_key_id: str | None = Field(None, alias="S3_KMS_KEY_ID")
    s3_part_bytes: int = Field(PART_BYTES, alias="S3_PART_BYTES", ge=5 * 1024 * 1024)


class Target(Protocol):
    location: str

    def writer(self, name: str) -> AbstractContextManager[BinaryIO]: ...
    def reader(self, name: str) -> AbstractContextManager[BinaryIO]: ...
    def list(self, prefix: str = "") -> list[str]: ...
    def delete(self, name: str) -> None: ...
    def exists(self, name: str) -> bool: ...


def open_target(location: str, settings: StorageSettings | None = None) -> Target:
    """The target at `location`: `s3://bucket[/prefix]` or a local directory (created if missing)."""
    if location.startswith("s3://"):
        bucket, _, prefix = location[len("s3://") :].partition("/")
        if not bucket:
            raise StorageError(f"{location!r} names no bucket; write s3://bucket/prefix")
        return S3Target(location, bucket, prefix.strip("/"), settings or StorageSettings())
    if "://" in location:
        raise StorageError(f"{location!r} is neither a directory nor an s3://bucket/prefix location")
    return LocalTarget(location)


def check_name(name: str) -> str:
    parts = name.split("/")
    if not name or any(not p or p.startswith(".") for p in parts):
        raise StorageError(f"{name!r} is not a valid object name (relative, no empty or dot-led parts)")
    return name


class LocalTarget:
    def __init__(self, location: str) -> None:
        self.location = location
        self.root = Path(location)

    def _path(self, name: str) -> Path:
        return self.root / check_name(name)

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[BinaryIO]:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        try:
            with partial.open("xb") as file:
                yield file
                file.flush()
                os.fsync(file.fileno())
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)

    @contextlib.contextmanager
    def reader(self, name: str) -> Iterator[BinaryIO]:
        try:
            file = self._path(name).open("rb")
        except FileNotFoundError:
            raise StorageError(f"{name!r} does not exist in {self.location}") from None
        with file:
            yield file

    def list(self, prefix: str = "") -> list[str]:
        if not self.root.is_dir():
            return []
        names = []
        for path in self.root.rglob("*"):
            relative = path.relative_to(self.root)
            if path.is_file() and not any(p.startswith(".") for p in relative.parts):
                name = relative.as_posix()
                if name.startswith(prefix):
                    names.append(name)
        return sorted(names)

    def delete(self, name: str) -> None:
        path = self._path(name)
        path.unlink(missing_ok=True)
        # Empty folders left behind by deleted objects go too (never the target's root).
        for parent in path.parents:
            if parent == self.root or self.root not in parent.parents:
                break
            with contextlib.suppress(OSError):
                parent.rmdir()

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()


class S3Target:
    def __init__(self, location: str, bucket: str, prefix: str, settings: StorageSettings) -> None:
        import boto3

        self.location = location
        self.bucket = bucket
        self.prefix = f"{prefix}/" if prefix else ""
        self.settings = settings
        self.client: Any = boto3.client(
            "s3", region_name=settings.s3_region, endpoint_url=settings.s3_endpoint_url
        )

    def _key(self, name: str) -> str:
        return self.prefix + check_name(name)

    def _encryption(self) -> dict[str, str]:
        args = {"ServerSideEncryption": "aws:kms"}
        if self.settings.s3_kms_key_id:
            args["SSEKMSKeyId"] = self.settings.s3_kms_key_id
        return args

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[BinaryIO]:
        key = self._key(name)
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=key, **self._encryption())
        stream = _MultipartWriter(
            self.client, self.bucket, key, upload["UploadId"], self.settings.s3_part_bytes
        )
        try:
            yield cast(BinaryIO, stream)
            stream.complete()
        except BaseException:
            stream.abort()
            raise

    @contextlib.contextmanager
    def reader(self, name: str) -> Iterator[BinaryIO]:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(name))["Body"]
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise StorageError(f"{name!r} does not exist in {self.location}") from None
            raise
        try:
            yield cast(BinaryIO, body)
        finally:
            body.close()

    def list(self, prefix: str = "") -> list[str]:
        names = []
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix + prefix
        )
        for page in pages:
            names += [item["Key"][len(self.prefix) :] for item in page.get("Contents", [])]
        return sorted(names)

    def delete(self, name: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(name))

    def exists(self, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(name))
        except self.client.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True


class _MultipartWriter(io.RawIOBase):
    """A write-only stream that uploads every `part_bytes` it is given as one part."""

    def __init__(self, client: Any, bucket: str, key: str, upload_id: str, part_bytes: int) -> None:
        self.client, self.bucket, self.key, self.upload_id = client, bucket, key, upload_id
        self.part_bytes = part_bytes
        self.buffer = bytearray()
        self.parts: list[dict[str, Any]] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Buffer) -> int:
        chunk = memoryview(data).cast("B")
        self.buffer += chunk
        while len(self.buffer) >= self.part_bytes:
            self._upload(bytes(self.buffer[: self.part_bytes]))
            del self.buffer[: self.part_bytes]
        return len(chunk)

    def _upload(self, body: bytes) -> None:
        number = len(self.parts) + 1
        answer = self.client.upload_part(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body
        )
        self.parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def complete(self) -> None:
        if self.buffer or not self.parts:  # the last part may be short; an empty object is one empty part
            self._upload(bytes(self.buffer))
            self.buffer.clear()
        self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=self.key, UploadId=self.upload_id, MultipartUpload={"Parts": self.parts}
        )

    def abort(self) -> None:
        self.buffer.clear()
        self.client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=self.upload_id)
