"""Tests of what ``pip install .`` installs: the runtime dependencies and every package."""

import pathlib

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
