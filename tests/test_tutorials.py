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
