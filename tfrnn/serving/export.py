"""SavedModels for TensorFlow Serving, from a training workdir.

``python -m tfrnn.export --workdir runs/mnist --export_dir models/mnist`` reads the workdir's
``model.keras``, the task its ``config.json`` records (and ``metrics.json``, for the record)
and writes::

    models/mnist/
      1/                               the SavedModel (tag ``serve``): saved_model.pb, variables/
      1.json                           its signatures (names, dtypes, shapes) and curl commands
      1.serving_default.request.json   a ready REST request body for each signature

TF Serving serves ``<export_dir>/<integer version>/`` and ignores the other files. A new
export takes the next free version (or ``--version N``) and never overwrites one: it is
written to a hidden folder and renamed into place, so a server that watches the folder never
sees half a model. Version folders get the mode of a plain ``mkdir`` (0755 under umask 022),
so a server running as another user can read them. The model is named after its task,
``mnist`` or ``echo``, whatever the folder: the curl commands in ``1.json`` use that name, and
the server must serve the folder under it (``MODEL_NAME=mnist``).

What is exported is the task's: its serving spec (:mod:`tfrnn.serving.spec`; MNIST's in
:mod:`tfrnn.tasks.mnist.serving`, echo's in :mod:`tfrnn.tasks.echo.serving`) gives the
signatures, each of which checks its inputs first (:mod:`tfrnn.serving.checks`), an example
request per signature and the Keras model's answers to them. This module does the rest, the
same for every task: the exported graph is checked for ``CudnnRNN*`` ops, which a CPU-only
server cannot run, and each example is run the way TF Serving runs it
(:func:`tfrnn.serving.tf_serving.run_like_tf_serving`) and compared with the Keras model's
answer before the version is put in place; the description holds the REST requests and
answers (:mod:`tfrnn.serving.rest`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging

from tfrnn import cli
from tfrnn.errors import UsageError, check_folder, failure_reason
from tfrnn.serving import rest, tf_serving
from tfrnn.serving.spec import ServingSpec, custom_objects, serving_tasks, spec_for

# Outputs of the export and of the Keras model must agree this closely.
SELF_CHECK_TOLERANCE = 1e-5

# What --help says ({command}: how to run it from the current folder, tfrnn.cli.help_text).
USAGE = """\
Turns a training workdir (its model.keras) into a new version of a SavedModel that
TensorFlow Serving loads, after checking that it answers as the Keras model does.

examples:
  {command} --workdir runs/mnist --export_dir models/mnist
  {command} --workdir runs/echo_deps/concat_steps5_state4_stateful --export_dir models/echo

Each export is a new version folder, models/mnist/1, 2, ..., never overwritten, and beside
it 1.json (its signatures and curl commands) and a ready request body per signature. Serve
the folder under the task's name: MODEL_NAME=mnist or echo.

More: docs/serving.md (signatures, REST, streaming, bad requests, latency).
"""


def load_workdir(workdir: str) -> tuple[ServingSpec, keras.Model, dict]:
    """The serving spec of the task ``workdir`` records, its trained model and run config.

    Returns ``(spec, model, config)``: :func:`recorded_task`'s spec, ``model.keras`` (checked
    to be the task's model) and the config ``metrics.json`` holds (``{}`` without one).
    """
    model_path = os.path.join(workdir, "model.keras")
    check_folder(workdir, "--workdir")
    if not os.path.isfile(model_path):
        raise UsageError(_without_model(workdir))
    spec = spec_for(recorded_task(workdir))
    try:
        model = keras.saving.load_model(
            model_path, custom_objects=custom_objects(spec), compile=False
        )
    except Exception as error:  # a zip, JSON or weights problem: all mean a bad file
        raise UsageError(f"cannot load {model_path}: {error}".splitlines()[0]) from error
    spec.check_model(model)
    config = {}
    metrics_path = os.path.join(workdir, "metrics.json")
    if os.path.isfile(metrics_path):
        try:
            with open(metrics_path) as handle:
                config = json.load(handle).get("config", {})
        except (ValueError, AttributeError) as error:
            raise UsageError(f"{metrics_path} is not a metrics file: {error}") from error
    return spec, model, config


def _without_model(workdir: str) -> str:
    """Why ``workdir`` has no model.keras, and what to export or run instead."""
    runs = sorted(
        os.path.join(workdir, name)
        for name in os.listdir(workdir)
        if os.path.isfile(os.path.join(workdir, name, "model.keras"))
    )
    if runs:
        return f"{workdir} is a suite's folder, not a run's: export one of its runs, " + ", ".join(
            runs
        )
    latest = tf.train.latest_checkpoint(os.path.join(workdir, "checkpoints"))
    if latest:
        return (
            f"{workdir} holds a run stopped before its end (last checkpoint {latest}): run the"
            " same training command again, which finishes it and writes model.keras"
        )
    return f"{os.path.join(workdir, 'model.keras')} does not exist: train the model first"


def recorded_task(workdir: str) -> str:
    """The task the workdir's ``config.json`` records (``"task": "mnist"``); UsageError if none.

    Training and ``python -m tfrnn.convert`` record it; the task, not the model's input
    shapes, says which serving spec exports the model.
    """
    path = os.path.join(workdir, "config.json")
    tasks = " or ".join(f'"{task}"' for task in serving_tasks())
    if not os.path.isfile(path):
        raise UsageError(f'{path} does not exist: the workdir records no task ("task": {tasks})')
    try:
        with open(path) as handle:
            config = json.load(handle)
    except ValueError as error:
        raise UsageError(f"{path} is not JSON: {error}") from error
    if not isinstance(config, dict) or "task" not in config:
        raise UsageError(f'{path} records no task: it needs "task": {tasks}')
    return config["task"]


def versions(export_dir: str) -> list[int]:
    """The integer version folders in ``export_dir``, in increasing order."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(
        int(name)
        for name in os.listdir(export_dir)
        if name.isdigit() and os.path.isdir(os.path.join(export_dir, name))
    )


def _folder_mode() -> int:
    """The mode a plain ``mkdir`` gives a new folder: 0o777 less the umask (0o755 for 022)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


def _make_readable(folder: str) -> None:
    """Gives ``folder`` and every folder in it the mode of a plain ``mkdir``.

    The staging folder comes from ``mkdtemp`` (mode 0700) and the rename keeps its mode: a
    TF Serving process running as another user could not read a version folder left so.
    """
    mode = _folder_mode()
    for path, _, _ in os.walk(folder):
        os.chmod(path, mode)


def _make_staging(export_dir: str) -> str:
    """A new hidden folder in ``export_dir`` (created if missing); one-line UsageError if not."""
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise UsageError(f"--export_dir {export_dir} is a file, not a folder")
    try:
        os.makedirs(export_dir, exist_ok=True)
        # Hidden and non-numeric: TF Serving ignores it until it is renamed to a version.
        return tempfile.mkdtemp(prefix=".export-", dir=export_dir)
    except OSError as error:
        raise UsageError(f"cannot write to --export_dir {export_dir}: {error.strerror}") from error


def _write_checked(spec: ServingSpec, model: keras.Model, staging: str) -> tuple[dict, dict, dict]:
    """Writes the SavedModel to ``staging`` and checks it against ``model``.

    Returns ``(signatures, example inputs, answers)``: what the SavedModel's signatures
    declare (:func:`tfrnn.serving.tf_serving.signatures`), and per signature the spec's
    example request and the outputs TF Serving's path gives it.
    """
    try:
        spec.archive(model).write_out(staging, verbose=False)
    except tf.errors.OpError as error:  # TensorFlow's own writes: the variables
        raise OSError(error.message.splitlines()[0]) from error
    tf_serving.check_portable(staging)
    described = tf_serving.signatures(staging)
    examples = spec.example_inputs(described)
    answers = {}
    for signature, inputs in examples.items():
        answers[signature] = tf_serving.run_like_tf_serving(staging, signature, inputs)
        expected = spec.keras_reference(model, signature, inputs)
        for name, value in expected.items():
            # A mismatch is a bug in this module, not a user error: let it raise.
            np.testing.assert_allclose(
                answers[signature][name],
                value,
                atol=SELF_CHECK_TOLERANCE,
                err_msg=f"export self-check: {signature} output {name} differs from Keras",
            )
    return described, examples, answers


def export_workdir(workdir: str, export_dir: str, version: int | None = None) -> dict:
    """Exports ``workdir``'s model to ``export_dir/<version>/`` and describes it beside it.

    Args:
      workdir: a training workdir with ``model.keras``, ``config.json`` recording the task
        (and ``metrics.json``).
      export_dir: the model's base folder, the one TF Serving is pointed at.
      version: the version number; ``None`` for one above the highest there.

    Returns:
      The description written to ``export_dir/<version>.json``: model name (the task),
      version, signatures, REST requests with curl commands and the answers this version
      gives them.
    """
    if version is not None and version <= 0:
        raise UsageError(f"--version must be a positive integer, got {version}")
    spec, model, config = load_workdir(workdir)
    existing = versions(export_dir)
    version = version if version is not None else (existing[-1] + 1 if existing else 1)
    version_dir = os.path.join(export_dir, str(version))
    if os.path.exists(version_dir):
        raise UsageError(
            f"{version_dir} already exists and exports never overwrite; leave out --version to "
            f"take the next free one ({existing[-1] + 1 if existing else 1})"
        )
    staging = _make_staging(export_dir)
    try:
        described, examples, answers = _write_checked(spec, model, staging)
        _make_readable(staging)
        os.rename(staging, version_dir)
    except OSError as error:  # a full disk, a quota, a folder made read-only meanwhile
        raise UsageError(
            f"cannot write version {version} to {export_dir} ({failure_reason(error)}); nothing"
            " was put in place, the versions there are as they were"
        ) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    try:
        return _describe_version(
            spec, config, workdir, export_dir, version, described, examples, answers
        )
    except OSError as error:
        raise UsageError(
            f"version {version} is in place in {export_dir} and servable, but its description"
            f" files could not be written ({failure_reason(error)})"
        ) from None


def _describe_version(spec, config, workdir, export_dir, version, described, examples, answers):
    """Writes ``<version>.json`` and the REST request files beside the version; returns the
    description (see :func:`export_workdir`)."""
    version_dir = os.path.join(export_dir, str(version))
    description = {
        "model": spec.task,
        "task": spec.task,
        "version": version,
        "saved_model": version_dir,
        "tag": tf_serving.SERVE_TAG,
        "inputs": spec.inputs,
        "signatures": described,
        "rest": rest.rest_description(spec.task, export_dir, version, examples, answers),
        "source": {"workdir": workdir, "config": config},
    }
    with open(os.path.join(export_dir, f"{version}.json"), "w") as handle:
        json.dump(description, handle, indent=1)
    return description


def main(argv, flag_values=None):
    """The command: export, then print the signatures, how to serve it and curl commands."""
    cli.refuse_arguments(argv)
    values = flags.FLAGS if flag_values is None else flag_values
    # TensorFlow's SavedModel writer logs every asset and shard at INFO.
    logging.set_verbosity(logging.WARNING)
    # Trace on the CPU: a graph traced on a GPU may hold cuDNN ops a CPU server cannot run.
    tf.config.set_visible_devices([], "GPU")
    description = export_workdir(values.workdir, values.export_dir, values.version)
    print(
        f"exported the {description['task']} model of {values.workdir} to "
        f"{description['saved_model']} (tag serve)"
    )
    for name, signature in description["signatures"].items():
        print(f"  {name}: {_describe(signature['inputs'])} -> {_describe(signature['outputs'])}")
    print(f"description: {os.path.join(values.export_dir, str(description['version']))}.json")
    print(f"serve it as {description['model']}: {description['rest']['serve']}")
    for name, request in description["rest"]["requests"].items():
        print(f"try ({name}): {request['curl']}")


def _describe(tensors: dict) -> str:
    return ", ".join(f"{name} {info['dtype']} {info['shape']}" for name, info in tensors.items())


def define_flags(flag_values=None):
    """Defines the command's flags (in ``flag_values``, or absl's global flags)."""
    flag_values = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string(
        "workdir", None, "training workdir holding model.keras", flag_values=flag_values
    )
    flags.DEFINE_string(
        "export_dir", None, "model base folder, e.g. models/mnist", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "version", None, "version number; default: the next free one", flag_values=flag_values
    )
    flags.mark_flags_as_required(["workdir", "export_dir"], flag_values=flag_values)
