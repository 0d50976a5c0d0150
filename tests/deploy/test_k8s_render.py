"""Every overlay renders, and every object in it is valid for the API it names.

Built-in kinds are checked against the Kubernetes OpenAPI schemas (kubernetes-validate, strict:
unknown fields are errors); custom resources against the schemas their projects publish. The
API server prunes unknown fields of custom resources silently, so here they are errors too.
"""

from __future__ import annotations

import copy
import json

import pytest

from tests.helpers.k8s import K8S_CRD_SCHEMAS, K8S_OVERLAYS

# The oldest Kubernetes the manifests must run on (preStop `sleep` needs 1.30+), and the newest.
KUBERNETES_VERSIONS = ("1.33.0", "1.37.0")
FOLDERS = [f"overlays/{name}" for name in K8S_OVERLAYS] + ["cluster"]
ENVIRONMENTS = {"development", "staging", "production"}


BUILTIN_GROUPS = {"", "apps", "batch", "autoscaling", "policy", "networking.k8s.io", "rbac.authorization.k8s.io"}


def is_builtin(obj: dict) -> bool:
    return obj["apiVersion"].rpartition("/")[0] in BUILTIN_GROUPS


def validate_builtin(obj: dict, version: str) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, version, strict=True)


def strict(schema: dict) -> dict:
    """The schema with unknown properties refused wherever the CRD does not keep them."""
    schema = copy.deepcopy(schema)

    def walk(node: dict) -> None:
        if not isinstance(node, dict):
            return
        props = node.get("properties")
        if props and "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
        for child in (props or {}).values():
            walk(child)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("allOf", "anyOf", "oneOf"):
            for child in node.get(key, ()):
                walk(child)

    walk(schema)
    return schema


def crd_validator(obj: dict):
    import jsonschema

    group, _, version = obj["apiVersion"].rpartition("/")
    path = K8S_CRD_SCHEMAS / group / f"{obj['kind'].lower()}_{version}.json"
    assert path.is_file(), f"no published schema for {obj['apiVersion']} {obj['kind']} ({path})"
    schema = strict(json.loads(path.read_text()))
    # The CRD schemas leave `metadata` open; the API server checks it like any object's.
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def crd_errors(obj: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in crd_validator(obj).iter_errors(obj)]


def need_crd_schemas() -> None:
    if not K8S_CRD_SCHEMAS.is_dir():
        pytest.skip(f"custom resource schemas not found at {K8S_CRD_SCHEMAS} (shared/schemas/crds beside the repository)")


@pytest.mark.parametrize("folder", FOLDERS)
def test_renders_into_namespaced_objects(k8s_render, folder):
    objects = k8s_render(folder)
    assert objects, f"{folder} rendered nothing"
    cluster_scoped = {"Namespace", "ClusterSecretStore", "ClusterIssuer"}
    namespaces = {o["metadata"].get("namespace") for o in objects if o["kind"] not in cluster_scoped}
    if folder == "cluster":
        assert namespaces <= {None}
    else:
        env = folder.split("/")[1].split("-")[0]
        assert env in ENVIRONMENTS
        assert namespaces == {f"prog-{env}"}, f"{folder}: objects outside prog-{env}: {namespaces}"
        assert [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace"] == [f"prog-{env}"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("folder", FOLDERS)
def test_builtin_objects_validate(k8s_render, folder, version):
    checked = 0
    for obj in k8s_render(folder):
        if is_builtin(obj):
            validate_builtin(obj, version)
            checked += 1
    assert checked, f"{folder} has no built-in objects"


@pytest.mark.parametrize("folder", FOLDERS)
def test_custom_resources_validate(k8s_render, folder):
    need_crd_schemas()
    custom = [o for o in k8s_render(folder) if not is_builtin(o)]
    assert custom, f"{folder} has no custom resources"
    problems = {f"{o['kind']}/{o['metadata']['name']}": crd_errors(o) for o in custom}
    assert not {k: v for k, v in problems.items() if v}, problems


def test_the_validators_reject_mistakes(k8s_render):
    """A misspelt field or a wrong type fails validation: the checks above can fail."""
    import kubernetes_validate

    objects = k8s_render("overlays/production")
    deployment = copy.deepcopy(next(o for o in objects if o["kind"] == "Deployment"))
    deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavialable"] = 0
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(deployment, KUBERNETES_VERSIONS[0])
    # A CronJob's Job template is checked as deeply as a Deployment's pod template.
    cron = copy.deepcopy(next(o for o in objects if o["kind"] == "CronJob"))
    cron["spec"]["jobTemplate"]["spec"]["ttlSecondsAfterFinish"] = 600
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_builtin(cron, KUBERNETES_VERSIONS[0])

    need_crd_schemas()
    rollout = copy.deepcopy(next(o for o in objects if o["kind"] == "Rollout"))
    rollout["spec"]["strategy"]["canary"]["maxSurg"] = 1
    rollout["spec"]["strategy"]["canary"]["steps"][0]["setWeight"] = "twenty"
    errors = crd_errors(rollout)
    assert any("maxSurg" in e for e in errors) and any("twenty" in e for e in errors), errors
