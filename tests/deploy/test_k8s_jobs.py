"""The batch jobs' CronJobs (event-retention, usage-report): daily, one run at a time, on spot
nodes in production within the interruption notice, and `prog job run` starting in each pod's
own environment."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.helpers.k8s import of
from tests.helpers.ports import free_port

JOBS = {"event-retention": "retention", "usage-report": "report"}
SPOT_NOTICE_SECONDS = 120
SPOT_TOLERATION = {"key": "spot-instance", "operator": "Equal", "value": "true", "effect": "NoSchedule"}
SPOT_PREFERENCE = {"key": "node-type", "operator": "In", "values": ["spot"]}


def pod_spec(cron: dict) -> dict:
    return cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]


def container(cron: dict) -> dict:
    (c,) = pod_spec(cron)["containers"]
    return c


def pod_environment(objects: list[dict], cron: dict) -> dict[str, str]:
    """The container's environment as the kubelet builds it: prog-config, then its own variables
    in order (`$(NAME)` expanded), the Secret's DATABASE_URL pointed at a port nothing listens on."""
    (config,) = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("prog-config")]
    env = dict(config["data"])
    for item in container(cron)["env"]:
        source = item.get("valueFrom", {})
        if "secretKeyRef" in source:
            assert source["secretKeyRef"] == {"name": "prognetwork-secrets", "key": item["name"]}
            value = f"postgresql://prog:Vq8tX2mZr5Lw@127.0.0.1:{free_port()}/prog?sslmode=require"
        elif "fieldRef" in source:
            assert source["fieldRef"] == {"fieldPath": "metadata.labels['environment']"}
            value = cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]["environment"]
        else:
            value = re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], item["value"])
        env[item["name"]] = value
    return env


@pytest.mark.parametrize("overlay", ["development", "staging", "production"])
def test_jobs_run_daily_one_at_a_time_and_stop_within_the_spot_notice(k8s_render, overlay):
    objects = k8s_render(f"overlays/{overlay}")
    for name, container_name in JOBS.items():
        cron = of(objects, "CronJob", name)
        spec, job, pod = cron["spec"], cron["spec"]["jobTemplate"]["spec"], pod_spec(cron)
        minute, hour, *every_day = spec["schedule"].split()
        assert every_day == ["*", "*", "*"] and spec["timeZone"] == "Etc/UTC", spec["schedule"]
        assert spec["concurrencyPolicy"] == "Forbid" and 0 < spec["startingDeadlineSeconds"] < 86400
        assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
        assert 0 < job["activeDeadlineSeconds"] < 86400 and 1 <= job["backoffLimit"] <= 6
        assert pod["restartPolicy"] == "Never"
        c = container(cron)
        assert c["name"] == container_name and c["command"] == ["prog", "job", "run", name]
        # SIGTERM comes with the notice: the job's own grace, then the kubelet's, end inside it.
        grace = float({e["name"]: e.get("value") for e in c["env"]}["JOB_GRACE_SECONDS"])
        assert grace < pod["terminationGracePeriodSeconds"] < SPOT_NOTICE_SECONDS, name
        # A reclaimed node costs no retry; a wrong configuration (exit 2) is not retried.
        rules = job["podFailurePolicy"]["rules"]
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]} in rules
        assert {"action": "FailJob",
                "onExitCodes": {"containerName": container_name, "operator": "In", "values": [2]}} in rules
        assert of(objects, "ServiceAccount", name)["automountServiceAccountToken"] is False


def test_jobs_prefer_spot_nodes_in_production_as_the_audit_purge_does(k8s_render):
    objects = k8s_render("overlays/production")
    audit = pod_spec(of(objects, "CronJob", "audit-retention"))
    for name in JOBS:
        pod = pod_spec(of(objects, "CronJob", name))
        assert pod["tolerations"] == [SPOT_TOLERATION] == audit["tolerations"]
        (preferred,) = pod["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        assert preferred["preference"]["matchExpressions"] == [SPOT_PREFERENCE]
        assert pod["affinity"] == audit["affinity"], "an on-demand node is the fallback, never excluded"
        assert "nodeSelector" not in pod
    for overlay in ("development", "staging"):
        for name in JOBS:
            pod = pod_spec(of(k8s_render(f"overlays/{overlay}"), "CronJob", name))
            assert "tolerations" not in pod and "affinity" not in pod, (overlay, name)


@pytest.mark.parametrize("overlay", ["staging", "production"])
def test_each_job_starts_in_its_pods_environment(k8s_render, overlay):
    """`prog job run` with the pod's own environment: the settings load (the retention, the
    archive location under the environment's prefix, the grace period) and it fails only at the
    database, which nothing answers here (exit 1)."""
    objects = k8s_render(f"overlays/{overlay}")
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    for name in JOBS:
        cron = of(objects, "CronJob", name)
        env = pod_environment(objects, cron)
        assert env["PROG_ENV"] == overlay and env["EVENT_RETENTION_DAYS"] == "400"
        if name == "event-retention":
            assert env["EVENT_ARCHIVE_LOCATION"] == f"s3://prognetwork-{overlay}-event-archive-123456789012/events"
        result = subprocess.run([sys.executable, "-m", "prognetwork", *container(cron)["command"][1:]],
                                env={**base, **env}, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and "cannot reach PostgreSQL" in result.stderr, result.stdout + result.stderr
