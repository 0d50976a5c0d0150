"""Every service's OpenAPI, fuzzed with schemathesis against real processes: never a 5xx.

Each service is fuzzed through whatever its `/openapi.json` says when the test runs, so new
endpoints are covered without touching this file. Cases are schema-conforming and
schema-violating (schemathesis' positive and negative modes), sent with a valid user token,
a valid admin token or none. Generation is derandomized: a CI run sends the same requests
every time. The gateway is fuzzed on its own OpenAPI and, with every upstream's operations,
at the paths its route table exposes them.
"""

from __future__ import annotations

import json
import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from prognetwork.billing.settings import DEV_STRIPE_SECRET_KEY, DEV_STRIPE_WEBHOOK_SECRET
from prognetwork.gateway.settings import GatewaySettings
from tests.helpers.ports import free_port
from tests.helpers.processes import ServiceProcess, issuer_env, start_service
from tests.helpers.stripe_fake import running_stripe_fake
from tests.helpers.tokens import bearer, mint

pytestmark = pytest.mark.e2e

# Requests per service, spread evenly over its operations (each gets at least MIN_PER_OPERATION).
# FUZZ_CASES_PER_SERVICE raises it for a longer run (`make fuzz`).
CASES_PER_SERVICE = int(os.environ.get("FUZZ_CASES_PER_SERVICE", "300"))
MIN_PER_OPERATION = 25
REQUEST_TIMEOUT = 10
# An SSE response never ends by itself; its status and headers are all a case needs.
STREAMING_TYPES = ("text/event-stream",)
IDEMPOTENCY_KEY = "idempotency-key"
SENT = ("method", "url", "headers", "params", "data", "json", "files", "cookies")
HIGH_LIMITS = json.dumps({name: {"requests": 1_000_000, "window_seconds": 60}
                          for name in ("auth", "anonymous", "default")})


@dataclass
class Finding:
    label: str
    status: int
    body: str
    curl: str


@dataclass
class Run:
    sent: int = 0
    unsendable: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)


@pytest.fixture(scope="module")
def fuzz_env(database_url, redis_url, signing_key, tmp_path_factory) -> dict[str, str]:
    secrets = tmp_path_factory.mktemp("fuzz-secrets")
    (secrets / "JWT_SIGNING_KEYS").write_text(signing_key)
    return {
        "PROG_ENV": "development",
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "PROG_STATE_DIR": str(tmp_path_factory.mktemp("fuzz-state")),
        "SECRETS_BACKEND": "file",
        "SECRETS_DIR": str(secrets),
        "SECRETS_CACHE_TTL_SECONDS": "0",
        # Fuzzing is a flood from one address: throttling would turn most cases into 429s.
        "LOGIN_ATTEMPTS_PER_ADDRESS": "1000000",
        "GATEWAY_RATE_LIMITS": HIGH_LIMITS,
        "LOG_LEVEL": "INFO",
    }


@pytest.fixture(scope="module")
def platform(fuzz_env, tmp_path_factory):
    """users, notifications, streaming, billing (on a Stripe fake) and the gateway in front of them."""
    logs = tmp_path_factory.mktemp("fuzz-logs")
    started: dict[str, ServiceProcess] = {}
    billing_port = free_port()
    webhooks = f"http://127.0.0.1:{billing_port}/v1/billing/webhooks/stripe"
    # With billing's development credentials: its secrets come from files here, and it has none.
    with running_stripe_fake([webhooks], logs, api_key=DEV_STRIPE_SECRET_KEY,
                             webhook_secret=DEV_STRIPE_WEBHOOK_SECRET) as stripe:
        try:
            started["users"] = start_service("user-service", fuzz_env, logs)
            upstreams = issuer_env(started["users"].url)
            billing_env = {**fuzz_env, **upstreams, "STRIPE_API_BASE": stripe.url}
            # Independent of each other once the user service (and its keys) is up: start together.
            with ThreadPoolExecutor(3) as pool:
                notifications = pool.submit(start_service, "notification-service", fuzz_env, logs)
                streaming = pool.submit(start_service, "event-streaming", {**fuzz_env, **upstreams}, logs)
                billing = pool.submit(start_service, "billing-service", billing_env, logs, billing_port)
                started["notifications"], started["streaming"] = notifications.result(), streaming.result()
                started["billing"] = billing.result()
            started["gateway"] = start_service("api-gateway", {
                **fuzz_env, **upstreams, "EVENT_STREAMING_URL": started["streaming"].url,
                "NOTIFICATION_SERVICE_URL": started["notifications"].url,
                "BILLING_SERVICE_URL": started["billing"].url,
            }, logs)
            yield started
        finally:
            for process in started.values():
                process.stop()


@pytest.fixture(scope="module")
def tokens(signing_key) -> list[dict[str, str]]:
    # Tokens verify everywhere (same key, development issuer); None fuzzes the unauthenticated path.
    tenant = uuid.uuid4()
    return [
        bearer(mint(signing_key, uuid.uuid4(), tid=tenant, tenant_role="owner")),
        bearer(mint(signing_key, uuid.uuid4(), role="admin", lifetime=3600)),
        {},
    ]


def load(process: ServiceProcess) -> schemathesis.schemas.BaseSchema:
    # The OpenAPI document is served on the ops port; the operations it lists on the main one.
    return schemathesis.openapi.from_url(f"{process.ops_url}/openapi.json")


def operations(schema) -> list:
    found = []
    for result in schema.get_all_operations():
        found.append(result.ok())  # an operation the schema cannot describe is itself a failure
    return found


def send_case(session: requests.Session, case, base_url: str, headers: dict[str, str], run: Run) -> None:
    """Send one case; count its status, and record it if the server failed."""
    kwargs = case.as_transport_kwargs(base_url=base_url, headers=headers)
    try:
        request = session.prepare_request(requests.Request(**{k: v for k, v in kwargs.items() if k in SENT}))
    except (ValueError, requests.exceptions.RequestException):
        # A header or URL no HTTP client can send (e.g. NUL in a header): not a request.
        run.unsendable += 1
        return
    # A connection per case: a reset then belongs to the case that caused it, not to a
    # kept-alive connection the server had already decided to close.
    request.headers["Connection"] = "close"
    label, curl = f"{case.method} {case.path}", case.as_curl_command(headers=headers)[:1000]
    try:
        response = session.send(request, stream=True, timeout=REQUEST_TIMEOUT, allow_redirects=False)
    except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeError):
        run.unsendable += 1
        return
    except requests.exceptions.RequestException as exc:  # reset, timeout: the server failed
        run.findings.append(Finding(label, 0, repr(exc)[:300], curl))
        return
    with response:
        streaming = response.headers.get("content-type", "").startswith(STREAMING_TYPES)
        body = "" if streaming else response.text
    run.sent += 1
    run.statuses[response.status_code] = run.statuses.get(response.status_code, 0) + 1
    if response.status_code >= 500:
        run.findings.append(Finding(label, response.status_code, body[:300], curl))


def fuzz_operation(session: requests.Session, operation, base_url: str, examples: int,
                   tokens: list[dict[str, str]], run: Run) -> None:
    strategy = st.one_of(
        operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
        operation.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    takes_key = IDEMPOTENCY_KEY in {p.name.lower() for p in operation.headers}

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)
    @given(case=strategy, auth=st.sampled_from(tokens), fresh_key=st.booleans())
    def check(case, auth, fresh_key) -> None:
        headers = dict(auth)
        if takes_key and fresh_key:
            # Generated keys repeat ("null", ""), so most writes would be replays or refusals;
            # a fresh key half the time lets generated bodies reach the database.
            headers[IDEMPOTENCY_KEY] = uuid.uuid4().hex
        send_case(session, case, base_url, headers, run)

    check()


def fuzz(cases: list[tuple[object, str]], tokens: list[dict[str, str]]) -> Run:
    """Hypothesis-generated cases of each (operation, base URL), CASES_PER_SERVICE in all."""
    run = Run()
    examples = max(MIN_PER_OPERATION, CASES_PER_SERVICE // max(1, len(cases)))
    with requests.Session() as session:
        for operation, base_url in cases:
            fuzz_operation(session, operation, base_url, examples, tokens, run)
    return run


def report(target: str, run: Run, process: ServiceProcess | None) -> None:
    print(f"{target}: {run.sent} requests, statuses {dict(sorted(run.statuses.items()))}, "
          f"{run.unsendable} unsendable")
    assert run.sent >= MIN_PER_OPERATION, f"{target}: too few requests reached the service"
    details = "\n".join(f"{f.status} {f.label}: {f.body}\n    {f.curl}" for f in run.findings[:10])
    assert not run.findings, f"{target}: {len(run.findings)} server errors\n{details}"
    if process is not None:
        errors = [line for line in process.log().splitlines() if '"level": "error"' in line][:5]
        assert not errors, f"{target} logged errors while fuzzed:\n" + "\n".join(errors)


@pytest.mark.parametrize("service", ["users", "notifications", "streaming", "billing"])
def test_service_openapi_fuzzing_finds_no_server_errors(platform, tokens, service):
    process = platform[service]
    found = operations(load(process))
    assert found, f"{service} documents no operations"
    run = fuzz([(op, process.url) for op in found], tokens)
    report(service, run, process)


# The platform's processes by the upstream name the gateway's route table gives each.
UPSTREAM_NAMES = {"users": "user-service", "notifications": "notification-service", "streaming": "event-streaming",
                  "billing": "billing-service"}


def gateway_paths(env: dict[str, str], upstream: str, path: str) -> str | None:
    """The gateway base URL prefix under which `upstream`'s `path` is reachable, if any."""
    # Settings' init arguments are not JSON-decoded as its environment variables are.
    settings_ = GatewaySettings(**{k: json.loads(v) if k.startswith("GATEWAY_") else v for k, v in env.items()})
    for route in settings_.routes:
        candidate = route.strip_prefix.rstrip("/") + path
        if candidate == route.prefix or candidate.startswith(route.prefix.rstrip("/") + "/"):
            return route.strip_prefix.rstrip("/") if route.upstream == UPSTREAM_NAMES[upstream] else None
    return None


def test_gateway_fuzzing_finds_no_server_errors(platform, tokens):
    gateway = platform["gateway"]
    env = {**gateway.env}
    cases = [(op, gateway.url) for op in operations(load(gateway))]
    for upstream in UPSTREAM_NAMES:
        for op in operations(load(platform[upstream])):
            prefix = gateway_paths(env, upstream, op.path)
            if prefix is not None:
                cases.append((op, gateway.url + prefix))
    assert cases, "the gateway exposes no operation"
    run = fuzz(cases, tokens)
    report("gateway", run, gateway)

