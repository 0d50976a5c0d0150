"""The order Argo CD applies the rendered objects in: the migration Job runs after everything it
reads exists, on a first install and after a configuration change (a hash-named ConfigMap of a new
name), and before the workloads that expect its schema.

Argo CD applies by phase (PreSync, Sync, PostSync; objects that are no hook are in Sync), then by
`argocd.argoproj.io/sync-wave` (0 when unset), and waits for each wave to be healthy (a Job: to
have succeeded) before the next."""

from __future__ import annotations

import copy

import pytest

from tests.helpers.k8s import K8S_OVERLAYS, of

PHASES = ("PreSync", "Sync", "PostSync")
HOOK = "argocd.argoproj.io/hook"
WAVE = "argocd.argoproj.io/sync-wave"
WORKLOADS = {"Deployment", "Rollout", "CronJob", "Job", "StatefulSet", "DaemonSet"}


def order(obj: dict) -> tuple[int, int]:
    annotations = obj["metadata"].get("annotations") or {}
    phase = annotations.get(HOOK, "Sync")
    assert phase in PHASES, f"{obj['kind']}/{obj['metadata']['name']}: hook {phase!r}"
    return PHASES.index(phase), int(annotations.get(WAVE, "0"))


def template(workload: dict) -> dict:
    spec = workload["spec"]
    return (spec["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else spec)["template"]


def reads(workload: dict) -> set[tuple[str, str]]:
    """The (kind, name) of every ConfigMap, Secret and ServiceAccount a workload's pods need."""
    spec = template(workload)["spec"]
    needed = {("ServiceAccount", spec.get("serviceAccountName", "default"))}
    for volume in spec.get("volumes", ()):
        if "configMap" in volume:
            needed.add(("ConfigMap", volume["configMap"]["name"]))
        if "secret" in volume and not volume["secret"].get("optional"):
            needed.add(("Secret", volume["secret"]["secretName"]))
    for c in spec.get("initContainers", []) + spec["containers"]:
        for source in c.get("envFrom", ()):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source and not source[key].get("optional"):
                    needed.add((kind, source[key]["name"]))
        for item in c.get("env", ()):
            for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                ref = item.get("valueFrom", {}).get(key)
                if ref and not ref.get("optional"):
                    needed.add((kind, ref["name"]))
    return needed


def makers(objects: list[dict], kind: str, name: str) -> list[dict]:
    """The objects Argo CD applies that make (kind, name) exist: the object itself, or for a Secret
    the ExternalSecret whose target it is (with the SecretStore and ServiceAccount it reads through)."""
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if kind == "Secret":
        for external in of(objects, "ExternalSecret"):
            if external["spec"]["target"]["name"] == name:
                store = external["spec"]["secretStoreRef"]
                found.append(external)
                found += makers(objects, store["kind"], store["name"])
    if kind in {"SecretStore", "ClusterSecretStore"}:
        for stored in found[:]:
            account = stored["spec"]["provider"]["aws"]["auth"]["jwt"]["serviceAccountRef"]["name"]
            found += makers(objects, "ServiceAccount", account)
    return found


def order_violations(objects: list[dict]) -> list[str]:
    """Why the migration Job could start before what it reads exists, or after a workload."""
    problems = []
    job = of(objects, "Job", "prog-migrate")
    for kind, name in sorted(reads(job)):
        found = makers(objects, kind, name)
        if not found:
            problems.append(f"{kind}/{name}: rendered nowhere")
        for maker in found:
            if order(maker) >= order(job):
                problems.append(f"{maker['kind']}/{maker['metadata']['name']} {order(maker)} is not applied "
                                f"before Job/prog-migrate {order(job)}")
    for workload in objects:
        if workload["kind"] in WORKLOADS - {"Job"} and order(workload) <= order(job):
            problems.append(f"{workload['kind']}/{workload['metadata']['name']} {order(workload)} may start "
                            f"before Job/prog-migrate {order(job)} has migrated")
    # Every step on the way waits for the one before: the store before the ExternalSecret reading it.
    for external in of(objects, "ExternalSecret"):
        store = external["spec"]["secretStoreRef"]
        for maker in makers(objects, store["kind"], store["name"]):
            if order(maker) >= order(external):
                problems.append(f"{maker['kind']}/{maker['metadata']['name']} is not applied before "
                                f"ExternalSecret/{external['metadata']['name']}")
    return problems


@pytest.mark.parametrize("overlay", K8S_OVERLAYS)
def test_the_migration_job_runs_after_what_it_reads_and_before_the_workloads(k8s_render, overlay):
    objects = k8s_render(f"overlays/{overlay}")
    job = of(objects, "Job", "prog-migrate")
    needed = reads(job)
    # What it reads: the hash-named configuration, DATABASE_URL's Secret, its ServiceAccount.
    assert {kind for kind, _ in needed} == {"ConfigMap", "Secret", "ServiceAccount"}, needed
    assert order_violations(objects) == []
    # A hook is replaced on the next sync, not deleted as soon as it succeeds: its logs stay readable.
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"
    # Only the Job is a hook: what it reads stays an ordinary object that Argo CD tracks and prunes.
    assert [o["kind"] for o in objects if HOOK in (o["metadata"].get("annotations") or {})] == ["Job"]


def test_a_pre_sync_job_before_its_configuration_is_caught(k8s_render):
    """The artifact this replaced: a PreSync Job, with the ConfigMap and the ExternalSecret applied in
    the Sync phase, after it. The check names both."""
    objects = copy.deepcopy(k8s_render("overlays/staging"))
    for obj in objects:
        annotations = obj["metadata"].get("annotations") or {}
        annotations.pop(WAVE, None)
        if obj["kind"] == "Job":
            annotations[HOOK] = "PreSync"
    problems = " ".join(order_violations(objects))
    assert "ConfigMap/prog-config-" in problems and "ExternalSecret/prognetwork-secrets" in problems, problems
