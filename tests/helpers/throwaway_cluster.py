"""`prog dr drill` as an operator runs it: its tools, a directory of its own, and what it left
behind; and S3 over TLS (moto), which pgBackRest's S3 repository needs.

The drill builds a throwaway PostgreSQL 15 cluster archiving to pgBackRest, its own Redis and the
services (src/prognetwork/jobs/dr*.py). A process it leaves behind is found three ways, since
PostgreSQL's children overwrite their environment with their process title: an environment
variable given to the drill (which every process it starts inherits), a working directory inside
the drill's directory (PostgreSQL's and Redis's), or a command line naming it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.paths import ROOT
from tests.helpers.polling import eventually
from tests.helpers.ports import accepts_connections, free_port

MARKER = "PROG_DR_DRILL_UNDER_TEST"


def install_dr_tools() -> None:
    """pgBackRest, through the project's script."""
    if shutil.which("pgbackrest"):
        return
    result = subprocess.run(["sh", str(ROOT / "scripts" / "install-dr-tools.sh")], capture_output=True, text=True)
    assert shutil.which("pgbackrest"), f"scripts/install-dr-tools.sh left pgbackrest missing:\n{result.stdout}\n{result.stderr}"


def drill_directory() -> Path:
    """Where the drill makes its temporary directory (TMPDIR): under the system's temporary folder
    and traversable, since as root the drill runs PostgreSQL as the `postgres` user."""
    directory = Path(tempfile.mkdtemp(prefix="dr-drill-test-"))
    directory.chmod(0o755)
    return directory


def run_drill(directory: Path, marker: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(directory), MARKER: marker}
    return subprocess.run([sys.executable, "-m", "prognetwork", "dr", "drill", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def leftovers(directory: Path, marker: str | None = None) -> list[str]:
    """Processes the drill started that still run (zombies aside): "pid command line" each."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (entry / "stat").read_text().rpartition(")")[2].split()[0] == "Z":
                continue
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environment = (entry / "environ").read_bytes().split(b"\0")
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone meanwhile
            continue
        marked = marker is not None and f"{MARKER}={marker}".encode() in environment
        if marked or cwd.startswith(str(directory)) or str(directory) in command:
            found.append(f"{entry.name} {command}")
    return found


REGION = "us-east-1"  # deploy/pgbackrest/pgbackrest.conf's repo2-s3-region


@dataclass
class TlsMoto:
    port: int
    certificate: Path  # self-signed for 127.0.0.1: what clients trust

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=REGION, verify=str(self.certificate),
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def repository(self, bucket: str) -> dict[str, str]:
        """pgBackRest options pointing repo2 at this server's `bucket` instead of AWS (TLS verified)."""
        return {"repo2-s3-endpoint": "127.0.0.1", "repo2-storage-port": str(self.port),
                "repo2-storage-ca-file": str(self.certificate), "repo2-s3-uri-style": "path",
                "repo2-s3-key-type": "shared", "repo2-s3-key": "testing", "repo2-s3-key-secret": "testing",
                "repo2-s3-bucket": bucket}


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1, valid for a day."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        # The address as an IP (what Python's TLS checks) and as a name (pgBackRest 2.45 checks names only).
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                    x509.DNSName("127.0.0.1")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "s3.crt", directory / "s3.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.chmod(0o644)  # read by pgBackRest as the `postgres` user
    return cert_path, key_path


@contextmanager
def tls_moto(directory: Path) -> Iterator[TlsMoto]:
    """moto's server over HTTPS with a certificate made in `directory` (pgBackRest speaks to S3
    only over TLS)."""
    certificate, key = _self_signed(directory)
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "tests.helpers.throwaway_cluster", str(port), str(certificate),
                                str(key)], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"})
    try:
        eventually(lambda: accepts_connections(port, timeout=0.5), timeout=30, what="moto over TLS to listen")
        yield TlsMoto(port, certificate)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _serve_moto_over_tls(port: int, certificate: str, key: str) -> None:
    """moto's app with keep-alive and a TLS close_notify before each close: OpenSSL 3 (in
    pgBackRest) treats a connection closed without one as an error, which werkzeug's server
    (behind `moto_server --ssl`) does after every response."""
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import run_simple

    class ClosesTls(MotoRequestHandler):
        protocol_version = "HTTP/1.1"

        def finish(self) -> None:
            super().finish()
            try:
                self.connection.settimeout(2)
                self.connection.unwrap()
            except (OSError, ValueError):
                pass  # the client went first

    run_simple("127.0.0.1", port, DomainDispatcherApplication(create_backend_app), threaded=True,
               ssl_context=(certificate, key), request_handler=ClosesTls)


if __name__ == "__main__":
    _serve_moto_over_tls(int(sys.argv[1]), sys.argv[2], sys.argv[3])
