"""The Kubernetes manifests (deploy/k8s): where they are, and how to read the objects they render to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.helpers.paths import ROOT

K8S_DIR = ROOT / "deploy" / "k8s"
K8S_OVERLAYS = sorted(p.name for p in (K8S_DIR / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
# Custom resource schemas published beside the repository (never copied into it).
K8S_CRD_SCHEMAS = ROOT.parent / "shared" / "schemas" / "crds"
K8S_INSTALL_SCRIPT = ROOT / "scripts" / "install-k8s-tools.sh"


@dataclass(frozen=True)
class K8sTools:
    kubectl: Path
    checkov: Path


def of(objects, kind, name=None):
    """The objects of `kind`; with `name`, the one object of that kind and name."""
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    if name is not None:
        assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
        return found[0]
    return found


def pod_spec(workload):
    return workload["spec"]["template"]["spec"]


def pod_labels(workload):
    return workload["spec"]["template"]["metadata"].get("labels", {})


def matches(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions, or a Service's plain map) selects `labels`."""
    for key, value in selector.get("matchLabels", selector if "matchExpressions" not in selector else {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions", ()):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        ok = {"In": present and value in expr.get("values", ()), "NotIn": value not in expr.get("values", ()),
              "Exists": present, "DoesNotExist": not present}[expr["operator"]]
        if not ok:
            return False
    return True


# Pod Security Standards, `restricted` profile (what `pod-security.kubernetes.io/enforce: restricted`
# makes the API server refuse), as of Kubernetes 1.33.
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}


def restricted_violations(spec: dict) -> list[str]:
    """Why a pod spec would be refused under the `restricted` Pod Security profile (none: admitted)."""
    found = []
    pod_context = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            found.append(f"{flag} is set")
    for volume in spec.get("volumes", ()):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            found.append(f"volume {volume['name']}: {sorted(kinds)} is not an allowed type")
    if pod_context.get("runAsUser") == 0:
        found.append("pod runs as user 0")
    containers = [*spec.get("initContainers", ()), *spec.get("containers", ())]
    for c in containers:
        context = c.get("securityContext", {})
        name = c["name"]
        if context.get("privileged"):
            found.append(f"{name}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation is not false")
        if "ALL" not in context.get("capabilities", {}).get("drop", ()):
            found.append(f"{name}: capabilities do not drop ALL")
        if set(context.get("capabilities", {}).get("add", ())) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: adds capabilities")
        if not context.get("runAsNonRoot", pod_context.get("runAsNonRoot")):
            found.append(f"{name}: runAsNonRoot is not true")
        if context.get("runAsUser") == 0:
            found.append(f"{name}: runs as user 0")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {})).get("type")
        if seccomp not in {"RuntimeDefault", "Localhost"}:
            found.append(f"{name}: seccompProfile is {seccomp}")
        for port in c.get("ports", ()):
            if port.get("hostPort"):
                found.append(f"{name}: hostPort {port['hostPort']}")
    return found


def pod_templates(objects: list[dict]) -> list[tuple[str, dict]]:
    """(kind/name, pod spec) of every object that makes pods: workloads, Jobs and CronJobs."""
    found = []
    for obj in objects:
        spec = obj.get("spec", {})
        if obj["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        if "template" in spec and "spec" in spec["template"]:
            found.append((f"{obj['kind']}/{obj['metadata']['name']}", spec["template"]["spec"]))
    return found
