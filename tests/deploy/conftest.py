"""Fixtures of the deploy checks: the Kubernetes tools and rendered manifests, the monitoring tools."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from prognetwork.registry import services
from tests.helpers.k8s import K8S_DIR, K8S_INSTALL_SCRIPT, K8sTools
from tests.helpers.monitoring import install_monitoring_tools
from tests.helpers.paths import ROOT


@pytest.fixture
def settings_from_environment(monkeypatch) -> Callable[[str, dict[str, str]], Any]:
    """`load("admin-client", env)`: the settings a process of that service loads from exactly this
    environment, as in its container (the environment source decodes JSON values such as
    SERVICE_HEALTH_URLS, which keyword arguments would leave as text)."""

    def load(name: str, env: dict[str, str]) -> Any:
        for key in list(os.environ):
            monkeypatch.delenv(key)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        return services()[name].settings()

    return load


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
