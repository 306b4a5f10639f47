"""The declared requirements are true, and CI runs the README's commands as written."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import torch
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
CORE = [Requirement(text) for text in PROJECT["dependencies"]]
EXTRAS = {
    name: [Requirement(text) for text in reqs] for name, reqs in PROJECT["optional-dependencies"].items()
}
# Declared but never imported by name: transformers reads .gguf files with gguf; tools run as commands.
USED_WITHOUT_IMPORT = {"gguf", "ruff", "mypy"}


def floor(specifier: SpecifierSet) -> Version:
    (lower,) = [Version(spec.version) for spec in specifier if spec.operator == ">="]
    return lower


def requirement(name: str, requirements: list[Requirement]) -> Requirement:
    (found,) = [req for req in requirements if canonicalize_name(req.name) == name]
    return found


def test_python_and_torch_floors_are_the_ones_transformers_needs() -> None:
    transformers = importlib.metadata.metadata("transformers")
    ours = floor(SpecifierSet(PROJECT["requires-python"]))
    assert ours == floor(SpecifierSet(transformers["Requires-Python"]))
    theirs = [Requirement(text) for text in importlib.metadata.requires("transformers") or ()]
    their_torch = [req for req in theirs if req.name == "torch" and req.marker and "torch" in str(req.marker)]
    assert floor(requirement("torch", CORE).specifier) == floor(their_torch[0].specifier)


def test_the_installed_versions_satisfy_the_requirements() -> None:
    # So that installing ppdecode installs no other torch (nor transformers) than the one here.
    assert requirement("torch", CORE).specifier.contains(Version(torch.__version__), prereleases=True)
    transformers = importlib.metadata.version("transformers")
    assert requirement("transformers", CORE).specifier.contains(transformers, prereleases=True)


def imported_modules(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - {"ppdecode", "tests"}


def test_every_imported_package_is_declared_and_every_dependency_is_used() -> None:
    declared = {canonicalize_name(req.name) for reqs in [CORE, *EXTRAS.values()] for req in reqs}
    distributions = importlib.metadata.packages_distributions()
    imported: set[str] = set()
    for module in imported_modules(ROOT / "ppdecode") | imported_modules(ROOT / "tests"):
        names = {canonicalize_name(dist) for dist in distributions.get(module, [module])}
        assert names & declared, f"{module} is imported but none of {sorted(names)} is declared in pyproject"
        imported |= names
    unused = {canonicalize_name(req.name) for req in CORE} - imported - USED_WITHOUT_IMPORT
    assert not unused, f"declared but never imported: {sorted(unused)}"


def readme_commands() -> list[str]:
    quick_start = (ROOT / "README.md").read_text().split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^    (\S.*)$", quick_start, flags=re.MULTILINE)


def test_ci_runs_the_readme_commands_as_written() -> None:
    setup_and_generate, run_tests = readme_commands()
    assert setup_and_generate.startswith("bash scripts/setup.sh && .venv/bin/ppd generate ")
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert "set -euo pipefail" in lines
    assert "bash scripts/setup.sh" in lines
    assert any(line == run_tests or line.startswith(f"{run_tests} || status=$?") for line in lines)


def test_setup_script_parses() -> None:
    for script in ("scripts/setup.sh", ".ci/run"):
        subprocess.run(["bash", "-n", str(ROOT / script)], check=True)
