"""The worked-example notebooks: saved without outputs, and each one runs top to bottom.

Every notebook is executed with nbclient on a `python3` kernel of this interpreter (a kernel spec is
installed into a temporary Jupyter path, so a user-level `python3` spec pointing at another Python
cannot shadow it). The kernel's temporary folder and working directory are `tmp_path`: a notebook
that leaves files behind fails here.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import nbformat
import pytest
from ipykernel.kernelspec import install as install_kernelspec
from jupyter_client.kernelspec import KernelSpecManager
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]-*.ipynb"))
KERNEL = "python3"
TIMEOUT_SECONDS = 300  # per cell
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def test_the_worked_examples_exist() -> None:
    names = [p.stem for p in NOTEBOOKS]
    assert len(names) >= 4, f"expected the four numbered notebooks in {NOTEBOOK_DIR}, got {names}"
    numbers = [name[:2] for name in names]
    assert len(set(numbers)) == len(numbers), f"notebook numbers must be unique: {names}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_saved_without_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{path.name} cell {cell.id}: outputs must be stripped in git"
        assert cell.execution_count is None, (
            f"{path.name} cell {cell.id}: execution_count must be null in git"
        )
    assert notebook.metadata.get("kernelspec", {}).get("name") == KERNEL, (
        f"{path.name}: the notebook should name the {KERNEL!r} kernel"
    )
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and "**For**" in first.source, (
        f"{path.name}: the first cell says who the notebook is for and what it shows"
    )


@pytest.fixture(scope="session")
def jupyter_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Jupyter data folder holding a `python3` kernel spec for this very interpreter."""
    prefix = tmp_path_factory.mktemp("jupyter")
    install_kernelspec(kernel_name=KERNEL, prefix=str(prefix))
    return prefix / "share" / "jupyter"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(
    path: Path, tmp_path: Path, jupyter_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.setenv("JUPYTER_PATH", str(jupyter_path))
    monkeypatch.setenv("TMPDIR", str(scratch))  # the kernel's tempfile folder
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # The cohorts are small: one thread per kernel is as fast, and it spares OpenMP and BLAS
    # threads from spin-waiting (seconds per fit) when other jobs share the CI machine's cores.
    for name in THREAD_VARIABLES:
        monkeypatch.setenv(name, "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    spec = KernelSpecManager().get_kernel_spec(KERNEL)
    assert spec.argv[0] == sys.executable, (
        f"the {KERNEL!r} kernel must run this interpreter ({sys.executable}), not {spec.argv[0]}"
    )

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=TIMEOUT_SECONDS,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(workdir)}},
    )
    started = time.perf_counter()
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    elapsed = time.perf_counter() - started
    print(f"{path.name}: executed in {elapsed:.1f} s")

    errors = [
        cell.id
        for cell in notebook.cells
        if cell.cell_type == "code" and any(o.output_type == "error" for o in cell.outputs)
    ]
    assert not errors, f"{path.name}: cells {errors} raised"
    left = sorted(p.name for p in scratch.iterdir() if p.name.startswith("triage-notebook-"))
    assert not left, f"{path.name} left its temporary folder behind: {left}"
    assert not any(workdir.iterdir()), (
        f"{path.name} wrote into its working directory: {sorted(p.name for p in workdir.iterdir())}"
    )
