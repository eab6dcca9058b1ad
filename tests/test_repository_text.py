"""The repository reads on its own: its text names nothing that a fresh clone lacks."""

import glob
import importlib.util
import pathlib
import re
import subprocess
import sys

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
    for folder in ("tfrnn", "tests", "experiments", "tutorials", "docs"):
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


def test_the_readme_runs_the_commands_with_the_venvs_python():
    # After make, `.venv/bin/python -m tfrnn.…` works as written; `python -m` does not.
    lines = (REPO / "README.md").read_text().splitlines()
    assert any(".venv/bin/python -m tfrnn.export " in line for line in lines)


# --- The README and docs/ name only what exists ------------------------------------------------

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Paths a document names: `in backticks` from the repository's root, or a link's target from
# the document's own folder. Only paths under the repository's own folders are checked
# (runs/, models/ and the like are what the commands write).
BACKTICKED = re.compile(r"`([^`\s]+)`")
LINK = re.compile(r"\]\(([^)\s#,]+)(?:#[^)\s]*)?\)")
REPOSITORY_ROOTS = ("tfrnn/", "tests/", "experiments/", "tutorials/", "docs/", ".ci/")
COMMAND = re.compile(r"python3? -m (tfrnn[\w.]*)(.*)")
FLAG = re.compile(r"(?<![\w-])--(\w+)")


def _globbed(path: str) -> list[str]:
    """``tfrnn/{export,predict}.py`` and ``tfrnn/tasks/<task>/serving.py`` as globs."""
    braces = re.search(r"\{([^}]*)\}", path)
    if braces:
        return [
            pattern
            for choice in braces.group(1).split(",")
            for pattern in _globbed(path[: braces.start()] + choice + path[braces.end() :])
        ]
    return [re.sub(r"<[^>]*>", "*", path.split("::")[0].rstrip(".,:;"))]


def _named_paths(document: pathlib.Path):
    """(line number, path as written, the globs it must match) of every path it names."""
    for number, line in enumerate(document.read_text().splitlines(), 1):
        for token in BACKTICKED.findall(line):
            if token.startswith(REPOSITORY_ROOTS) or token in ("Makefile", "README.md"):
                yield number, token, [REPO / pattern for pattern in _globbed(token)]
        for target in LINK.findall(line):
            if "://" not in target:
                yield number, target, [document.parent / pattern for pattern in _globbed(target)]


def test_the_documents_exist_and_the_readme_links_them():
    names = {path.relative_to(REPO).as_posix() for path in DOCUMENTS}
    pages = {"serving", "scaling", "from_tf1", "architecture", "performance"}
    assert {f"docs/{page}.md" for page in pages} <= names
    readme = (REPO / "README.md").read_text()
    assert all(f"](docs/{page}.md)" in readme for page in pages)
    assert len(readme.splitlines()) <= 120


def test_every_path_the_documents_name_exists():
    missing = [
        f"{document.relative_to(REPO)}:{number}: {written}"
        for document in DOCUMENTS
        for number, written, patterns in _named_paths(document)
        if not any(glob.glob(str(pattern)) for pattern in patterns)
    ]
    assert not missing, "\n".join(missing)


def _commands():
    """{module: [(document, line number, flags named after it)]} of every command line."""
    found: dict[str, list] = {}
    for document in DOCUMENTS:
        for number, line in enumerate(document.read_text().splitlines(), 1):
            for module, rest in COMMAND.findall(line):
                flags = FLAG.findall(rest.split("#")[0])
                found.setdefault(module, []).append((document, number, flags))
    return found


def test_every_module_the_documents_run_exists():
    missing = [
        f"{document.relative_to(REPO)}:{number}: python -m {module}"
        for module, uses in _commands().items()
        for document, number, _ in uses
        if importlib.util.find_spec(module) is None
    ]
    assert not missing, "\n".join(missing)
    assert {"tfrnn.export", "tfrnn.convert", "tfrnn.experiments.mnist"} <= set(_commands())


def _defined_flags(modules) -> dict[str, set[str]]:
    """{module: the flags its --helpfull lists}, the commands run side by side."""
    running = {
        module: subprocess.Popen(
            [sys.executable, "-m", module, "--helpfull"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for module in modules
    }
    defined = {}
    for module, process in running.items():
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, f"{module} --helpfull exited {process.returncode}"
        defined[module] = set(re.findall(r"^\s+--(?:\[no\])?(\w+)", output, re.MULTILINE))
    return defined


def test_every_flag_the_documents_give_a_command_is_one_of_its_flags():
    commands = _commands()
    defined = _defined_flags(sorted(commands))
    unknown = [
        f"{document.relative_to(REPO)}:{number}: python -m {module} --{flag}"
        for module, uses in commands.items()
        for document, number, flags in uses
        for flag in flags
        if flag not in defined[module] | {"help", "helpfull"}
    ]
    assert not unknown, "\n".join(unknown)
    assert "workdir" in defined["tfrnn.export"]  # the help was read


def test_no_document_runs_the_system_python():
    bare = [
        f"{document.relative_to(REPO)}:{number}: {line}"
        for document in DOCUMENTS
        for number, line in enumerate(document.read_text().splitlines(), 1)
        if BARE_PYTHON.search(line)
    ]
    assert not bare, "\n".join(bare)
