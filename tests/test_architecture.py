"""The house rules, checked on the source: which package may import which, no import circle, no
dev-only dependency in the runtime packages, and modules of a readable size."""

from __future__ import annotations

import ast
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "training", "serving")
MAX_LINES = 520  # "no module over ~500 lines" (README, Layout)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {
        module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
    }


def imported(path: Path) -> Iterator[str]:
    """Every module name an import statement in the file names, at any depth (lazy imports
    inside functions count: they are still a dependency)."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def first_party_imports() -> dict[str, set[str]]:
    """Module -> the project's modules it imports."""
    known = modules()
    return {
        name: {m for m in imported(path) if m in known and m != name}
        for name, path in known.items()
    }


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("models", ("training", "serving")), ("serving", ("training",))],
)
def test_the_inference_core_stands_alone(package: str, forbidden: tuple[str, ...]) -> None:
    found = [
        f"{name} imports {target}"
        for name, targets in first_party_imports().items()
        if name.split(".")[0] == package
        for target in targets
        if target.split(".")[0] in forbidden
    ]
    assert not found, f"{package}/ must not import {forbidden}: {found}"


def test_no_import_circle() -> None:
    graph = first_party_imports()
    # A package imports its own modules by design (__init__ re-exports nothing here but the
    # simulator's entry point); a circle is a path from a module back to itself through others.
    circles = []
    for start in graph:
        stack, seen = [(start, (start,))], set()
        while stack:
            node, path = stack.pop()
            for target in graph.get(node, ()):
                if target == start:
                    circles.append(" -> ".join((*path, start)))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, (*path, target)))
    assert not circles, f"import circles: {sorted(set(circles))[:5]}"


def dev_only_packages() -> set[str]:
    """Top-level import names of the `dev` extra that no runtime extra also brings."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    import_names = {"pandas-stubs": "pandas-stubs", "types-PyYAML": "types-PyYAML"}

    def names(requirements: list[str]) -> set[str]:
        out = set()
        for requirement in requirements:
            name = requirement.split(";")[0].split("[")[0]
            for stop in "<>=!~ ":
                name = name.split(stop)[0]
            out.add(import_names.get(name, name.lower().replace("-", "_")))
        return out

    runtime = names(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        if extra != "dev":
            runtime |= names(requirements)
    return names(project["optional-dependencies"]["dev"]) - runtime


def test_no_runtime_module_imports_a_dev_only_dependency() -> None:
    dev = dev_only_packages()
    assert {"pytest", "psutil", "hypothesis"} <= dev, f"the dev extra as expected: {dev}"
    found = [
        f"{name} imports {target}"
        for name, path in modules().items()
        for target in imported(path)
        if target.split(".")[0] in dev
    ]
    assert not found, f"runtime modules must not need the dev extra (make run has none): {found}"


def test_the_main_job_imports_without_the_dev_extra() -> None:
    """Load the main job with every dev-only package made unimportable."""
    code = (
        "import sys\n"
        f"for name in {sorted(dev_only_packages())!r}:\n"
        "    sys.modules[name] = None\n"
        "import training.main_job, training.cli\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, f"make run needs only the runtime packages:\n{done.stderr}"


def test_modules_are_of_a_readable_size() -> None:
    long = {
        name: n
        for name, path in modules().items()
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, (
        f"modules over {MAX_LINES} lines (split them, or say why in the README): {long}"
    )
