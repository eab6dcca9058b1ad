"""The repository reads on its own: its text names nothing that a fresh clone lacks."""

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parent.parent
TEXT_SUFFIXES = {".py", ".md", ".txt", ".toml", ".json", ".cfg", ".ini", ".yaml", ".yml", ".ipynb"}
# Notes, folders and tasks from outside the repository that its text must not lean on.
OUTSIDE_NAMES = re.compile(r"\bmission|findings\.md|tutorials\.md|torch_reference|shared/")
# The one optional outside folder: MNIST's IDX files beside the checkout, used only if it
# exists (the Makefile checks; the README says so).
ALLOWED = {
    "Makefile": "MNIST_DATA := $(wildcard ../shared/datasets/mnist)",
    "README.md": "`--data_dir ../shared/datasets/mnist` only if such a folder exists beside",
    "tutorials/3_mnist_rows.ipynb": "`../shared/datasets/mnist` beside the repository when that",
}


def _text_files():
    for path in sorted(REPO.iterdir()):
        if path.is_file() and not path.name.startswith(".venv"):
            yield path
    for folder in ("tfrnn", "tests", "experiments", "tutorials"):
        for path in sorted((REPO / folder).rglob("*")):
            if path.suffix in TEXT_SUFFIXES and "__pycache__" not in path.parts:
                yield path


def test_no_text_names_notes_or_folders_outside_the_repository():
    found = []
    for path in _text_files():
        if path == pathlib.Path(__file__).resolve():
            continue
        name = str(path.relative_to(REPO))
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE_NAMES.search(line) and ALLOWED.get(name, "\0") not in line:
                found.append(f"{name}:{number}: {line.strip()}")
    assert not found, "\n".join(found)


def test_the_scan_covers_the_documentation_and_the_code():
    names = {str(path.relative_to(REPO)) for path in _text_files()}
    assert {
        "README.md",
        "Makefile",
        "tfrnn/engine/training.py",
        "experiments/mnist/README.md",
        "tutorials/3_mnist_rows.ipynb",
    } <= names


# A bare `python -m …` or `python3 -m …`: the system Python, which has none of the packages.
BARE_PYTHON = re.compile(r"(?<![\w/.])python3? -m ")


def test_every_command_line_of_the_readme_runs_with_the_venvs_python():
    # After make, `.venv/bin/python -m tfrnn.…` works as written; `python -m` does not.
    lines = (REPO / "README.md").read_text().splitlines()
    bare = [f"README.md:{n}: {line}" for n, line in enumerate(lines, 1) if BARE_PYTHON.search(line)]
    assert not bare, "\n".join(bare)
    assert any(".venv/bin/python -m tfrnn.export " in line for line in lines)
