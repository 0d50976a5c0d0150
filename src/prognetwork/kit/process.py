"""Starting a service as a process of its own, and knowing when it is ready: the one way `prog up`,
the tests and the benchmarks do it (each runs exactly what a container runs, `prog serve`)."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import IO

POLL_SECONDS = 0.1


class NotReady(RuntimeError):
    """The process exited, or did not answer its readiness in time; says which."""


def spawn(
    name: str,
    port: int,
    ops_port: int,
    env: Mapping[str, str],
    *,
    host: str = "127.0.0.1",
    output: IO[bytes] | None = None,
    cwd: Path | None = None,
    own_session: bool = False,
) -> subprocess.Popen[bytes]:
    """`prog serve NAME` on `port` (API) and `ops_port` (probes, metrics), in the background."""
    command = [sys.executable, "-m", "prognetwork", "serve", name]
    command += ["--host", host, "--port", str(port), "--ops-port", str(ops_port)]
    return subprocess.Popen(  # noqa: S603 - this interpreter and a service name, no shell
        command,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
        cwd=cwd,
        start_new_session=own_session,  # own session: Ctrl-C reaches only the parent
    )


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether `url` answers 200 now."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - our own http:// URL
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(
    processes: Mapping[str, tuple[subprocess.Popen[bytes], str]], timeout: float, path: str = "/readiness"
) -> None:
    """Wait until every named process's `ops_url + path` answers 200; raise NotReady if one exits first
    or the deadline passes."""
    deadline = time.monotonic() + timeout
    pending = dict(processes)
    while pending:
        for name, (process, ops_url) in list(pending.items()):
            if process.poll() is not None:
                raise NotReady(f"{name} exited during start-up (status {process.returncode})")
            if answers(ops_url + path):
                del pending[name]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise NotReady(f"not ready after {timeout:.0f}s: {', '.join(sorted(pending))}")
        time.sleep(POLL_SECONDS)
