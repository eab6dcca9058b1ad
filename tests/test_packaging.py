"""Tests of what ``pip install .`` installs: the runtime dependencies, every package, and
``tfrnn-keras.pth``; and that ``make`` installed this checkout, editable."""

import ast
import importlib.metadata
import json
import pathlib
import site
import urllib.parse

import setuptools
import tomllib

REPO = pathlib.Path(__file__).resolve().parent.parent


def _pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as handle:
        return tomllib.load(handle)


def _requirements(name: str) -> list[str]:
    lines = (REPO / name).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_declared_dependencies_are_the_pinned_runtime_requirements():
    declared = _pyproject()["project"]["dependencies"]
    assert sorted(declared) == sorted(_requirements("requirements.txt"))
    names = {line.split("==")[0].lower().replace("_", "-") for line in declared}
    assert {"tensorflow", "tensorflow-datasets", "numpy", "absl-py", "matplotlib"} <= names


def test_every_folder_of_tfrnn_is_an_installed_package():
    include = _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    installed = set(setuptools.find_packages(str(REPO), include=include))
    folders = {
        ".".join(path.parent.relative_to(REPO).parts)
        for path in (REPO / "tfrnn").rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert folders == installed


def test_this_checkout_is_installed_editable_with_the_keras_loader():
    # make installs it (pip install -e .): import tfrnn and the .pth of tfrnn.saving, anywhere.
    (installed,) = [
        dist
        for dist in importlib.metadata.distributions(path=site.getsitepackages())
        if dist.metadata["Name"] == "tfrnn"
    ]
    origin = json.loads(installed.read_text("direct_url.json"))
    assert origin["dir_info"] == {"editable": True}
    assert pathlib.Path(urllib.parse.urlparse(origin["url"]).path) == REPO
    (pth,) = [path for path in installed.files if path.name == "tfrnn-keras.pth"]
    assert pth.read_text() == _setup_constant("PTH_LINE")  # what setup.py writes, as it is now


def _setup_constant(name: str):
    """The value of a constant of setup.py, read without running setup()."""
    tree = ast.parse((REPO / "setup.py").read_text())
    (value,) = [
        node.value
        for node in tree.body
        if isinstance(node, ast.Assign) and [target.id for target in node.targets] == [name]
    ]
    return ast.literal_eval(value)
