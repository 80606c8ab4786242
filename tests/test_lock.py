"""The locked environment: uv.lock matches pyproject.toml, the pip files exported from it
(requirements/*.lock, installed by `make venv` and by bentofile.yaml) are exactly its export with
a sha256 hash on every pin, and the virtual environment running these tests is the locked one.

The uv checks run the uv pinned in requirements/tools.lock, offline and with an empty cache: an
up-to-date lock is checked from the files alone.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
DEV_LOCK = ROOT / "requirements" / "dev.lock"
SERVING_LOCK = ROOT / "requirements" / "serving.lock"
TOOLS_LOCK = ROOT / "requirements" / "tools.lock"
TOOLS_IN = ROOT / "requirements" / "tools.in"

# The same `uv export` arguments as the Makefile's `lock` target: (file, extras).
EXPORT = ("export", "--frozen", "--format", "requirements-txt", "--no-emit-project")
EXPORTS = {
    DEV_LOCK: ("dev", "spark", "postgres"),
    SERVING_LOCK: ("postgres",),
}
FIX = "re-lock and re-export with `make lock` (README, 'Locked environment')"

PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;]+)")
HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}\b")


def pinned_entries(path: Path) -> list[tuple[str, str, str | None, str]]:
    """(canonical name, version, marker or None, whole logical line) of each requirement line.

    A line continued with a backslash (the hashes) is joined to its requirement; comments and
    blank lines are skipped. A requirement line that is not an exact `==` pin is an error.
    """
    entries: list[tuple[str, str, str | None, str]] = []
    logical = ""
    for raw in path.read_text().splitlines():
        logical += raw.strip().removesuffix("\\")
        if raw.rstrip().endswith("\\"):
            logical += " "
            continue
        line, logical = logical.strip(), ""
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{path.name}: not an exact pin: {line[:100]}"
        requirement = line.split(" --hash")[0]
        marker = requirement.split(";", 1)[1].strip() if ";" in requirement else None
        entries.append((canonicalize_name(match["name"]), match["version"], marker, line))
    return entries


def pins(path: Path) -> dict[str, str]:
    """Canonical name -> pinned version of a requirements file."""
    return {name: ver for name, ver, _, _ in pinned_entries(path)}


def project_requirements(*extras: str) -> list[Requirement]:
    """pyproject.toml's runtime dependencies plus those of the given extras."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    specs = list(project["dependencies"])
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    return [Requirement(spec) for spec in specs]


@pytest.fixture(scope="module")
def uv(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, str]]:
    """The pinned uv executable and an environment that keeps it offline on an empty cache."""
    try:
        from uv import find_uv_bin
    except ImportError:
        pytest.fail("uv is not installed in this environment: build it with `make venv`")
    env = {
        **os.environ,
        "UV_OFFLINE": "1",
        "UV_CACHE_DIR": str(tmp_path_factory.mktemp("uv-cache")),
        "UV_PYTHON": sys.executable,
        "UV_PYTHON_DOWNLOADS": "never",
    }
    return find_uv_bin(), env


def run_uv(
    uv: tuple[str, dict[str, str]], *args: str, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    binary, env = uv
    return subprocess.run(
        [binary, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_uv_is_the_pinned_version(uv: tuple[str, dict[str, str]]) -> None:
    """The uv that checks and exports the lock is tools.lock's, the one pyproject requires."""
    pinned = pins(TOOLS_LOCK)["uv"]
    required = tomllib.loads(PYPROJECT.read_text())["tool"]["uv"]["required-version"]
    assert required == f"=={pinned}"
    assert run_uv(uv, "--version").stdout.split()[:2] == ["uv", pinned]


def test_lock_matches_pyproject(uv: tuple[str, dict[str, str]]) -> None:
    result = run_uv(uv, "lock", "--check")
    assert result.returncode == 0, (
        f"uv.lock is out of date with pyproject.toml: {FIX}\n{result.stderr}"
    )


def test_lock_check_fails_on_a_range_the_lock_does_not_satisfy(
    uv: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    """The check above can fail: raising orjson's floor past the locked version is caught."""
    for name in ("pyproject.toml", "uv.lock", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    assert run_uv(uv, "lock", "--check", cwd=tmp_path).returncode == 0
    locked = pins(DEV_LOCK)["orjson"]
    text = PYPROJECT.read_text()
    assert '"orjson>=3.10"' in text
    major = int(locked.split(".")[0])
    (tmp_path / "pyproject.toml").write_text(
        text.replace('"orjson>=3.10"', f'"orjson>={major + 1}"')
    )
    assert run_uv(uv, "lock", "--check", cwd=tmp_path).returncode != 0


@pytest.mark.parametrize("path", list(EXPORTS), ids=lambda p: p.name)
def test_exported_files_are_the_lock_exported_now(
    uv: tuple[str, dict[str, str]], path: Path
) -> None:
    """Nobody edits a requirements file without the lock, or the lock without the files."""
    extras = [arg for extra in EXPORTS[path] for arg in ("--extra", extra)]
    result = run_uv(uv, *EXPORT, *extras)
    assert result.returncode == 0, result.stderr
    assert path.read_text() == result.stdout, f"{path.name} is not uv.lock's export: {FIX}"


@pytest.mark.parametrize("path", [DEV_LOCK, SERVING_LOCK, TOOLS_LOCK], ids=lambda p: p.name)
def test_every_pin_has_a_hash(path: Path) -> None:
    entries = pinned_entries(path)
    assert len(entries) >= 3
    unhashed = [line[:80] for _, _, _, line in entries if not HASH.search(line)]
    assert not unhashed, f"{path.name}: pins without a sha256 hash: {unhashed}"


@pytest.mark.parametrize(
    ("path", "extras"),
    [(DEV_LOCK, ("dev", "spark", "postgres")), (SERVING_LOCK, ("postgres",))],
    ids=["dev.lock", "serving.lock"],
)
def test_every_project_dependency_is_pinned_inside_its_range(
    path: Path, extras: tuple[str, ...]
) -> None:
    """Read independently of uv: pyproject's ranges against the exported pins."""
    locked = pins(path)
    for requirement in project_requirements(*extras):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement} is not in {path.name}: {FIX}"
        assert requirement.specifier.contains(locked[name], prereleases=True), (
            f"{path.name} pins {name}=={locked[name]}, outside {requirement}: {FIX}"
        )


def test_serving_lock_is_part_of_the_dev_lock() -> None:
    """One lock: the serving image gets the very versions the tests ran."""
    dev, serving = pins(DEV_LOCK), pins(SERVING_LOCK)
    assert set(serving) < set(dev)
    assert {name: dev[name] for name in serving} == serving
    assert {"bentoml", "lightgbm", "fastapi", "psycopg-binary"} <= set(serving)
    assert not {"pytest", "pyspark", "mypy"} & set(serving)


def test_tools_lock_pins_exactly_tools_in() -> None:
    wanted = {}
    for line in TOOLS_IN.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, ver = line.split("==")
            wanted[canonicalize_name(name)] = ver.strip()
    assert pins(TOOLS_LOCK) == wanted


def test_this_environment_is_the_locked_one() -> None:
    """Every package of dev.lock that applies here is installed at exactly its locked version."""
    wrong = {}
    for name, locked, marker, _ in pinned_entries(DEV_LOCK):
        if marker and not Marker(marker).evaluate():
            continue
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "missing"
        if installed != locked:
            wrong[name] = f"locked {locked}, installed {installed}"
    assert not wrong, f"this environment is not the lock's; rebuild it with `make venv`: {wrong}"


def test_bentofile_installs_the_serving_lock() -> None:
    python = yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]
    assert python["requirements_txt"] == SERVING_LOCK.relative_to(ROOT).as_posix()
    assert python["lock_packages"] is False  # BentoML's re-locking would drop the hashes
    assert "packages" not in python  # ignored next to requirements_txt, and would mislead


def test_make_venv_installs_only_from_the_locks() -> None:
    """`make venv` installs with hashes from the locks; the project itself without dependencies."""
    if shutil.which("make") is None:
        pytest.fail("make is needed to read the Makefile's recipe")
    dry = subprocess.run(
        ["make", "-n", "-B", "venv", "VENV=/nonexistent-venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installs = [line for line in dry.splitlines() if " pip install " in line]
    locked = [line for line in installs if "--require-hashes" in line]
    assert [line.split(" -r ")[-1] for line in locked] == [
        "requirements/tools.lock",
        "requirements/dev.lock",
    ]
    assert all("--no-deps" in line for line in installs)
    assert [line for line in installs if line not in locked] == [
        "/nonexistent-venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -e ."
    ]
