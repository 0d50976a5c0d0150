"""nginx as the edge proxy in end-to-end tests (Debian's, installed by scripts/install-edge-tools.sh),
and HTTP requests sent from a chosen loopback address, so that several clients can be told apart."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.helpers.paths import ROOT
from tests.helpers.polling import eventually
from tests.helpers.ports import free_port

NGINX = Path("/usr/sbin/nginx")
INSTALL_SCRIPT = ROOT / "scripts" / "install-edge-tools.sh"

# One worker, no access log; every temporary path in the run's own folder. `{locations}` is the
# server block's body.
CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port};
{locations}
  }}
}}
"""


def install_nginx() -> Path:
    if not NGINX.exists():
        done = subprocess.run(["sh", str(INSTALL_SCRIPT)], capture_output=True, text=True)
        assert NGINX.exists(), f"{INSTALL_SCRIPT.name} did not install nginx:\n{done.stdout}\n{done.stderr}"
    return NGINX


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def nginx(directory: Path, locations: str) -> Iterator[str]:
    """nginx on a free port with `locations` as its server's body; yields its base URL."""
    binary = install_nginx()
    directory.mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)  # the workers run unprivileged and write their temporary files here
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(CONF.format(dir=directory, port=port, locations=locations))
    process = subprocess.Popen([str(binary), "-c", str(conf), "-g", "daemon off;"],  # noqa: S603
                               stderr=open(directory / "stderr.log", "wb"))
    try:
        eventually(lambda: listening(port) or process.poll() is not None, timeout=10, what="nginx listening")
        assert process.poll() is None, (directory / "stderr.log").read_text() + (directory / "error.log").read_text()
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


def request_from(source: str, method: str, url: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """An HTTP request sent from the loopback address `source` (127.0.0.2, …): the server sees it
    as that client's."""
    host, _, port = url.split("/")[2].partition(":")
    path = "/" + url.split("/", 3)[3] if url.count("/") >= 3 else "/"
    conn = http.client.HTTPConnection(host, int(port), timeout=10, source_address=(source, 0))
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=data, headers={"content-type": "application/json", **(headers or {})})
        response = conn.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else None
    finally:
        conn.close()
