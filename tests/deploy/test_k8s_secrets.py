"""Secrets per environment: each reads its own AWS Secrets Manager secret through a store only its
namespace can use, and a key that is absent stops only the pods that need it.

`synced_secret` does what the External Secrets Operator does with the rendered ExternalSecret and a
secret's JSON (a `data` entry whose property is missing fails the whole sync; `dataFrom` extract
copies what is there); `unstartable` what the kubelet does with a pod whose Secret or key is missing."""

from __future__ import annotations

import copy

import pytest

from prognetwork.registry import services
from tests.helpers.k8s import of

SPECS = services()
ENVIRONMENTS = ["staging", "production"]
DATASTORE_URLS = {"postgres": "DATABASE_URL", "redis": "REDIS_URL"}
# Keys a service may use when present and does without otherwise (none is read today; the
# Stripe publishable key is the example an environment may or may not hold).
OPTIONAL_KEYS = {"STRIPE_PUBLISHABLE_KEY"}


def required_keys(name: str) -> set[str]:
    """What a service cannot start without outside development: its datastores' URLs and the
    secrets its spec reads (`prog config check` refuses it otherwise)."""
    spec = SPECS[name]
    return {DATASTORE_URLS[need] for need in spec.needs} | set(spec.secrets)


def synced_secret(external: dict, stored: dict[str, str]) -> dict[str, str] | None:
    """The Secret the operator writes from `stored` (the secret's properties), or None when the
    sync fails."""
    spec = external["spec"]
    data = {}
    for source in spec.get("dataFrom", ()):
        data.update(stored)  # extract: every property, as it is
        assert set(source) == {"extract"}, source
    for item in spec.get("data", ()):
        prop = item["remoteRef"].get("property")
        if prop not in stored:
            return None
        data[item["secretKey"]] = stored[prop]
    return data


def template(workload: dict) -> dict:
    spec = workload["spec"]
    return (spec["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else spec)["template"]


def unstartable(objects: list[dict], secret: str, data: dict[str, str] | None) -> set[str]:
    """The workloads whose pods cannot start when Secret `secret` holds `data` (None: no Secret)."""
    stuck = set()
    for workload in objects:
        if workload["kind"] not in {"Deployment", "Rollout", "Job", "CronJob"}:
            continue
        spec = template(workload)["spec"]
        refs = [(v["secret"], [i["key"] for i in v["secret"].get("items", ())]) for v in spec.get("volumes", ())
                if v.get("secret", {}).get("secretName") == secret]
        refs += [(e["valueFrom"]["secretKeyRef"], [e["valueFrom"]["secretKeyRef"]["key"]])
                 for c in spec["containers"] for e in c.get("env", ())
                 if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret]
        for ref, keys in refs:
            if not ref.get("optional") and (data is None or any(k not in data for k in keys)):
                stuck.add(workload["metadata"]["name"])
    return stuck


@pytest.fixture(params=ENVIRONMENTS)
def env(request, k8s_render):
    return request.param, k8s_render(f"overlays/{request.param}")


def full_secret() -> dict[str, str]:
    keys = set().union(*(required_keys(name) for name in SPECS)) | OPTIONAL_KEYS
    return {key: f"value of {key}" for key in sorted(keys)}


def test_each_environment_reads_its_own_secret_through_its_own_store(env):
    name, objects = env
    external = of(objects, "ExternalSecret", "prognetwork-secrets")
    # The name the services' own AWS backend reads too: prognetwork/<PROG_ENV>/app.
    assert external["spec"]["dataFrom"] == [{"extract": {"key": f"prognetwork/{name}/app"}}]
    ref = external["spec"]["secretStoreRef"]
    assert ref["kind"] == "SecretStore", "a ClusterSecretStore would serve other namespaces too"
    store = of(objects, "SecretStore", ref["name"])
    assert store["metadata"]["namespace"] == f"prog-{name}"
    assert not of(objects, "ClusterSecretStore")
    account_ref = store["spec"]["provider"]["aws"]["auth"]["jwt"]["serviceAccountRef"]
    assert set(account_ref) == {"name"}, "the store's own namespace's account"
    account = of(objects, "ServiceAccount", account_ref["name"])
    role = account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"]
    # One IAM role per environment (deploy/k8s/README.md says what it may read).
    assert role.startswith("arn:aws:iam::") and role.endswith(f":role/prognetwork-{name}-external-secrets"), role
    assert account["automountServiceAccountToken"] is False


def test_the_environments_share_no_secret_store_or_role(k8s_render):
    seen = {}
    for name in ENVIRONMENTS:
        objects = k8s_render(f"overlays/{name}")
        external = of(objects, "ExternalSecret", "prognetwork-secrets")
        account = of(objects, "ServiceAccount", "external-secrets-reader")
        seen[name] = (external["spec"]["dataFrom"][0]["extract"]["key"],
                      account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"])
    assert len(set(seen.values())) == len(ENVIRONMENTS) and all(
        len({v[i] for v in seen.values()}) == len(ENVIRONMENTS) for i in (0, 1)), seen


def test_every_pod_starts_with_the_keys_the_services_need(env):
    _, objects = env
    external = of(objects, "ExternalSecret", "prognetwork-secrets")
    target = external["spec"]["target"]["name"]
    # Exactly the required keys, no optional one: every pod starts.
    needed = {key: "x" for name in SPECS for key in required_keys(name)}
    assert unstartable(objects, target, synced_secret(external, needed)) == set()
    assert unstartable(objects, target, synced_secret(external, full_secret())) == set()


@pytest.mark.parametrize("missing", sorted(OPTIONAL_KEYS | {"SENDGRID_API_KEY", "STRIPE_WEBHOOK_SECRET"}))
def test_a_missing_key_stops_only_the_pods_that_need_it(env, missing):
    _, objects = env
    external = of(objects, "ExternalSecret", "prognetwork-secrets")
    target = external["spec"]["target"]["name"]
    stored = {k: v for k, v in full_secret().items() if k != missing}
    needing = {name for name in SPECS if missing in required_keys(name)}
    assert unstartable(objects, target, synced_secret(external, stored)) == needing


def test_a_named_property_that_is_missing_would_stop_every_pod(k8s_render):
    """The artifact this replaced: one `data` entry per key. Without an optional key in the secret
    the sync fails, and no pod reading the Secret starts: the check above would fail on it."""
    objects = k8s_render("overlays/production")
    external = copy.deepcopy(of(objects, "ExternalSecret", "prognetwork-secrets"))
    del external["spec"]["dataFrom"]
    external["spec"]["data"] = [{"secretKey": key, "remoteRef": {"key": "prognetwork/app", "property": key}}
                                for key in full_secret()]
    stored = {k: v for k, v in full_secret().items() if k not in OPTIONAL_KEYS}
    stuck = unstartable(objects, external["spec"]["target"]["name"], synced_secret(external, stored))
    assert stuck >= {name for name in SPECS if required_keys(name) & {"DATABASE_URL", "JWT_SIGNING_KEYS"}}
    assert "prog-migrate" in stuck
