"""drill-restart: every replica of every service restarted in turn, under steady mixed load.

Starts its own platform on its own PostgreSQL and Redis: two replicas each of the user service,
the event-streaming service, the notification service and the gateway. nginx stands in for
Kubernetes Services: one balancer per service the gateway calls, and one in front of the two
gateways, where the load comes in. The load — authenticated reads, logins, refreshes and event
publishes — runs the whole time.

A rolling update, replica by replica and service after service, as Kubernetes does it with
maxSurge 1, maxUnavailable 0: start the replacement and wait for its readiness, add it to the
balancer, remove the old replica from the balancer (endpoint removal), then SIGTERM it (it
drains SHUTDOWN_DRAIN_SECONDS and finishes what is in flight). Rounds repeat until --duration
has passed.

Prints a timeline and, last, one JSON line: {"requests", "failed", "by_status", "restarts"};
`failed` counts every answer that is not 2xx (and every request without an answer).

    python drills/restart.py [--duration 60] [--clients 6] [--services a,b] [--lean] [--keep]

Goal: 0 failed, whatever the method.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import ensure_debian_packages  # noqa: E402
from tests.helpers.ports import free_port  # noqa: E402

from drills.stack import (  # noqa: E402
    PASSWORD,
    Load,
    OwnPostgres,
    OwnRedis,
    Processes,
    Replica,
    Timeline,
    verified_session,
    workdir,
)

NGINX = "/usr/sbin/nginx"
BALANCED = ("user-service", "event-streaming", "notification-service", "api-gateway")
ROLLING_ORDER = ("user-service", "event-streaming", "notification-service", "api-gateway")
# Short drains keep the drill short; the balancer has dropped the replica before SIGTERM.
DRAIN_SECONDS = "2"


class Balancers:
    """One nginx: a listening port per service, proxying to that service's current replicas."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = {name: free_port() for name in BALANCED}
        self.members: dict[str, list[Replica]] = {name: [] for name in BALANCED}
        self.process: subprocess.Popen[bytes] | None = None
        self.generation = 0  # which configuration the workers serve: GET /__generation says

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def config(self) -> str:
        blocks = []
        for name, port in self.ports.items():
            servers = "".join(f"    server 127.0.0.1:{r.port};\n" for r in self.members[name])
            if not servers:
                servers = "    server 127.0.0.1:1 down;\n"
            upstream = name.replace("-", "_")
            blocks.append(
                f"  upstream {upstream} {{\n{servers}    keepalive 32;\n  }}\n"
                f"  server {{\n    listen 127.0.0.1:{port};\n"
                f"    location = /__generation {{ return 200 \"{self.generation}\"; }}\n"
                f"    location / {{\n      proxy_pass http://{upstream};\n      proxy_http_version 1.1;\n"
                f"      proxy_set_header Connection \"\";\n      proxy_buffering off;\n"
                f"      proxy_read_timeout 60s;\n    }}\n  }}\n"
            )
        return (
            f"worker_processes 1;\npid {self.directory}/nginx.pid;\nerror_log {self.directory}/nginx-error.log;\n"
            "events { worker_connections 4096; }\n"
            f"http {{\n  access_log off;\n  client_body_temp_path {self.directory}/body;\n"
            f"  proxy_temp_path {self.directory}/proxy;\n" + "".join(blocks) + "}\n"
        )

    def write(self) -> None:
        (self.directory / "nginx.conf").write_text(self.config())

    def start(self) -> None:
        self.write()
        self.process = subprocess.Popen([NGINX, "-c", str(self.directory / "nginx.conf"), "-g", "daemon off;"])
        self.wait_for_generation()

    def reload(self) -> None:
        """New workers take the new membership (returns once they answer); old ones finish
        what they hold, then exit."""
        self.generation += 1
        self.write()
        subprocess.run([NGINX, "-c", str(self.directory / "nginx.conf"), "-s", "reload"], check=True,
                       stderr=subprocess.DEVNULL)
        self.wait_for_generation()

    def wait_for_generation(self) -> None:
        """Until the new workers answer and the old ones have exited: an old worker still
        accepting would route by the previous membership."""
        assert self.process is not None
        deadline = time.monotonic() + 30
        while _generation(self.url("api-gateway")) != str(self.generation) or len(_children(self.process.pid)) > 1:
            if time.monotonic() > deadline:
                raise SystemExit(f"nginx did not load configuration {self.generation}; see {self.directory}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (nginx's workers, for its master)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _generation(url: str) -> str | None:
    try:
        with urllib.request.urlopen(f"{url}/__generation", timeout=1) as response:
            return response.read().decode()
    except OSError:
        return None


class Platform:
    def __init__(self, processes: Processes, balancers: Balancers, timeline: Timeline) -> None:
        self.processes = processes
        self.balancers = balancers
        self.timeline = timeline
        self.restarts = 0
        lb = balancers.url
        self.env = {
            "user-service": {},
            "notification-service": {"USER_SERVICE_URL": lb("user-service")},
            "event-streaming": {"JWKS_URL": f"{lb('user-service')}/.well-known/jwks.json"},
            "api-gateway": {
                "USER_SERVICE_URL": lb("user-service"), "EVENT_STREAMING_URL": lb("event-streaming"),
                "NOTIFICATION_SERVICE_URL": lb("notification-service"),
                "JWKS_URL": f"{lb('user-service')}/.well-known/jwks.json",
                # The front nginx is the gateways' only client here.
                "FORWARDED_ALLOW_IPS": "127.0.0.1",
            },
        }

    def start(self, name: str) -> Replica:
        return self.processes.start(name, SHUTDOWN_DRAIN_SECONDS=DRAIN_SECONDS, **self.env[name])

    def bring_up(self, replicas: dict[str, int]) -> None:
        self.balancers.start()
        for name in ROLLING_ORDER:
            self.balancers.members[name] = [self.start(name) for _ in range(replicas[name])]
            self.balancers.reload()

    def replace(self, name: str, old: Replica) -> None:
        new = self.start(name)
        members = self.balancers.members[name]
        members.append(new)
        self.balancers.reload()
        members.remove(old)
        self.balancers.reload()
        status = old.terminate()
        self.restarts += 1
        self.timeline.mark(f"{name}: :{old.port} replaced by :{new.port} (old exited {status})")


class Clients:
    """Signed-in clients, each a loop of reads, a refresh, a publish and now and then a login."""

    def __init__(self, load: Load, gateway: str) -> None:
        self.load = load
        self.gateway = gateway
        self.stop = asyncio.Event()

    async def run(self, http: aiohttp.ClientSession, tokens: dict, email: str) -> None:
        turn = 0
        while not self.stop.is_set():
            turn += 1
            auth = {"Authorization": f"Bearer {tokens['access_token']}"}
            await self.load.send(http, "me", "GET", f"{self.gateway}/api/v1/users/me", headers=auth)
            await self.load.send(http, "publish", "POST", f"{self.gateway}/api/v1/events",
                                 {"type": "app.drill_tick", "payload": {"turn": turn}},
                                 headers={**auth, "Idempotency-Key": uuid.uuid4().hex})
            if turn % 5 == 0:
                status, body = await self.load.send(http, "refresh", "POST", f"{self.gateway}/api/v1/auth/refresh",
                                                    {"refresh_token": tokens["refresh_token"]})
                if status == 200 and isinstance(body, dict):
                    tokens.update(body)
            if turn % 20 == 0:
                status, body = await self.load.send(http, "login", "POST", f"{self.gateway}/api/v1/auth/login",
                                                    {"email": email, "password": PASSWORD})
                if status == 200 and isinstance(body, dict):
                    tokens.update(body)
            await asyncio.sleep(0.05)  # a client's think time between its requests


async def run(args: argparse.Namespace, platform: Platform, timeline: Timeline) -> dict:
    load = Load(timeline)
    gateway = platform.balancers.url("api-gateway")
    # One connection per request: this client is not what the drill measures, so it must not
    # meet keep-alive connections that the front nginx closes when it reloads.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        clients = Clients(load, gateway)
        sessions = []
        for _ in range(args.clients):
            tokens = await verified_session(http, gateway, platform.balancers.url("notification-service"))
            async with http.get(f"{gateway}/api/v1/users/me",
                                headers={"Authorization": f"Bearer {tokens['access_token']}"}) as response:
                sessions.append((tokens, (await response.json())["email"]))
        begun = timeline.mark(f"{args.clients} signed-in clients; load starts")
        tasks = [asyncio.create_task(clients.run(http, tokens, email)) for tokens, email in sessions]
        deadline = time.monotonic() + args.duration
        while time.monotonic() < deadline or platform.restarts == 0:
            for name in args.services:
                for old in list(platform.balancers.members[name]):
                    await asyncio.to_thread(platform.replace, name, old)
        await asyncio.sleep(1.0)  # requests sent while the last replica drained come back
        clients.stop.set()
        await asyncio.gather(*tasks)
        ended = timeline.mark("load stopped")
    outcomes = load.between(begun, ended)
    failed = [o for o in outcomes if not 200 <= o.status < 300]
    by_kind: dict[str, dict[str, int]] = {}
    for outcome in failed:
        kinds = by_kind.setdefault(outcome.kind, {})
        key = f"{outcome.status} {outcome.problem}".strip()
        kinds[key] = kinds.get(key, 0) + 1
    if failed:
        timeline.mark(f"failed by kind and status: {by_kind}")
    return {"requests": len(outcomes), "failed": len(failed), "by_status": load.by_status(begun, ended),
            "restarts": platform.restarts, "seconds": round(ended - begun, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of rolling restarts (at least one round)")
    parser.add_argument("--clients", type=int, default=6, help="signed-in clients sending the load")
    parser.add_argument("--services", default=",".join(ROLLING_ORDER),
                        help="which services' replicas to restart, in this order (comma-separated)")
    parser.add_argument("--lean", action="store_true",
                        help="one replica of the services not restarted (a shorter start-up)")
    parser.add_argument("--keep", action="store_true", help="keep the drill's directory (logs, data)")
    args = parser.parse_args()
    args.services = [name for name in args.services.split(",") if name]
    unknown = sorted(set(args.services) - set(ROLLING_ORDER))
    if unknown:
        parser.error(f"unknown service {', '.join(unknown)}; choose from {', '.join(ROLLING_ORDER)}")
    ensure_debian_packages(("nginx-light", NGINX))
    timeline = Timeline()
    with workdir(args.keep) as directory:
        postgres = OwnPostgres(directory / "postgres")
        redis = OwnRedis(directory)
        processes = Processes(directory, {"DATABASE_URL": postgres.url, "REDIS_URL": redis.url})
        balancers = Balancers(directory)
        platform = Platform(processes, balancers, timeline)
        try:
            replicas = {name: 1 if args.lean and name not in args.services else 2 for name in ROLLING_ORDER}
            platform.bring_up(replicas)
            timeline.mark(f"platform ready behind nginx: {replicas}")
            result = asyncio.run(run(args, platform, timeline))
        finally:
            processes.stop()
            balancers.stop()
            redis.stop()
            postgres.close()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
