"""The backup CronJobs as every overlay renders them (deploy/k8s/base/backup.yaml): a daily backup
and a weekly verification, one run at a time, bounded in time, with the user service's image and
the service account the backup role trusts; and the commands they run, in their pods' own
environment (the kubelet's variable expansion done here), make and verify a real backup of a real
database into S3 (moto's server, a bucket and KMS key named as the environment's)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import uuid

import pytest

from prognetwork.jobs.backup_settings import BackupSettings
from prognetwork.kit import migrations
from tests.helpers.databases import create_database, drop_database, with_database
from tests.helpers.k8s import K8S_OVERLAYS, matches, of
from tests.helpers.moto_server import moto_server
from tests.helpers.paths import ROOT
from tests.helpers.threads import in_thread

ENV_OVERLAYS = ["development", "staging", "production"]
JOBS = {"backup": "backup", "backup-verify": "verify"}  # CronJob → its one container
ACCOUNT = "123456789012"
COMPUTE_STACK = ROOT / "deploy" / "aws" / "compute.yaml"


def cron(objects, name: str) -> tuple[dict, dict, dict]:
    """The CronJob, its pod spec and its one container."""
    job = of(objects, "CronJob", name)
    spec = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["name"] == JOBS[name]
    return job, spec, container


def period_seconds(schedule: str) -> int:
    """How often a `m h * * *` (daily) or `m h * * d` (weekly) schedule runs."""
    minute, hour, day, month, weekday = schedule.split()
    assert minute.isdigit() and hour.isdigit() and (day, month) == ("*", "*"), schedule
    return 86400 if weekday == "*" else 7 * 86400


@pytest.fixture(params=K8S_OVERLAYS)
def rendered(request, k8s_render):
    return request.param, k8s_render(f"overlays/{request.param}")


def test_a_daily_backup_and_a_weekly_verification_one_run_at_a_time_each_bounded(rendered):
    _, objects = rendered
    periods = {}
    for name in JOBS:
        job, spec, container = cron(objects, name)
        s = job["spec"]
        periods[name] = period_seconds(s["schedule"])
        assert s["timeZone"] == "Etc/UTC" and s.get("suspend") is not True
        assert s["concurrencyPolicy"] == "Forbid"
        # A late start still happens, but never runs into the next one.
        assert 0 < s["startingDeadlineSeconds"] < periods[name]
        assert s["successfulJobsHistoryLimit"] >= 1 and s["failedJobsHistoryLimit"] >= s["successfulJobsHistoryLimit"]
        template = s["jobTemplate"]["spec"]
        assert 1 <= template["backoffLimit"] <= 3
        assert 0 < template["activeDeadlineSeconds"] < periods[name]
        assert template["ttlSecondsAfterFinished"] >= 86400
        assert spec["restartPolicy"] in ("Never", "OnFailure")
        rules = template["podFailurePolicy"]["rules"]
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
        # Exit 2 (configuration, unreachable for good) is never retried.
        fail_codes = [r["onExitCodes"] for r in rules if r["action"] == "FailJob"]
        assert [c["values"] for c in fail_codes if c["containerName"] == container["name"]] in ([[2]], [[1, 2]])
    assert periods == {"backup": 86400, "backup-verify": 7 * 86400}
    # The backup runs before the nightly retention jobs remove what it should still hold.
    hour_minute = {n: tuple(map(int, of(objects, "CronJob", n)["spec"]["schedule"].split()[1::-1]))
                   for n in ("backup", "audit-retention")}  # fmt: skip
    assert hour_minute["backup"] < hour_minute["audit-retention"]


def test_the_jobs_run_prog_backup_with_the_user_service_image_and_the_backup_account(rendered):
    _, objects = rendered
    (users,) = of(objects, "Rollout", "user-service")["spec"]["template"]["spec"]["containers"]
    _, backup_spec, backup = cron(objects, "backup")
    _, verify_spec, verify = cron(objects, "backup-verify")
    assert backup["command"] == ["sh", "-c", "prog backup create && prog backup prune"]
    assert verify["command"] == ["prog", "backup", "verify", "latest"]
    for spec, c in ((backup_spec, backup), (verify_spec, verify)):
        assert c["image"] == users["image"]
        assert c["envFrom"] == users["envFrom"]
        assert spec["serviceAccountName"] == "prog-backup" and spec["automountServiceAccountToken"] is False
        assert "ports" not in c
    account = of(objects, "ServiceAccount", "prog-backup")
    assert account["automountServiceAccountToken"] is False
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    assert re.fullmatch(rf"arn:aws:iam::{ACCOUNT}:role/prognetwork-(ENVIRONMENT|staging|production)-backup", role)
    # The role compute.yaml makes trusts exactly this account, in namespace prog-<environment>.
    stack = COMPUTE_STACK.read_text()
    assert 'RoleName: !Sub "prognetwork-${Environment}-backup"' in stack
    assert re.search(r"BackupServiceAccount:\n(?:\s+.+\n)*?\s+Default: prog-backup\n", stack)


def test_only_postgresql_the_pushgateway_and_public_https_are_reachable(rendered):
    """The backup pods' own policy (test_k8s_policy checks every workload's paths against the
    architecture); here: the Pushgateway it allows is where PUSHGATEWAY_URL points."""
    _, objects = rendered
    policy = of(objects, "NetworkPolicy", "backup")["spec"]
    for name in JOBS:
        job, _, c = cron(objects, name)
        assert matches(policy["podSelector"], job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"])
        url = next(e["value"] for e in c["env"] if e["name"] == "PUSHGATEWAY_URL")
        assert url == "http://pushgateway.monitoring.svc:9091"
    assert "ingress" not in policy and policy["policyTypes"] == ["Ingress", "Egress"]
    pushgateway = [rule for rule in policy["egress"] if any("namespaceSelector" in to for to in rule["to"])]
    assert pushgateway == [{
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                "podSelector": {"matchLabels": {"app.kubernetes.io/name": "pushgateway"}}}],
        "ports": [{"protocol": "TCP", "port": 9091}]}]  # fmt: skip


def pod_environment(objects, name: str) -> dict[str, str]:
    """The container's environment as the kubelet builds it: prog-config, its own variables with
    fieldRefs to the pod's labels resolved and $(VAR) references expanded."""
    job, _, c = cron(objects, name)
    labels = job["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    (config,) = [o for o in of(objects, "ConfigMap") if o["metadata"]["name"].startswith("prog-config")]
    env = dict(config["data"])
    for item in c["env"]:
        source = item.get("valueFrom", {})
        if "fieldRef" in source:
            label = re.fullmatch(r"metadata\.labels\['(.+)'\]", source["fieldRef"]["fieldPath"])[1]
            value = labels[label]
        elif "secretKeyRef" in source:
            value = f"<secret {source['secretKeyRef']['key']}>"
        else:
            value = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]), item["value"])
        env[item["name"]] = value
    return env


@pytest.mark.parametrize("name", ENV_OVERLAYS)
def test_the_settings_load_from_the_pods_environment(k8s_render, name, monkeypatch):
    objects = k8s_render(f"overlays/{name}")
    env = pod_environment(objects, "backup")
    for key in list(os.environ):
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = BackupSettings()
    assert settings.env == name
    assert settings.target_location == f"s3://prognetwork-{name}-backups-{ACCOUNT}/postgresql"
    assert settings.own_problems() == []
    assert env["S3_KMS_KEY_ID"] == f"arn:aws:kms:us-east-1:{ACCOUNT}:alias/prognetwork-{name}-backups"
    assert pod_environment(objects, "backup-verify") == env


@pytest.fixture
def database(servers):
    name = f"prog_test_k8s_backup_{uuid.uuid4().hex[:10]}"
    in_thread(asyncio.run, create_database(servers.pg_admin_url, name))
    url = with_database(servers.pg_admin_url, name)
    in_thread(migrations.upgrade, url)
    yield url
    in_thread(asyncio.run, drop_database(servers.pg_admin_url, name))


def test_the_cronjobs_commands_back_up_and_verify_in_their_pods_environment(k8s_render, database):
    """Production's two containers, run here as their pods would run them: the first makes a
    backup in the environment's bucket under its KMS key (and prunes), the second proves it."""
    objects = k8s_render("overlays/production")
    env = pod_environment(objects, "backup")
    bucket = env["BACKUP_TARGET"].removeprefix("s3://").partition("/")[0]
    with moto_server() as aws:
        region = env["AWS_REGION"]
        kms = aws.client("kms", region)
        key_id = kms.create_key(Description="backups")["KeyMetadata"]["KeyId"]
        kms.create_alias(AliasName="alias/" + env["S3_KMS_KEY_ID"].split(":alias/")[1], TargetKeyId=key_id)
        aws.client("s3", region).create_bucket(Bucket=bucket)
        path = f"{ROOT / '.venv' / 'bin'}:{os.environ['PATH']}"
        run_env = {**aws.env, **env, "DATABASE_URL": database, "PATH": path, "HOME": os.environ.get("HOME", "/tmp"),
                   # Nothing answers at the cluster's Pushgateway here: tests/e2e/test_backup_alerts.py has a real one.
                   "PUSHGATEWAY_URL": ""}  # fmt: skip
        for name in JOBS:
            _, _, c = cron(objects, name)
            done = subprocess.run(c["command"], env=run_env, capture_output=True, text=True, timeout=120, cwd=ROOT)
            assert done.returncode == 0, (name, done.stdout, done.stderr)
        s3 = aws.client("s3", region)
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
        assert len(keys) == 2 and all(k.startswith("postgresql/") for k in keys), keys
        head = s3.head_object(Bucket=bucket, Key=keys[0])
        assert head["ServerSideEncryption"] == "aws:kms"
        assert "prognetwork-production-backups" in head["SSEKMSKeyId"] or head["SSEKMSKeyId"].endswith(key_id)

