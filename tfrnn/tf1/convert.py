"""Convert a TF1 checkpoint: a tutorial's graph to a tfrnn workdir, any other ``rnn_cell``
model to Keras files.

    python -m tfrnn.convert --tf1_checkpoint model.ckpt-800 --workdir runs/c2_from_tf1
    python -m tfrnn.convert --tf1_checkpoint my_model.ckpt --workdir converted/my_model

The checkpoint is read by variable name; no graph is built. Optimizer slots, ``beta1_power``,
``beta2_power`` and ``global_step`` are left out. Both naming eras are read: ``kernel`` and
``bias`` (TF 1.2 on), ``weights`` and ``biases`` (TF 1.0 and 1.1).

**A tutorial's graph** (its variables are exactly those of tutorial A, C1, C2 or C3, or
``--tutorial`` says which; :mod:`tfrnn.tf1.tutorials`): the folder becomes a tfrnn workdir,
``model.keras`` (what ``python -m tfrnn.export`` serves), ``config.json`` (the task, and for
C1-C3 the tutorial's preset with the checkpoint's sizes), ``metrics.json`` and
``conversion.json``.

**Any other model** (:mod:`tfrnn.tf1.recurrent`): every recurrent scope, the cells one
``dynamic_rnn``, ``static_rnn`` or bidirectional call ran (``rnn/multi_rnn_cell``,
``bidirectional_rnn``), becomes ``<scope with _ for />.keras``, a Keras model holding that one
layer: ``keras.saving.load_model(path).layers[0](inputs, mask=mask)`` gives TF1's ``outputs``. Every
other variable (dense heads, embeddings) goes to ``variables.npz`` under its TF1 name. A
PTB-style word model (``embedding``, one recurrent scope, ``softmax_w``, ``softmax_b``;
:mod:`tfrnn.tf1.word_model`) becomes one ``model.keras`` from token ids to logits.
``conversion.json`` says what went where and which arithmetic was folded in.

What the checkpoint does not store is the TF1 constructors' defaults unless a flag says
otherwise: ``--forget_bias`` (1.0; the PTB model used 0.0), ``--cell_clip`` and
``--proj_clip`` (none). Anything that cannot be mapped is refused in one line, and nothing is
written: the folder is written beside its place and renamed into it when complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile

import keras
import numpy as np
from absl import flags

from tfrnn import cli
from tfrnn.errors import UsageError, check_folder
from tfrnn.tf1 import tutorials
from tfrnn.tf1.cells import RunTimeOptions
from tfrnn.tf1.checkpoint import (
    TrainingVariables,
    describe_variables,
    read_checkpoint,
    split_training_variables,
)
from tfrnn.tf1.recurrent import build_layer, find_recurrent_scopes
from tfrnn.tf1.word_model import build_word_model, find_word_model

FLAGS = flags.FLAGS
USAGE = """\
Converts a TF1 tf.train.Saver checkpoint. A tutorial's graph becomes a tfrnn workdir, which
then exports and serves like a trained one; any other model of TF1 RNN cells (BasicRNNCell,
BasicLSTMCell, LSTMCell, GRUCell, MultiRNNCell, bidirectional, TF 1.0 to 1.15) becomes a Keras
file per recurrent layer, its other variables in variables.npz, and conversion.json.

examples:
  {command} --tf1_checkpoint /old/run/model.ckpt-800 --workdir runs/c2_from_tf1
  {command} --tf1_checkpoint /old/run/model.ckpt-5000 --workdir converted/my_model
  {command} --tf1_checkpoint /old/ptb/model.ckpt --workdir converted/ptb --forget_bias 0

What a checkpoint does not store is TF1's default unless a flag says otherwise: forget_bias
1.0, no cell_clip or proj_clip, tanh and sigmoid.

More: docs/from_tf1.md (every TF1 cell family and what moves to Keras).
"""
NEW_NAMES, OLD_NAMES = "TF >= 1.2 names (kernel, bias)", "TF 1.0-1.1 names (weights, biases)"
# How each family's variables become the Keras cell's, for conversion.json.
ARITHMETIC = {
    "BasicRNNCell": "SimpleRNNCell: kernel = K[:n], recurrent_kernel = K[n:], bias = b",
    "LSTM": (
        "kernel = K[:n], recurrent_kernel = K[n:], column blocks i, j, f, o -> i, f, c, o; "
        "forget_bias added to the f block of the bias"
    ),
    "GRUCell": (
        "GRUCell(reset_after=False): columns z, r, h = gates' second block, gates' first "
        "block, candidate; rows split at n into kernel and recurrent_kernel"
    ),
}


def check_workdir(workdir: str) -> None:
    """Refuses a ``--workdir`` that is a file or a folder with something in it."""
    if os.path.exists(workdir):
        check_folder(workdir, "--workdir")
        if os.listdir(workdir):
            raise UsageError(f"--workdir {workdir} exists and is not empty; name a new folder")


@contextlib.contextmanager
def staged(workdir: str):
    """Yields a temporary folder beside ``workdir`` that becomes ``workdir`` once the block
    ends without an error; otherwise nothing is left."""
    parent = os.path.dirname(os.path.abspath(workdir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    try:
        yield staging
        if os.path.isdir(workdir):
            os.rmdir(workdir)  # empty (checked): the rename takes its place
        os.rename(staging, workdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_json(folder: str, name: str, content) -> None:
    with open(os.path.join(folder, name), "w") as handle:
        json.dump(content, handle, indent=2)


def _shapes(variables: dict, names) -> dict:
    return {name: list(np.shape(variables[name])) for name in names}


# --- A tutorial's graph -----------------------------------------------------------------------


def write_workdir(conversion: tutorials.Conversion, checkpoint: str, workdir: str) -> keras.Model:
    """Writes a tutorial's ``model.keras``, ``config.json``, ``metrics.json`` and
    ``conversion.json`` to ``workdir``, all at once; returns the model."""
    check_workdir(workdir)
    model = tutorials.build_model(conversion)
    with staged(workdir) as staging:
        model.save(os.path.join(staging, "model.keras"))
        config = {"task": conversion.task, **conversion.config()}
        _write_json(staging, "config.json", config)
        _write_json(staging, "metrics.json", {"config": config, "epochs": []})
        record = {
            "tutorial": conversion.tutorial,
            "graph": conversion.graph,
            "checkpoint": os.path.abspath(checkpoint),
            "naming": OLD_NAMES if conversion.renamed else NEW_NAMES,
            "cell": conversion.cell,
            "units": conversion.units,
            "input_projection": conversion.projection,
            "forget_bias_folded_into_bias": conversion.forget_bias,
            "variables": _shapes(conversion.variables, conversion.variables),
            "read_as": conversion.renamed,
            "optimizer_variables_not_imported": list(conversion.training.names()),
        }
        _write_json(staging, "conversion.json", record)
    return model


# --- Any other model --------------------------------------------------------------------------


def layer_file(scope: str) -> str:
    """The file a recurrent scope's layer is written to: ``rnn/multi_rnn_cell`` ->
    ``rnn_multi_rnn_cell.keras``."""
    return scope.replace("/", "_") + ".keras"


def _cell_record(cell, variables: dict) -> dict:
    lstm = cell.family in ("BasicLSTMCell", "LSTMCell")
    return {
        "scope": cell.scope,
        "tf1": cell.describe(),
        "variables": _shapes(variables, cell.variables.values()),
        "arithmetic": ARITHMETIC["LSTM" if lstm else cell.family],
    }


def _scope_record(scope, variables: dict, built: keras.layers.Layer) -> dict:
    directions = ("forward", "backward") if scope.bidirectional else ("forward",)
    return {
        "tf1": scope.describe(),
        "keras": type(built).__name__,
        "input_size": scope.input_size,
        "output_size": scope.output_size,
        "cells": {
            direction: [_cell_record(cell, variables) for cell in cells]
            for direction, cells in zip(directions, scope.directions, strict=True)
        },
    }


def write_model_folder(
    checkpoint: str, variables: dict, workdir: str, options: RunTimeOptions
) -> dict:
    """Converts any ``rnn_cell`` model's checkpoint into ``workdir`` (module docstring);
    returns what ``conversion.json`` records.

    Args:
      checkpoint: the checkpoint's prefix, which conversion.json records.
      variables: every variable it holds, by name (:func:`read_checkpoint`).
      workdir: the folder to write, which must not exist or be empty.
      options: what the checkpoint does not store (forget bias, clips).

    Raises:
      UsageError: no recurrent cell in it, or one that cannot be mapped; nothing is written.
    """
    check_workdir(workdir)
    variables, training = split_training_variables(variables)
    found = describe_variables(variables, training)
    try:
        scopes = find_recurrent_scopes(variables)
    except UsageError as error:
        raise UsageError(f"{error}; variables found: {found}") from None
    if not scopes:
        raise UsageError(
            "no TF1 recurrent cell in the checkpoint (a tutorial's graph, or a scope with a "
            "BasicRNNCell's, BasicLSTMCell's, LSTMCell's or GRUCell's kernel and bias); "
            f"variables found: {found}"
        )
    word_model = find_word_model(variables, scopes)
    recurrent = {name for scope in scopes for name in scope.variable_names}
    others = sorted(set(variables) - recurrent) if word_model is None else []
    record = {
        "checkpoint": os.path.abspath(checkpoint),
        "naming": OLD_NAMES if _old_names(recurrent) else NEW_NAMES,
        "folded": {"forget_bias": options.forget_bias},
        "not_stored_taken_as": {"cell_clip": options.cell_clip, "proj_clip": options.proj_clip},
        "layers": {},
        "optimizer_variables_not_imported": list(training.names()),
    }
    with staged(workdir) as staging:
        if word_model is not None:
            model = build_word_model(word_model, variables, options)
            model.save(os.path.join(staging, "model.keras"))
            record["model"] = {
                "file": "model.keras",
                "from": "token ids (batch, time) int32",
                "to": f"logits (batch, time, {word_model.vocabulary})",
                "embedding": word_model.prefix + "embedding",
                "logits": [word_model.prefix + "softmax_w", word_model.prefix + "softmax_b"],
            }
            layer = model.get_layer(word_model.recurrent.scope.replace("/", "_"))
            record["layers"][word_model.recurrent.scope] = _scope_record(
                word_model.recurrent, variables, layer
            )
        for scope in scopes if word_model is None else []:
            layer = build_layer(scope, variables, options)
            holder = keras.Sequential([keras.Input((None, scope.input_size)), layer])
            holder.save(os.path.join(staging, layer_file(scope.scope)))
            record["layers"][scope.scope] = {
                "file": layer_file(scope.scope),
                **_scope_record(scope, variables, layer),
            }
        if others:
            np.savez(os.path.join(staging, "variables.npz"), **{n: variables[n] for n in others})
            record["other_variables"] = {
                "file": "variables.npz",
                "variables": _shapes(variables, others),
            }
        _write_json(staging, "conversion.json", record)
    return record


def _old_names(names) -> bool:
    return any(name.rpartition("/")[2] in ("weights", "biases") for name in names)


# --- The command ------------------------------------------------------------------------------


def convert(
    checkpoint: str,
    workdir: str,
    tutorial: str | None = None,
    forget_bias: float | None = None,
    cell_clip: float | None = None,
    proj_clip: float | None = None,
):
    """Converts ``checkpoint`` into ``workdir``: a tutorial's graph (or any, with
    ``tutorial``) as a tfrnn workdir, returning its :class:`tutorials.Conversion`; any other
    model as Keras files, returning what ``conversion.json`` records."""
    check_workdir(workdir)
    variables = read_checkpoint(checkpoint)
    if tutorial is not None or tutorials.is_tutorial_graph(split_training_variables(variables)[0]):
        for name, value in (("--cell_clip", cell_clip), ("--proj_clip", proj_clip)):
            if value is not None:
                raise UsageError(f"{name} applies to LSTMCell models, not to the tutorials' graphs")
        conversion = tutorials.recognise(variables, tutorial, forget_bias)
        write_workdir(conversion, checkpoint, workdir)
        return conversion
    forget_bias = tutorials.DEFAULT_FORGET_BIAS if forget_bias is None else forget_bias
    return write_model_folder(
        checkpoint, variables, workdir, RunTimeOptions(forget_bias, cell_clip, proj_clip)
    )


def _report_tutorial(conversion: tutorials.Conversion, workdir: str) -> None:
    sizes = f"{conversion.units} units"
    if conversion.projection:
        sizes += f", input projection {conversion.projection}"
    naming = ", TF 1.0-1.1 names" if conversion.renamed else ""
    print(
        f"converted {FLAGS.tf1_checkpoint} (tutorial {conversion.tutorial}: {conversion.cell} "
        f"cell, {sizes}{naming}) to {workdir}/model.keras"
    )
    if conversion.training:
        print(f"left out {conversion.training.describe()}")
    print(
        f"serve it: {cli.python_command()} -m tfrnn.export --workdir {workdir} "
        "--export_dir models/NAME"
    )


def _report_model(record: dict, workdir: str) -> None:
    print(f"converted {FLAGS.tf1_checkpoint} ({record['naming']}) to {workdir}:")
    for scope, layer in record["layers"].items():
        target = layer.get("file", "model.keras")
        print(f"  {scope}: {layer['tf1']} -> {workdir}/{target}")
    if "model" in record:
        print(f"  the word model, token ids to logits -> {workdir}/model.keras")
    if "other_variables" in record:
        names = list(record["other_variables"]["variables"])
        print(f"  {len(names)} other variables ({', '.join(names)}) -> {workdir}/variables.npz")
    print(
        f"forget_bias {record['folded']['forget_bias']:g} folded into the LSTMs' biases (not "
        "stored in a checkpoint; --forget_bias if the cells were built with another)"
    )
    left_out = TrainingVariables.of(record["optimizer_variables_not_imported"])
    if left_out:
        print(f"left out {left_out.describe()}")
    if "model" in record:
        load = f'keras.saving.load_model("{workdir}/model.keras")'
    else:
        first = next(iter(record["layers"].values()))["file"]
        load = f'keras.saving.load_model("{workdir}/{first}").layers[0]'
    print(f"load it: {load}; {workdir}/conversion.json says what went where")


def main(argv):
    """The command: convert, then say what was found and what to do next."""
    cli.refuse_arguments(argv)
    tutorial = FLAGS.tutorial.upper() if FLAGS.tutorial else None
    result = convert(
        FLAGS.tf1_checkpoint,
        FLAGS.workdir,
        tutorial,
        FLAGS.forget_bias,
        FLAGS.cell_clip,
        FLAGS.proj_clip,
    )
    if isinstance(result, tutorials.Conversion):
        _report_tutorial(result, FLAGS.workdir)
    else:
        _report_model(result, FLAGS.workdir)


def define_flags() -> None:
    """Defines the command's flags (absl's global flags), when it runs as a command."""
    flags.DEFINE_string(
        "tf1_checkpoint", None, "TF1 checkpoint prefix (model.ckpt-800) or its folder"
    )
    flags.DEFINE_string("workdir", None, "new folder to write (must not exist, or be empty)")
    flags.DEFINE_string(
        "tutorial",
        None,
        "A, C1, C2 or C3, where the variables cannot tell (C1 vs C2 when the "
        "units are neither 100 nor 128)",
    )
    flags.DEFINE_float(
        "forget_bias",
        None,
        "the LSTM cells' forget_bias, not stored in a checkpoint (default 1.0, TF1's default "
        "and every tutorial's; the PTB word model used 0.0)",
    )
    flags.DEFINE_float("cell_clip", None, "the LSTMCells' cell_clip, not stored in a checkpoint")
    flags.DEFINE_float("proj_clip", None, "the LSTMCells' proj_clip, not stored in a checkpoint")
    flags.mark_flags_as_required(["tf1_checkpoint", "workdir"])
