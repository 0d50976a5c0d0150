"""SECRETS_BACKEND=aws against moto's server: the environment's JSON secret, rotation through the
cache, and every way reading it can fail said in one line that carries no secret value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from prognetwork.kit.secrets import AwsSecretsManagerSource, Secrets, SecretsUnavailable
from prognetwork.kit.settings import Settings
from prognetwork.registry import services
from prognetwork.users.keys import generate_pem
from tests.helpers.moto_server import REGION, moto_server
from tests.helpers.paths import ROOT
from tests.helpers.ports import free_port

VALUE = "Zt9xv8Lr3mWqJp7Ks2Vn5Hc8"  # never to be seen in a message


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def moto():
    with moto_server() as server:
        yield server


@pytest.fixture
def aws_env(moto, monkeypatch):
    for name, value in moto.env.items():
        monkeypatch.setenv(name, value)
    return moto.env


def new_secret(moto, document: dict[str, str], environment: str | None = None) -> str:
    secret_id = f"prognetwork/{environment or 'test-' + uuid.uuid4().hex[:8]}/app"
    moto.client("secretsmanager").create_secret(Name=secret_id, SecretString=json.dumps(document))
    return secret_id


def put(moto, secret_id: str, document: dict[str, str]) -> None:
    moto.client("secretsmanager").put_secret_value(SecretId=secret_id, SecretString=json.dumps(document))


def test_each_property_of_the_environments_secret_is_a_secret(moto, aws_env):
    environment = f"staging{uuid.uuid4().hex[:6]}"
    new_secret(moto, {"SENDGRID_API_KEY": VALUE, "LIMITS": {"a": 1}}, environment)
    settings = Settings(SECRETS_BACKEND="aws", SECRETS_AWS_SECRET_ID=f"prognetwork/{environment}/app")
    assert settings.secrets.require("SENDGRID_API_KEY").get_secret_value() == VALUE
    assert json.loads(settings.secrets.require("LIMITS").get_secret_value()) == {"a": 1}
    assert settings.secrets.get("ABSENT_FROM_THE_SECRET") is None
    assert Settings(PROG_ENV="production", SECRETS_BACKEND="aws").aws_secret_id == "prognetwork/production/app"


def test_a_new_version_is_read_after_the_ttl_or_at_once_on_refresh(moto, aws_env):
    secret_id = new_secret(moto, {"API_KEY": "first-value"})
    clock = Clock()
    secrets = Secrets([AwsSecretsManagerSource(secret_id, REGION)], ttl=60, clock=clock)
    assert secrets.require("API_KEY").get_secret_value() == "first-value"
    put(moto, secret_id, {"API_KEY": "rotated-value"})
    clock.now += 59
    assert secrets.require("API_KEY").get_secret_value() == "first-value"  # still cached
    clock.now += 2
    assert secrets.require("API_KEY").get_secret_value() == "rotated-value"
    put(moto, secret_id, {"API_KEY": "third-value"})
    clock.now += 5
    assert secrets.get("API_KEY").get_secret_value() == "rotated-value"
    assert secrets.refresh("API_KEY").get_secret_value() == "third-value"  # a server refused the old one


def test_a_secret_read_before_is_served_while_the_store_cannot_be_read(moto, aws_env, monkeypatch):
    secret_id = new_secret(moto, {"API_KEY": VALUE})
    clock = Clock()
    secrets = Secrets([AwsSecretsManagerSource(secret_id, REGION)], ttl=10, clock=clock)
    assert secrets.require("API_KEY").get_secret_value() == VALUE
    moto.client("secretsmanager").delete_secret(SecretId=secret_id, ForceDeleteWithoutRecovery=True)
    clock.now += 11
    assert secrets.require("API_KEY").get_secret_value() == VALUE
    with pytest.raises(SecretsUnavailable, match="does not exist"):
        secrets.get("NEVER_READ")


def errors_of(source: AwsSecretsManagerSource) -> str:
    with pytest.raises(SecretsUnavailable) as caught:
        source.fetch("API_KEY")
    message = str(caught.value)
    assert VALUE not in message and "\n" not in message
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)  # no botocore chain
    return message


def test_a_missing_secret_names_the_secret_and_the_setting(moto, aws_env):
    message = errors_of(AwsSecretsManagerSource("prognetwork/nowhere/app", REGION))
    assert message == (f"AWS Secrets Manager secret prognetwork/nowhere/app does not exist in region {REGION}: "
                       "create it, or name the right one with SECRETS_AWS_SECRET_ID")


def test_a_secret_that_is_not_a_json_object_is_refused_without_its_text(moto, aws_env):
    secret_id = f"prognetwork/plain-{uuid.uuid4().hex[:6]}/app"
    moto.client("secretsmanager").create_secret(Name=secret_id, SecretString=VALUE)
    assert "is not a JSON object" in errors_of(AwsSecretsManagerSource(secret_id, REGION))


def test_no_region_no_credentials_and_no_endpoint_are_each_said(moto, aws_env, monkeypatch, tmp_path):
    secret_id = new_secret(moto, {"API_KEY": VALUE})
    assert errors_of(AwsSecretsManagerSource(secret_id, None)) == (
        "SECRETS_BACKEND=aws needs a region: set AWS_REGION (or AWS_DEFAULT_REGION)")

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                 "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    assert errors_of(AwsSecretsManagerSource(secret_id, REGION)).startswith(
        f"no AWS credentials to read AWS Secrets Manager secret {secret_id}")

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    assert errors_of(AwsSecretsManagerSource(secret_id, REGION)).startswith("cannot reach AWS Secrets Manager")


@pytest.fixture(scope="module")
def enforcing_moto():
    """A moto server that checks IAM after the three calls that set it up: a user with no policy
    (so denied), its access key, and the secret."""
    os.environ["INITIAL_NO_AUTH_ACTION_COUNT"] = "3"  # read by the child moto_server
    try:
        with moto_server() as server:
            iam = server.client("iam")
            iam.create_user(UserName="reader")
            key = iam.create_access_key(UserName="reader")["AccessKey"]
            server.client("secretsmanager").create_secret(Name="prognetwork/denied/app",
                                                          SecretString=json.dumps({"API_KEY": VALUE}))
            yield server, key
    finally:
        del os.environ["INITIAL_NO_AUTH_ACTION_COUNT"]


@pytest.mark.parametrize("known_key", [True, False])
def test_access_denied_and_unknown_credentials_are_said(enforcing_moto, monkeypatch, known_key):
    server, key = enforcing_moto
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"] if known_key else "AKIAUNKNOWNUNKNOWN00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    message = errors_of(AwsSecretsManagerSource("prognetwork/denied/app", REGION))
    assert message.startswith("access denied reading AWS Secrets Manager secret prognetwork/denied/app")
    assert "secretsmanager:GetSecretValue" in message


# `prog config check` with SECRETS_BACKEND=aws: every secret each service declares is read.


def production_secret() -> dict[str, str]:
    return {
        "DATABASE_URL": "postgresql://prog:Vq8tX2mZr5Lw@db.internal:5432/prog?sslmode=require",
        "REDIS_URL": "rediss://:Vq8tX2mZr5Lw@cache.internal:6379/0",
        "JWT_SIGNING_KEYS": generate_pem(),
        "SENDGRID_API_KEY": "SG.4fQ1c0b2Zt9xv8Lr3mWq.Jp7Ks2Vn5Hc8Rd1Tg4Yb6Ne9Ua3",
        "STRIPE_SECRET_KEY": "sk_live_51Hx4fQ1c0b2Zt9xv8Lr3mWqJp7Ks2Vn5Hc8Rd1Tg4Yb6",
        "STRIPE_WEBHOOK_SECRET": "whsec_Jp7Ks2Vn5Hc8Rd1Tg4Yb6Ne9Ua3",
    }


def production_env(moto, secret_id: str) -> dict[str, str]:
    """A production configuration whose secrets, DATABASE_URL and REDIS_URL included, are in AWS."""
    return {
        **moto.env,
        "PROG_ENV": "production",
        "SECRETS_BACKEND": "aws",
        "SECRETS_AWS_SECRET_ID": secret_id,
        "APP_URL": "https://app.prognetwork.com",
        "JWT_ISSUER": "https://api.prognetwork.com",
        "FORWARDED_ALLOW_IPS": "10.0.0.0/16",
        "BILLING_PLANS": json.dumps([{"name": "free", "seats": 3},
                                     {"name": "pro", "price_id": "price_1QpR0Zt9xv8Lr3mW", "seats": 20}]),
    }


def config_check(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "VIRTUAL_ENV")}
    # Wide enough that rich prints each problem on one line.
    return subprocess.run([sys.executable, "-m", "prognetwork", "config", "check"], env={**base, "COLUMNS": "400", **env},
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def problem_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert VALUE not in result.stdout + result.stderr
    return [line.strip()[2:] for line in result.stdout.splitlines() if line.strip().startswith("- ")]


def every_problem(monkeypatch, env: dict[str, str]) -> list[str]:
    """What `prog config check` lists for `env`: every problem of every service, each once."""
    for name in [n for n in os.environ if n.startswith(("AWS_", "DATABASE_", "REDIS_", "SECRETS_", "PROG_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    found: dict[str, None] = {}
    for spec in services().values():
        found.update(dict.fromkeys(spec.settings().problems(spec.needs, spec.secrets)))
    assert VALUE not in "".join(found)
    return list(found)


def test_a_production_configuration_whose_secrets_are_all_in_aws_is_accepted(moto, monkeypatch):
    assert every_problem(monkeypatch, production_env(moto, new_secret(moto, production_secret()))) == []


def test_config_check_reads_every_declared_secret_from_aws(moto):
    document = production_secret()
    del document["STRIPE_WEBHOOK_SECRET"]
    document["SENDGRID_API_KEY"] = "changeme"
    secret_id = new_secret(moto, document)
    result = config_check(production_env(moto, secret_id))
    assert result.returncode == 1, result.stdout + result.stderr
    lines = problem_lines(result)
    assert sorted(line.partition(" (")[0] for line in lines) == [
        "secret SENDGRID_API_KEY looks like a placeholder or test value", "secret STRIPE_WEBHOOK_SECRET is missing"]
    assert (f"secret STRIPE_WEBHOOK_SECRET is missing (add it to AWS Secrets Manager secret {secret_id} as a "
            "property, or set it in the environment) (billing-service)") in lines


@pytest.mark.parametrize("case", ["missing secret", "missing region", "access denied"])
def test_configuration_problems_say_in_one_line_why_aws_cannot_be_read(moto, enforcing_moto, monkeypatch, case):
    env = production_env(moto, "prognetwork/absent/app")
    expected = ("AWS Secrets Manager secret prognetwork/absent/app does not exist in region eu-west-1: create it, "
                "or name the right one with SECRETS_AWS_SECRET_ID")
    if case == "missing region":
        env = {k: v for k, v in env.items() if k not in ("AWS_REGION", "AWS_DEFAULT_REGION")}
        expected = "SECRETS_BACKEND=aws needs a region: set AWS_REGION (or AWS_DEFAULT_REGION)"
    if case == "access denied":
        server, key = enforcing_moto
        env.update(SECRETS_AWS_SECRET_ID="prognetwork/denied/app", AWS_ENDPOINT_URL=server.url,
                   AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])
        del env["AWS_SESSION_TOKEN"]
        expected = ("access denied reading AWS Secrets Manager secret prognetwork/denied/app (HTTP 403): allow "
                    "secretsmanager:GetSecretValue on it for this workload's role, and check that role's credentials")
    problems = every_problem(monkeypatch, env)
    assert [p for p in problems if "AWS" in p or "secret" in p] == [expected], problems
