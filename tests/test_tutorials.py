"""Every notebook of tutorials/ runs top to bottom in quick mode (TFRNN_QUICK=1).

Each notebook is executed by nbclient in a fresh kernel whose working directory is
tutorials/, as Jupyter opens it; a cell that raises, an assertion cell included, fails the
test with that cell's error. The outputs are not written back: the committed notebooks hold
the outputs of full runs (`make tutorials`).
"""

import pathlib

import nbclient
import nbformat
import pytest

TUTORIALS = pathlib.Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def test_there_is_a_notebook_per_tutorial():
    assert len(NOTEBOOKS) == 5, [path.name for path in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_notebook_runs_in_quick_mode(path, monkeypatch):
    monkeypatch.setenv("TFRNN_QUICK", "1")
    notebook = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    client.execute()
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.get("output_type") == "error"
    ]
    assert not errors


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[path.stem for path in NOTEBOOKS])
def test_committed_outputs_come_from_a_full_run(path):
    # `make tutorials` writes them: every cell run, in full mode, and no cell (an assertion
    # cell included) failed. A notebook saved after a quick run says "quick mode" here.
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.get("execution_count") for cell in code_cells), "not every cell was run"
    texts = [
        output.get("text", "")
        for cell in code_cells
        for output in cell.outputs
        if output.get("output_type") == "stream"
    ]
    assert texts and texts[0].strip() == "full mode", texts[:1]
    assert not any(output.get("output_type") == "error" for c in code_cells for output in c.outputs)
