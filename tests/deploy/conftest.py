"""Fixtures of the deploy checks: the Kubernetes tools and rendered manifests, the monitoring tools."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from tests.helpers.k8s import K8S_DIR, K8S_INSTALL_SCRIPT, K8sTools
from tests.helpers.monitoring import install_monitoring_tools
from tests.helpers.paths import ROOT


@pytest.fixture(scope="session")
def monitoring_tools() -> None:
    """Prometheus, promtool, Alertmanager and amtool on PATH (installed once per run if missing)."""
    install_monitoring_tools()


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
