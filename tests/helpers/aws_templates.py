"""The CloudFormation templates (deploy/aws): where they are, in which order they deploy, and what
they come to for one environment's parameters file (conditions, !If, !FindInMap and !Ref to
parameters resolved; everything AWS fills in at deploy time left as it is).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from cfnlint.decode import cfn_yaml

from tests.helpers.paths import ROOT

AWS_DIR = ROOT / "deploy" / "aws"
PARAMETERS_DIR = AWS_DIR / "parameters"
ENVIRONMENTS = ("staging", "production")
# The order deploy/aws/README.md deploys them in: a stack imports only what an earlier one exports.
# github-oidc and registry are once per account; backup-replica runs in the second region.
STACK_ORDER = ("github-oidc", "registry", "network", "security", "backup-replica", "audit", "data", "compute")
# Stacks deployed once, not per environment, and their own parameters file.
SHARED_STACKS = {"github-oidc": None, "registry": "registry"}

NO_VALUE = object()


def template_paths() -> list[Path]:
    return sorted(AWS_DIR.glob("*.yaml"))


@cache
def load(name: str) -> dict:
    """The template deploy/aws/<name>.yaml, as CloudFormation reads it (short tags become Fn::*)."""
    return json.loads(json.dumps(cfn_yaml.load(str(AWS_DIR / f"{name}.yaml"))))


def parameter_file(name: str) -> dict[str, str]:
    return json.loads((PARAMETERS_DIR / f"{name}.json").read_text())["Parameters"]


def parameters(template: dict, values: dict[str, str]) -> dict[str, Any]:
    """The parameters `aws cloudformation deploy --parameter-overrides file://…` gives the template:
    the file's value where the template declares the parameter, else its default."""
    resolved: dict[str, Any] = {}
    for key, spec in template.get("Parameters", {}).items():
        if key in values:
            resolved[key] = values[key]
        elif "Default" in spec:
            resolved[key] = spec["Default"]
        else:
            raise AssertionError(f"parameter {key} has no default and the parameters file gives none")
        if spec.get("Type") == "CommaDelimitedList" and isinstance(resolved[key], str):
            resolved[key] = resolved[key].split(",")
    return resolved


@dataclass(frozen=True)
class Stack:
    """A template resolved for one environment: `resources` holds only what its conditions create."""

    name: str
    environment: str | None
    parameters: dict[str, Any]
    conditions: dict[str, bool]
    resources: dict[str, dict]
    outputs: dict[str, dict]

    def of_type(self, kind: str) -> dict[str, dict]:
        return {key: r for key, r in self.resources.items() if r["Type"] == kind}

    def properties(self, key: str) -> dict:
        return self.resources[key].get("Properties", {})


def stack(name: str, environment: str | None = None) -> Stack:
    template = load(name)
    file = SHARED_STACKS.get(name, environment) if name in SHARED_STACKS else environment
    values = parameter_file(file) if file else {}
    params = parameters(template, values)
    conditions: dict[str, bool] = {}
    for key in template.get("Conditions", {}):
        conditions[key] = _condition(template, key, params, conditions)
    context = (template, params, conditions)
    resources = {
        key: _resolve(resource, context)
        for key, resource in template["Resources"].items()
        if "Condition" not in resource or conditions[resource["Condition"]]
    }
    outputs = {
        key: _resolve(output, context)
        for key, output in template.get("Outputs", {}).items()
        if "Condition" not in output or conditions[output["Condition"]]
    }
    return Stack(name, environment, params, conditions, resources, outputs)


def _condition(template: dict, key: str, params: dict, known: dict[str, bool]) -> bool:
    if key not in known:
        known[key] = bool(_evaluate(template["Conditions"][key], template, params, known))
    return known[key]


def _evaluate(expr: Any, template: dict, params: dict, known: dict[str, bool]) -> Any:
    if isinstance(expr, dict) and len(expr) == 1:
        ((fn, arg),) = expr.items()
        if fn == "Fn::Equals":
            a, b = (_evaluate(x, template, params, known) for x in arg)
            return str(a) == str(b)
        if fn == "Fn::Not":
            return not _evaluate(arg[0], template, params, known)
        if fn == "Fn::And":
            return all(_evaluate(x, template, params, known) for x in arg)
        if fn == "Fn::Or":
            return any(_evaluate(x, template, params, known) for x in arg)
        if fn == "Condition":
            return _condition(template, arg, params, known)
        if fn == "Ref":
            return params[arg]
    return expr


def _resolve(value: Any, context: tuple[dict, dict, dict[str, bool]]) -> Any:
    template, params, conditions = context
    if isinstance(value, list):
        items = [_resolve(v, context) for v in value]
        return [v for v in items if v is not NO_VALUE]
    if not isinstance(value, dict):
        return value
    if len(value) == 1:
        ((fn, arg),) = value.items()
        if fn == "Ref":
            if arg == "AWS::NoValue":
                return NO_VALUE
            if arg in params:
                return params[arg]
            return value
        if fn == "Fn::If":
            name, then, otherwise = arg
            return _resolve(then if conditions[name] else otherwise, context)
        if fn == "Fn::FindInMap":
            table, first, second = (_resolve(a, context) for a in arg)
            return template["Mappings"][table][first][second]
    resolved = {k: _resolve(v, context) for k, v in value.items()}
    return {k: v for k, v in resolved.items() if v is not NO_VALUE}


def sub_text(value: Any) -> str | None:
    """The text of a plain string or of a !Sub's template (its variables left as ${…})."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and "Fn::Sub" in value:
        sub = value["Fn::Sub"]
        return sub if isinstance(sub, str) else sub[0]
    return None


def imports_of(value: Any) -> list[str]:
    """The export names a template value imports (Fn::ImportValue of a string or a !Sub)."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "Fn::ImportValue":
                text = sub_text(inner)
                assert text is not None, f"an import whose name is neither text nor !Sub: {inner}"
                found.append(text)
            else:
                found.extend(imports_of(inner))
    elif isinstance(value, list):
        for inner in value:
            found.extend(imports_of(inner))
    return found
