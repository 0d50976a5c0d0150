"""The CloudFormation templates (deploy/aws) checked by the real tools: cfn-lint (AWS's own
resource schemas and rules, from the venv) and checkov (security checks, offline; installed by
scripts/install-k8s-tools.sh). Neither may report anything; a checkov finding accepted on
purpose is skipped in the template's Metadata with its reason, and a skip nothing needs any
more fails too.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.helpers.aws_templates import AWS_DIR, STACK_ORDER, load, template_paths
from tests.helpers.paths import ROOT

CFN_LINT = ROOT / ".venv" / "bin" / "cfn-lint"


def cfn_lint(*paths) -> list[dict]:
    done = subprocess.run(
        [str(CFN_LINT), "--format", "json", *map(str, paths)], capture_output=True, text=True, timeout=300
    )
    # 0: clean; 2, 4, 8 (or their sum): errors, warnings, informational findings.
    assert done.returncode in range(16) and done.stdout.strip(), f"cfn-lint did not run:\n{done.stderr}"
    return json.loads(done.stdout)


def checkov(tools, *args: str) -> dict:
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_NO_OUTPUT="")
    done = subprocess.run(
        [str(tools.checkov), *args, "--framework", "cloudformation", "--skip-download", "--output", "json"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.stdout.strip(), f"checkov printed nothing:\n{done.stderr}"
    result = json.loads(done.stdout)
    return result[0] if isinstance(result, list) else result


def test_every_template_is_a_stack_in_the_documented_order():
    assert [p.stem for p in template_paths()] == sorted(STACK_ORDER)
    readme = (AWS_DIR / "README.md").read_text()
    positions = [readme.find(f"{name}.yaml") for name in STACK_ORDER]
    assert -1 not in positions, f"deploy/aws/README.md does not name every template: {STACK_ORDER}"
    assert positions == sorted(positions), "deploy/aws/README.md lists the stacks out of deployment order"


# The spec's own snippets: the RDS instance on PostgreSQL 15.3 (retired), a subnet pinned to one
# zone by name, and the cache without encryption or AUTH token. Each tool must refuse them, or
# its silence over deploy/aws proves nothing. They are checked in the same run as the templates.
SPEC_SNIPPETS = textwrap.dedent("""\
    Resources:
      Database:
        Type: AWS::RDS::DBInstance
        Properties:
          DBInstanceClass: db.t3.medium
          Engine: postgres
          EngineVersion: "15.3"
          AllocatedStorage: "100"
          StorageEncrypted: true
          MultiAZ: true
          MasterUsername: prog
          ManageMasterUserPassword: true
      Subnet:
        Type: AWS::EC2::Subnet
        Properties:
          VpcId: vpc-12345678
          CidrBlock: 10.0.1.0/24
          AvailabilityZone: us-east-1a
      Cache:
        Type: AWS::ElastiCache::ReplicationGroup
        Properties:
          ReplicationGroupDescription: spec snippet
          NumCacheClusters: 3
          Engine: redis
          CacheNodeType: cache.t3.medium
          MultiAZEnabled: true
    """)


@pytest.fixture(scope="module")
def scanned(tmp_path_factory) -> Path:
    """A copy of deploy/aws in templates/, and the spec's snippets in control/spec.yaml."""
    root = tmp_path_factory.mktemp("cloudformation")
    shutil.copytree(AWS_DIR, root / "templates", ignore=shutil.ignore_patterns("*.md", "*.json"))
    (root / "control").mkdir()
    (root / "control" / "spec.yaml").write_text(SPEC_SNIPPETS)
    return root


@pytest.fixture(scope="module")
def cfn_lint_findings(scanned) -> dict[str, list[dict]]:
    findings = cfn_lint(*sorted((scanned / "templates").glob("*.yaml")), scanned / "control" / "spec.yaml")
    by_file: dict[str, list[dict]] = {"templates": [], "control": []}
    for finding in findings:
        by_file[Path(finding["Filename"]).parent.name].append(finding)
    return by_file


def test_cfn_lint_finds_nothing(cfn_lint_findings):
    findings = cfn_lint_findings["templates"]
    assert not findings, "cfn-lint:\n" + "\n".join(
        f"{f['Filename']}:{f['Location']['Start']['LineNumber']}: {f['Rule']['Id']} {f['Message']}" for f in findings
    )


def test_cfn_lint_refuses_the_specs_snippets(cfn_lint_findings):
    rules = {f["Rule"]["Id"] for f in cfn_lint_findings["control"]}
    assert "E3691" in rules or "W3691" in rules, f"a retired engine version passed: {rules}"
    assert "W3010" in rules, f"a hard-coded Availability Zone passed: {rules}"


def test_cfn_lint_suppressions_say_why():
    """A rule ignored in a template's Metadata (cfn-lint: config: ignore_checks) carries a reason."""
    for path in template_paths():
        template = load(path.stem)
        for key, resource in [("(template)", template), *template["Resources"].items()]:
            ignored = resource.get("Metadata", {}).get("cfn-lint", {}).get("config", {}).get("ignore_checks", [])
            if ignored:
                reasons = resource["Metadata"]["cfn-lint"].get("reasons", {})
                assert set(ignored) <= set(reasons), f"{path.name} {key}: ignored without a reason: {ignored}"


@pytest.fixture(scope="module")
def checkov_result(k8s_tools, scanned) -> dict:
    return checkov(k8s_tools, "--directory", str(scanned))


def checks(result: dict, outcome: str, folder: str) -> list[dict]:
    return [c for c in result["results"][outcome] if c["file_path"].split("/")[-2] == folder]


def test_templates_pass_checkov(checkov_result):
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
              for c in checks(checkov_result, "failed_checks", "templates")]
    assert not failed, "checkov:\n" + "\n".join(failed)
    assert checkov_result["summary"]["parsing_errors"] == 0
    passed = checks(checkov_result, "passed_checks", "templates")
    scanned = {c["file_path"].rpartition("/")[2] for c in passed}
    # github-oidc.yaml holds only an OIDC provider, for which checkov has no check.
    assert scanned == {p.name for p in template_paths()} - {"github-oidc.yaml"}, "checkov skipped a template"
    assert len(passed) > 200, "checkov checked almost nothing"


def test_checkov_refuses_the_specs_cache(checkov_result):
    failed = {c["check_id"] for c in checks(checkov_result, "failed_checks", "control")}
    # At rest, in transit, AUTH token.
    assert {"CKV_AWS_29", "CKV_AWS_30", "CKV_AWS_31"} <= failed, failed


def declared_checkov_skips() -> dict[tuple[str, str], str]:
    skips = {}
    for path in template_paths():
        for key, resource in load(path.stem)["Resources"].items():
            for skip in resource.get("Metadata", {}).get("checkov", {}).get("skip", []):
                skips[(f"{resource['Type']}.{key}", skip["id"])] = skip.get("comment", "")
    return skips


def test_every_checkov_skip_says_why_and_is_still_needed(checkov_result):
    declared = declared_checkov_skips()
    for (resource, check), reason in declared.items():
        assert len(reason.split()) >= 5, f"{resource}: skip of {check} without a reason"
    used = {(c["resource"], c["check_id"]) for c in checks(checkov_result, "skipped_checks", "templates")}
    assert used == set(declared), f"skips that no check needs any more: {set(declared) - used}"
