"""AWS as moto's server mode serves it: a real HTTP endpoint in a child process, so boto3 goes
through its whole stack (signing, retries, multipart) exactly as it does against AWS."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tests.helpers.paths import ROOT
from tests.helpers.polling import eventually
from tests.helpers.ports import accepts_connections, free_port

REGION = "eu-west-1"
# moto accepts any credentials; these keep boto3 from looking for real ones.
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}


@dataclass
class MotoServer:
    url: str
    process: subprocess.Popen

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to talk to this server instead of AWS."""
        return {**CREDENTIALS, "AWS_ENDPOINT_URL": self.url, "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}

    def client(self, service: str, region: str = REGION) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=region, **{
            "aws_access_key_id": "testing", "aws_secret_access_key": "testing", "aws_session_token": "testing"})

    def encrypted_bucket(self, name: str) -> str:
        """A bucket whose objects are encrypted with a KMS key of its own by default; its key id."""
        key_id = self.client("kms").create_key(Description=f"{name} objects")["KeyMetadata"]["KeyId"]
        s3 = self.client("s3")
        s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": key_id}}]})
        return key_id


@contextmanager
def moto_server() -> Iterator[MotoServer]:
    port = free_port()
    process = subprocess.Popen(
        [str(ROOT / ".venv" / "bin" / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **CREDENTIALS},
    )
    try:
        eventually(lambda: accepts_connections(port, timeout=0.5), timeout=30, what="moto_server to listen")
        yield MotoServer(f"http://127.0.0.1:{port}", process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
