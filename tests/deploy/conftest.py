"""Rendering of the Kubernetes manifests (deploy/k8s), shared by the test_k8s* modules."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "deploy" / "k8s"
K8S_OVERLAYS = sorted(p.name for p in (K8S_DIR / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
# Custom resource schemas published beside the repository (never copied into it).
K8S_CRD_SCHEMAS = ROOT.parent / "shared" / "schemas" / "crds"
K8S_INSTALL_SCRIPT = ROOT / "scripts" / "install-k8s-tools.sh"


@dataclass(frozen=True)
class K8sTools:
    kubectl: Path
    checkov: Path


@pytest.fixture(scope="session")
def k8s_tools() -> K8sTools:
    venv = ROOT / ".venv"
    done = subprocess.run(["bash", str(K8S_INSTALL_SCRIPT)], capture_output=True, text=True)
    tools = K8sTools(kubectl=venv / "bin" / "kubectl", checkov=venv / "k8s-tools" / "checkov" / "bin" / "checkov")
    missing = [str(p) for p in (tools.kubectl, tools.checkov) if not p.is_file()]
    if done.returncode != 0 or missing:
        pytest.fail(
            f"{K8S_INSTALL_SCRIPT.name} could not provide the Kubernetes tools (missing: {missing or 'none'}):\n"
            f"{done.stdout}\n{done.stderr}"
        )
    return tools


@pytest.fixture(scope="session")
def k8s_render(k8s_tools: K8sTools) -> Callable[[str], list[dict]]:
    """`render("overlays/production")`: the objects `kubectl kustomize` makes of that folder."""
    import yaml

    cache: dict[str, list[dict]] = {}

    def render(folder: str) -> list[dict]:
        if folder not in cache:
            done = subprocess.run(
                [str(k8s_tools.kubectl), "kustomize", str(K8S_DIR / folder)], capture_output=True, text=True
            )
            assert done.returncode == 0, f"kubectl kustomize {folder} failed:\n{done.stderr}"
            cache[folder] = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
        return cache[folder]

    return render
