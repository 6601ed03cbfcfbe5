"""The notebooks in ``notebooks/``: stored clean, and executed top to bottom in a real kernel.

Each notebook reads its data from one ``parameters``-tagged cell (papermill's convention). The
slow tests overwrite those values with the paths of the session's demo run and execute the
notebook with nbclient in a temporary working directory. The kernel is this interpreter:
a kernelspec written to a temporary folder runs ``sys.executable -m ipykernel_launcher``, and
the kernel-spec manager looks only there, so no ``python3`` kernel installed elsewhere (user
or system Jupyter folders) can stand in for the environment under test.
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_quickstart", "02_batch_review", "03_timepoint_exploration",
            "04_arm_comparison", "05_cytokines_clinical"]


def _parameter_cells(nb: nbformat.NotebookNode) -> list[int]:
    return [i for i, cell in enumerate(nb.cells)
            if "parameters" in cell.get("metadata", {}).get("tags", [])]


def inject_parameters(nb: nbformat.NotebookNode, values: dict[str, Any]) -> None:
    """Set ``NAME = value`` lines of the parameters cell; every name must already be there."""
    (index,) = _parameter_cells(nb)
    source = nb.cells[index].source
    for name, value in values.items():
        source, n = re.subn(rf"^{re.escape(name)}\s*=.*$", f"{name} = {value!r}", source,
                            flags=re.MULTILINE)
        assert n == 1, f"the parameters cell has no single `{name} = …` line"
    nb.cells[index].source = source


def kernel_manager(folder: Path):
    """A kernel manager whose only ``python3`` kernel is this interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec = folder / "kernels" / "python3"
    spec.mkdir(parents=True, exist_ok=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (immunoprofile tests)", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(folder / "kernels")], ensure_native_kernel=False)
    return KernelManager(kernel_name="python3", kernel_spec_manager=specs)


def execute(nb: nbformat.NotebookNode, workdir: Path, timeout: int = 600) -> None:
    """Run every cell in a fresh kernel with ``workdir`` as the working directory; the
    executed notebook is left there as ``executed.ipynb`` (also when a cell fails)."""
    from nbclient import NotebookClient

    client = NotebookClient(nb, km=kernel_manager(workdir / ".jupyter"), timeout=timeout,
                            kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    try:
        client.execute()
    finally:
        nbformat.write(nb, workdir / "executed.ipynb")


# -- quick: how the notebooks are stored ------------------------------------------------------
def test_every_notebook_is_there() -> None:
    assert [p.stem for p in NOTEBOOKS] == EXPECTED
    assert (REPO / "notebooks" / "README.md").is_file()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs_and_one_parameters_cell(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, \
            f"stored with outputs: clear them before committing ({cell.source[:60]!r})"
        assert "execution" not in cell.metadata
    params = _parameter_cells(nb)
    assert len(params) == 1, f"{len(params)} cells tagged 'parameters', want exactly one"
    assert nb.cells[params[0]] is code[0], "the parameters cell must be the first code cell"
    # Papermill-style: plain `NAME = literal` assignments only, so values can be injected.
    for node in ast.parse(nb.cells[params[0]].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, ast.unparse(node)
        assert isinstance(node.targets[0], ast.Name) and node.targets[0].id.isupper()
        ast.literal_eval(node.value)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_kernel_is_this_interpreter(tmp_path: Path) -> None:
    """The kernel runs in the environment under test, whatever else Jupyter has installed."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys, immunoprofile\nprint(sys.prefix)\nprint(immunoprofile.__file__)")])
    execute(nb, tmp_path, timeout=120)
    prefix, package = nb.cells[0].outputs[0]["text"].split()
    assert prefix == sys.prefix
    import immunoprofile

    assert Path(package) == Path(immunoprofile.__file__)


# -- slow: executed top to bottom on the demo cohort ------------------------------------------
def _parameters(name: str, demo) -> dict[str, str]:
    run, cohort = str(demo.run), str(demo.out / "cohort")
    return {
        "01_quickstart": {"FCS_FILE": str(demo.out / "cohort" / "fcs" / "P001_W0_treg.fcs")},
        "02_batch_review": {"RUN_DIR": run},
        "03_timepoint_exploration": {"RUN_DIR": run},
        "04_arm_comparison": {"RUN_DIR": run},
        "05_cytokines_clinical": {"RUN_DIR": run, "COHORT_DIR": cohort},
    }[name]


def _files(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_the_demo_cohort(path: Path, demo_run, tmp_path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    inject_parameters(nb, _parameters(path.stem, demo_run))
    before = _files(demo_run.out)
    execute(nb, tmp_path)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert errors == []
    # Every notebook draws something (figures come back as PNG display data).
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.outputs)
    # The demo run is shared by the session: notebooks only read it.
    assert _files(demo_run.out) == before
