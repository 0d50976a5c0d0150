"""yamllint over every YAML file of deploy/ and .github/, with the rules in tests/deploy/yamllint.yaml
(duplicate keys above all: a parser keeps the last silently, and the renderers never notice)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.helpers.paths import ROOT

YAMLLINT = ROOT / ".venv" / "bin" / "yamllint"
CONFIG = Path(__file__).with_name("yamllint.yaml")
LINTED = ("deploy", ".github")


def yamllint(*paths: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(YAMLLINT), "--strict", "-c", str(CONFIG), "-f", "parsable", *map(str, paths)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_every_deploy_and_workflow_yaml_file_passes_yamllint():
    linted = [p for folder in LINTED for p in (ROOT / folder).rglob("*") if p.suffix in {".yaml", ".yml"}]
    assert len(linted) > 20, "the YAML files were not found"
    result = yamllint(*LINTED)
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint_refuses_a_duplicated_key(tmp_path):
    """The migration Job once had two `annotations:` keys: the second replaced the first."""
    job = tmp_path / "job.yaml"
    job.write_text("kind: Job\nmetadata:\n  name: prog-migrate\n  annotations:\n    a: b\n"
                   "  annotations:\n    c: d\n")
    result = yamllint(job)
    assert result.returncode != 0 and 'duplication of key "annotations"' in result.stdout, result.stdout
