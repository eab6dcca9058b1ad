"""What a task tells the exporter: its serving spec, and how a task name finds it.

Each task folder ``tfrnn/tasks/<task>/`` that serves a model holds a ``serving.py`` whose
``SPEC`` is a :class:`ServingSpec`. The exporter reads the task's name from the workdir's
``config.json`` and takes that task's spec (:func:`spec_for`): it branches on no task, and a
new task needs only its own ``serving.py``.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import pkgutil
from collections.abc import Callable

import keras
import numpy as np

from tfrnn import tasks
from tfrnn.errors import UsageError


@dataclasses.dataclass(frozen=True)
class ServingSpec:
    """How one task's trained Keras model becomes a servable, checked SavedModel.

    Attributes:
      task: the task's name; the model is served under it (``MODEL_NAME``).
      layers: tfrnn's own layer classes that the task's ``model.keras`` may hold, which
        loading it needs (``keras.saving.load_model``'s ``custom_objects``).
      inputs: what the signatures take, in words, for the export's description.
      check_model: ``(model) -> None``; a one-line UsageError if ``model`` is not the task's
        (checked before anything is traced).
      archive: ``(model) -> keras.export.ExportArchive`` with the task's signatures, each
        checking its inputs first (:mod:`tfrnn.serving.checks`).
      example_inputs: ``(signatures) -> {signature: {input name: batch array}}``, a small
        valid request per signature; ``signatures`` is what the written SavedModel declares
        (:func:`tfrnn.serving.tf_serving.signatures`).
      keras_reference: ``(model, signature, inputs) -> {output name: array}``, what the
        trained Keras model says for ``inputs``: the signature's outputs must match it.
    """

    task: str
    layers: tuple[type, ...]
    inputs: str
    check_model: Callable[[keras.Model], None]
    archive: Callable[[keras.Model], keras.export.ExportArchive]
    example_inputs: Callable[[dict], dict[str, dict[str, np.ndarray]]]
    keras_reference: Callable[[keras.Model, str, dict], dict[str, np.ndarray]]


def serving_tasks() -> list[str]:
    """The tasks with a serving spec: the folders of ``tfrnn/tasks`` that hold ``serving.py``."""
    return sorted(
        package.name
        for package in pkgutil.iter_modules(tasks.__path__)
        if package.ispkg
        and importlib.util.find_spec(f"{tasks.__name__}.{package.name}.serving") is not None
    )


def spec_for(task: str) -> ServingSpec:
    """The serving spec of ``task`` (a name :func:`serving_tasks` lists); UsageError if none."""
    known = serving_tasks()
    if task not in known:
        raise UsageError(f"no task {task!r} serves a model; the tasks are {', '.join(known)}")
    return importlib.import_module(f"{tasks.__name__}.{task}.serving").SPEC


def custom_objects(spec: ServingSpec) -> dict[str, type]:
    """``spec.layers`` by the names ``model.keras`` gives them (``tfrnn>RNN``)."""
    return {keras.saving.get_registered_name(layer): layer for layer in spec.layers}
