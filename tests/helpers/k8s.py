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
