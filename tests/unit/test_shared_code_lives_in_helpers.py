"""Code the tests share lives in tests/helpers: no module imports a test module or a conftest.

Importing a test module runs its collection-time code a second time and couples two suites; a
conftest is pytest's to load, once, for the folder it configures. Every file under tests/ and
bench/ is parsed (never imported) and each of its imports, at any depth, resolved to a dotted
module name and checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

CHECKED_FOLDERS = ("tests", "bench")
HELPERS = ROOT / "tests" / "helpers"


def _forbidden(dotted: str) -> bool:
    """A module of this repository named `test_*` or `conftest`."""
    parts = dotted.split(".")
    ours = (ROOT / parts[0]).is_dir() or (ROOT / f"{parts[0]}.py").is_file()
    return (ours or len(parts) == 1) and any(p == "conftest" or p.startswith("test_") for p in parts)


def _package_of(path: Path) -> list[str]:
    return list(path.relative_to(ROOT).parent.parts)


def forbidden_imports(source: str, path: Path) -> list[str]:
    """The modules `source` (the text of `path`) imports that are test modules or conftests."""
    found = []
    for node in ast.walk(ast.parse(source, filename=str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if _forbidden(alias.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package_of(path)
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if _forbidden(module):
                found.append(module)
            else:
                # `from tests.deploy import test_docker` imports a module by the name it binds.
                found += [f"{module}.{alias.name}" for alias in node.names if _forbidden(f"{module}.{alias.name}")]
    return found


def python_files() -> list[Path]:
    return sorted(path for folder in CHECKED_FOLDERS for path in (ROOT / folder).rglob("*.py"))


def test_no_file_in_tests_or_bench_imports_a_test_module_or_a_conftest():
    offenders = {}
    for path in python_files():
        found = forbidden_imports(path.read_text(), path)
        if found:
            offenders[str(path.relative_to(ROOT))] = found
    assert offenders == {}, "move what is shared into tests/helpers and import it from there"


def test_every_helper_module_is_named_for_what_it_holds_never_like_a_test():
    names = sorted(path.name for path in HELPERS.glob("*.py"))
    assert "processes.py" in names  # the folder scanned is the helpers' folder
    assert [name for name in names if name.startswith("test_") or name == "conftest.py"] == []


def test_the_helpers_package_holds_no_fixture():
    # Fixtures belong to conftest files, where pytest finds them for the folder they serve.
    decorated = [
        f"{path.name}:{node.name}"
        for path in HELPERS.glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        for decorator in node.decorator_list
        if "fixture" in ast.unparse(decorator)
    ]
    assert decorated == []


# The package is spelled through a name so that a plain grep for such imports finds only real ones.
PKG = "tests"


@pytest.mark.parametrize(
    ("source", "where", "expected"),
    [
        (f"from {PKG}.integration.test_streaming import open_stream", "tests/e2e/test_x.py",
         ["tests.integration.test_streaming"]),
        (f"from {PKG}.conftest import unique_email", "tests/e2e/test_x.py", ["tests.conftest"]),
        (f"from {PKG}.deploy import test_docker", "tests/deploy/test_x.py", ["tests.deploy.test_docker"]),
        (f"import {PKG}.e2e.conftest", "bench/x.py", ["tests.e2e.conftest"]),
        ("from .test_docker import stages", "tests/deploy/test_x.py", ["tests.deploy.test_docker"]),
        ("from ..conftest import servers", "tests/deploy/test_x.py", ["tests.conftest"]),
        ("from . import conftest", "tests/deploy/test_x.py", ["tests.deploy.conftest"]),
        ("import conftest", "tests/unit/test_x.py", ["conftest"]),
        (f"def f():\n    from {PKG}.unit.test_retry import half\n", "tests/unit/test_x.py", ["tests.unit.test_retry"]),
        (f"from {PKG}.helpers.sse import open_stream", "tests/e2e/test_x.py", []),
        (f"from {PKG}.helpers import polling", "bench/x.py", []),
        ("import unittest\nfrom pytest import fixture", "tests/unit/test_x.py", []),
    ],
)
def test_the_check_finds_test_modules_and_conftests_however_they_are_imported(source, where, expected):
    assert forbidden_imports(source, ROOT / where) == expected
