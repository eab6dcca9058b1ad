"""Import the TF1 tutorials' checkpoints: a ``tf.train.Saver`` checkpoint to a tfrnn workdir.

    python -m tfrnn.convert --tf1_checkpoint model.ckpt-800 --workdir runs/c2_from_tf1
    python -m tfrnn.export --workdir runs/c2_from_tf1 --export_dir models/mnist

The checkpoint is read by variable name (``tf.train.load_checkpoint``), no graph is built.
Which tutorial's graph wrote it, and its sizes, follow from the names and shapes:

=====================  ===============================================================  =======
graph                  variables (n: input width, u: units)                             tfrnn
=====================  ===============================================================  =======
A, hand-built cell     ``rnn_cell/W`` (2+u, u), ``rnn_cell/b`` (u), ``softmax/W`` (u,   concat
                       2), ``softmax/b`` (2)
A, ``BasicRNNCell``    ``rnn/basic_rnn_cell/kernel`` (2+u, u), ``.../bias`` (u),        simple
(static or dynamic)    ``softmax/W``, ``softmax/b``
C1, C2                 ``Variable`` (u, 10), ``Variable_1`` (10),                       lstm
                       ``rnn/basic_lstm_cell/kernel`` (28+u, 4u), ``.../bias`` (4u)
C3                     ``Variable`` (28, p) = W_in, ``Variable_1`` (u, 10) = W_out,     lstm
                       ``Variable_2`` (p) = b_in, ``Variable_3`` (10) = b_out,
                       ``rnn/basic_lstm_cell/kernel`` (p+u, 4u), ``.../bias`` (4u)
=====================  ===============================================================  =======

Optimizer slots (``<variable>/Adam``, ``/Adam_1``, ``/Adagrad``…) and ``beta1_power``,
``beta2_power``, ``global_step`` are recognised and left out: the workdir holds the model.

What needs ``--tutorial``: C1 and C2 write the same variables; they differ in the units
(C1 100, C2 128) and in what the classifier reads (C1 ``final_state.h``, C2 ``outputs[-1]``,
the same numbers for an LSTM), and the tutorial decides the workdir's configuration (the
preset: batch, rate, steps, ``static_rnn``'s unrolled graph). An LSTM with a 2-variable
classifier and 100 units is C1's, 128 C2's; any other width is ambiguous and refused without
``--tutorial C1`` or ``C2``. Tutorial A's three graphs need no flag: the names tell the
hand-built cell (-> ``concat``, its single matrix W) from ``BasicRNNCell`` (-> ``simple``);
``static_rnn`` and ``dynamic_rnn`` store the same variables and compute the same numbers, so
either converts to the same model (which runs as a loop or unrolled at will).

The cells' arithmetic: ``BasicRNNCell`` and the hand-built cell compute
``tanh([x, h] . K + b)``: Keras' ``SimpleRNNCell`` takes ``kernel = K[:n]``,
``recurrent_kernel = K[n:]``. ``BasicLSTMCell`` computes ``[x, h] . K + b`` in column blocks
i, j, f, o and adds ``forget_bias`` (a constructor argument, 1.0 by default and in every
tutorial; ``--forget_bias`` for another) to f at run time; Keras' ``LSTMCell`` has blocks
i, f, c(=j), o and no run-time constant (its ``unit_forget_bias`` only initialises the bias).
So ``kernel = K[:n]``, ``recurrent_kernel = K[n:]``, both with the blocks reordered, and the
bias reordered with ``forget_bias`` added to its f block.

The workdir (``--workdir``, which must not exist or be empty) receives ``model.keras`` (what
``python -m tfrnn.export`` serves), ``config.json`` (the task, ``echo`` or ``mnist``, which
says how the export serves the model, and for C1–C3 the tutorial's preset with the
checkpoint's sizes), ``metrics.json`` (``{"config": …, "epochs": []}``, the same config) and
``conversion.json`` (the tutorial, the checkpoint, the variables and the mapping). It is
written to a temporary folder beside it and renamed into place only when complete: a refused
checkpoint leaves nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from tfrnn.errors import UsageError
from tfrnn.tasks.echo.model import NUM_CLASSES as ECHO_CLASSES
from tfrnn.tasks.echo.model import build_echo_model
from tfrnn.tasks.mnist import config as mnist_config
from tfrnn.tasks.mnist import model as mnist_model

FLAGS = flags.FLAGS
TUTORIALS = ("A", "C1", "C2", "C3")
IMAGE_SIZE = 28
DIGITS = 10
DEFAULT_FORGET_BIAS = 1.0
# Scalars TF1's optimizers and training loops keep beside the model's variables.
BOOKKEEPING = ("beta1_power", "beta2_power", "global_step")
# The slot names of TF1's optimizers: a slot is ``<variable>/<slot name>``.
SLOT_NAMES = ("Adam", "Adam_1", "Adagrad", "Momentum", "RMSProp", "RMSProp_1", "Ftrl", "Ftrl_1")
# What each tutorial's LSTM width was: where it tells C1 from C2.
TUTORIAL_UNITS = {100: "C1", 128: "C2"}

# The graphs, as messages name them.
HAND_BUILT = "A (hand-built cell)"
BASIC_RNN = "A (BasicRNNCell, static_rnn or dynamic_rnn)"
LSTM_CLASSIFIER = "C1 or C2 (BasicLSTMCell and a classifier)"
PROJECTION_LSTM_CLASSIFIER = "C3 (input projection, BasicLSTMCell and a classifier)"
LSTM_KERNEL, LSTM_BIAS = "rnn/basic_lstm_cell/kernel", "rnn/basic_lstm_cell/bias"
GRAPHS = {
    # graph: (the variables it holds, in the order listed in messages; tutorials it can be)
    HAND_BUILT: (("rnn_cell/W", "rnn_cell/b", "softmax/W", "softmax/b"), ("A",)),
    BASIC_RNN: (
        ("rnn/basic_rnn_cell/kernel", "rnn/basic_rnn_cell/bias", "softmax/W", "softmax/b"),
        ("A",),
    ),
    LSTM_CLASSIFIER: (
        ("Variable", "Variable_1", LSTM_KERNEL, LSTM_BIAS),
        ("C1", "C2"),
    ),
    PROJECTION_LSTM_CLASSIFIER: (
        ("Variable", "Variable_1", "Variable_2", "Variable_3", LSTM_KERNEL, LSTM_BIAS),
        ("C3",),
    ),
}


@dataclasses.dataclass(frozen=True)
class Conversion:
    """A checkpoint understood: which tutorial, its sizes, and its model variables.

    Attributes:
      tutorial: ``A``, ``C1``, ``C2`` or ``C3``.
      graph: the graph that wrote it (a key of :data:`GRAPHS`).
      cell: the tfrnn cell kind (``concat``, ``simple`` or ``lstm``).
      units: the recurrent cell's units.
      projection: C3's input projection width, else 0.
      forget_bias: added to the LSTM's f block (LSTM checkpoints only, else None).
      variables: the model's variables by TF1 name (optimizer slots left out).
      optimizer_variables: the names of the slots and bookkeeping left out.
    """

    tutorial: str
    graph: str
    cell: str
    units: int
    projection: int
    forget_bias: float | None
    variables: dict
    optimizer_variables: tuple

    @property
    def task(self) -> str:
        """The task the model is, and is served as: ``echo`` for A, ``mnist`` for C1–C3."""
        return "echo" if self.tutorial == "A" else "mnist"

    def config(self) -> dict:
        """The run configuration the workdir records (C1–C3: the preset with these sizes)."""
        if self.tutorial == "A":
            return {"tutorial": "A", "cell": self.cell, "state_size": self.units}
        preset = mnist_config.PRESETS[self.tutorial]
        config = dataclasses.replace(preset, units=self.units, input_projection=self.projection)
        return dataclasses.asdict(config)


# --- Reading and recognising a checkpoint -------------------------------------------------


def read_checkpoint(prefix: str) -> dict[str, np.ndarray]:
    """Every variable of the TF1 checkpoint at ``prefix`` (or the latest in a folder)."""
    # A file of the checkpoint named instead of its prefix: the reader would find nothing.
    prefix = re.sub(r"\.(index|data-\d{5}-of-\d{5}|meta)$", "", prefix)
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.NotFoundError, ValueError) as error:
        raise UsageError(
            f"--tf1_checkpoint {prefix}: no TF1 checkpoint there (no {os.path.basename(prefix)}"
            f".index and .data-* files, nor a folder with a 'checkpoint' file){_nearby(prefix)}; "
            "variables found: none"
        ) from error
    except tf.errors.OpError as error:  # a damaged or foreign file
        first_line = error.message.strip().splitlines()[0] if error.message.strip() else ""
        raise UsageError(
            f"--tf1_checkpoint {prefix}: cannot read it ({first_line}); variables found: none"
        ) from error
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _nearby(prefix: str) -> str:
    """``; checkpoints in DIR: a, b`` for the prefixes beside a wrong one, if any."""
    folder = os.path.dirname(prefix) or "."
    if not os.path.isdir(folder):
        return ""
    found = sorted(name[: -len(".index")] for name in os.listdir(folder) if name.endswith(".index"))
    return f"; checkpoints in {folder}: {', '.join(found)}" if found else ""


def split_optimizer_variables(variables: dict) -> tuple[dict, tuple]:
    """(model variables, names of optimizer slots and bookkeeping scalars).

    A slot is named after the variable it belongs to, ``<variable>/<slot name>``: one of
    :data:`SLOT_NAMES`, or any name under another variable of the checkpoint.
    """
    slots = {
        name
        for name in variables
        if name in BOOKKEEPING
        or name.rpartition("/")[2] in SLOT_NAMES
        or name.rpartition("/")[0] in variables
    }
    model = {name: value for name, value in variables.items() if name not in slots}
    return model, tuple(sorted(slots))


def describe_variables(variables: dict, optimizer_variables=()) -> str:
    """``name (shape), …`` of the model variables, for error messages (one line)."""
    if not variables:
        return "none"
    listed = ", ".join(
        f"{name} {tuple(np.shape(value))}" for name, value in sorted(variables.items())
    )
    if optimizer_variables:
        listed += f" (and {len(optimizer_variables)} optimizer variables)"
    return listed


def _graph_of(names: set) -> str | None:
    """The graph whose cell variables ``names`` holds; C3 when C3's extra variables are there."""
    if "rnn_cell/W" in names or "rnn_cell/b" in names:
        return HAND_BUILT
    if {"rnn/basic_rnn_cell/kernel", "rnn/basic_rnn_cell/bias"} & names:
        return BASIC_RNN
    if {LSTM_KERNEL, LSTM_BIAS} & names:
        if {"Variable_2", "Variable_3"} & names:
            return PROJECTION_LSTM_CLASSIFIER
        return LSTM_CLASSIFIER
    return None


def _expected_shapes(graph: str, shapes: dict) -> tuple[int, dict]:
    """(units, the shape every variable of ``graph`` must have), the sizes read from the cell
    bias and (C3) the projection bias; raises :class:`_Misfit` if the bias gives no size."""
    lstm = graph in (LSTM_CLASSIFIER, PROJECTION_LSTM_CLASSIFIER)
    bias_name = LSTM_BIAS if lstm else GRAPHS[graph][0][1]
    bias_shape = shapes[bias_name]
    gates = 4 if lstm else 1
    if len(bias_shape) != 1 or bias_shape[0] == 0 or bias_shape[0] % gates:
        raise _Misfit(f"{bias_name} has shape {bias_shape}; expected ({gates} * units,)")
    units = bias_shape[0] // gates
    if not lstm:
        kernel, bias, softmax_w, softmax_b = GRAPHS[graph][0]
        return units, {
            kernel: (ECHO_CLASSES + units, units),
            bias: (units,),
            softmax_w: (units, ECHO_CLASSES),
            softmax_b: (ECHO_CLASSES,),
        }
    if graph == LSTM_CLASSIFIER:
        return units, {
            "Variable": (units, DIGITS),
            "Variable_1": (DIGITS,),
            LSTM_KERNEL: (IMAGE_SIZE + units, 4 * units),
            LSTM_BIAS: (4 * units,),
        }
    projection = shapes["Variable_2"][0] if len(shapes["Variable_2"]) == 1 else units
    return units, {
        "Variable": (IMAGE_SIZE, projection),
        "Variable_1": (units, DIGITS),
        "Variable_2": (projection,),
        "Variable_3": (DIGITS,),
        LSTM_KERNEL: (projection + units, 4 * units),
        LSTM_BIAS: (4 * units,),
    }


class _Misfit(Exception):
    """A variable's shape that no size of the graph explains (turned into a UsageError)."""


def recognise(
    variables: dict, tutorial: str | None = None, forget_bias: float | None = None
) -> Conversion:
    """Which tutorial's graph wrote ``variables`` (name -> array), with its sizes.

    Args:
      variables: every variable of the checkpoint, optimizer slots included.
      tutorial: ``A``, ``C1``, ``C2`` or ``C3`` when the variables alone cannot tell.
      forget_bias: the ``BasicLSTMCell``'s forget_bias (LSTM checkpoints; default 1.0).

    Raises:
      UsageError: one line naming what is wrong and listing the variables found: no
        tutorial's graph, a variable missing, extra or misshaped, an ambiguous checkpoint, or
        a ``--tutorial``/``--forget_bias`` that does not fit it.
    """
    model, slots = split_optimizer_variables(variables)
    found = describe_variables(model, slots)
    if tutorial is not None and tutorial not in TUTORIALS:
        raise UsageError(f"--tutorial must be one of {', '.join(TUTORIALS)}; got {tutorial!r}")
    graph = _graph_of(set(model))
    if graph is None:
        raise UsageError(
            "the checkpoint is not one of the tutorials' graphs (A: rnn_cell/W or "
            "rnn/basic_rnn_cell/kernel and softmax/W; C1-C3: rnn/basic_lstm_cell/kernel and "
            f"Variable…); variables found: {found}"
        )
    names, tutorials = GRAPHS[graph]
    missing = [name for name in names if name not in model]
    if missing:
        raise UsageError(
            f"the checkpoint looks like the graph of tutorial {graph} but lacks "
            f"{', '.join(missing)}; variables found: {found}"
        )
    extra = sorted(set(model) - set(names))
    if extra:
        raise UsageError(
            f"the checkpoint holds the variables of tutorial {graph} and also {', '.join(extra)}, "
            f"which that graph does not have; variables found: {found}"
        )
    shapes = {name: tuple(np.shape(value)) for name, value in model.items()}
    try:
        units, expected = _expected_shapes(graph, shapes)
        for name in names:
            if shapes[name] != expected[name]:
                raise _Misfit(f"{name} has shape {shapes[name]}; expected {expected[name]}")
    except _Misfit as misfit:
        raise UsageError(f"tutorial {graph}: {misfit}; variables found: {found}") from None
    for name in names:
        if model[name].dtype != np.float32:
            raise UsageError(
                f"{name} is {model[name].dtype}, not float32; variables found: {found}"
            )
    tutorial = _choose_tutorial(graph, tutorials, tutorial, units, found)
    lstm = tutorial != "A"
    if forget_bias is not None and not lstm:
        raise UsageError(
            "--forget_bias applies to the LSTM tutorials (C1-C3); this checkpoint is the graph "
            f"of tutorial {graph}"
        )
    return Conversion(
        tutorial=tutorial,
        graph=graph,
        cell="lstm" if lstm else ("concat" if graph == HAND_BUILT else "simple"),
        units=units,
        projection=expected["Variable_2"][0] if tutorial == "C3" else 0,
        forget_bias=(DEFAULT_FORGET_BIAS if forget_bias is None else forget_bias) if lstm else None,
        variables=model,
        optimizer_variables=slots,
    )


def _choose_tutorial(graph, tutorials, tutorial, units, found) -> str:
    if tutorial is not None:
        if tutorial not in tutorials:
            raise UsageError(
                f"--tutorial {tutorial} does not fit the checkpoint: it holds the graph of "
                f"tutorial {graph}; variables found: {found}"
            )
        return tutorial
    if len(tutorials) == 1:
        return tutorials[0]
    if units in TUTORIAL_UNITS:
        return TUTORIAL_UNITS[units]
    raise UsageError(
        f"ambiguous checkpoint: an LSTM of {units} units with a classifier is C1's graph or "
        "C2's (the same variables; C1 had 100 units, C2 128); pass --tutorial C1 or "
        f"--tutorial C2; variables found: {found}"
    )


# --- Building the tfrnn model ---------------------------------------------------------------


def lstm_weights(kernel, bias, input_dim: int, forget_bias: float):
    """``BasicLSTMCell``'s (kernel, bias) -> Keras ``LSTMCell``'s (kernel, recurrent_kernel,
    bias): rows split at ``input_dim``, column blocks i, j, f, o -> i, f, c(=j), o, and
    ``forget_bias`` folded into the f block of the bias."""

    def reorder(matrix):
        i, j, f, o = np.split(matrix, 4, axis=-1)
        return np.concatenate([i, f, j, o], axis=-1)

    i, j, f, o = np.split(bias, 4)
    folded = np.concatenate([i, f + np.float32(forget_bias), j, o]).astype(np.float32)
    return reorder(kernel[:input_dim]), reorder(kernel[input_dim:]), folded


def _assign(variable, value) -> None:
    if tuple(variable.shape) != tuple(np.shape(value)):  # a bug here, not a user error
        raise AssertionError(f"{variable.path}: {variable.shape} != {np.shape(value)}")
    variable.assign(value)


def _assign_lstm(cell, kernel, bias, input_dim, forget_bias) -> None:
    for variable, value in zip(
        (cell.kernel, cell.recurrent_kernel, cell.bias),
        lstm_weights(kernel, bias, input_dim, forget_bias),
        strict=True,
    ):
        _assign(variable, value)


def build_model(conversion: Conversion) -> keras.Model:
    """The tfrnn model of ``conversion`` with the checkpoint's weights.

    Tutorial A: the stateless echo model (``tfrnn.tasks.echo.model.build_echo_model``), what an
    echo workdir's ``model.keras`` holds. C1-C3: ``tfrnn.tasks.mnist.model.build_model`` of the
    tutorial's preset with the checkpoint's sizes.
    """
    weights = conversion.variables
    if conversion.tutorial == "A":
        model = build_echo_model(conversion.cell, conversion.units)
        cell = model.get_layer("rnn").cell
        kernel_name, bias_name = GRAPHS[conversion.graph][0][:2]
        kernel = weights[kernel_name]
        if conversion.cell == "concat":
            _assign(cell.kernel, kernel)
        else:
            _assign(cell.kernel, kernel[:ECHO_CLASSES])
            _assign(cell.recurrent_kernel, kernel[ECHO_CLASSES:])
        _assign(cell.bias, weights[bias_name])
        classifier = ("softmax/W", "softmax/b")
    else:
        model = mnist_model.build_model(mnist_config.Config(**conversion.config()))
        input_dim = IMAGE_SIZE
        if conversion.tutorial == "C3":
            projection = model.get_layer("input_projection")
            _assign(projection.kernel, weights["Variable"])
            _assign(projection.bias, weights["Variable_2"])
            input_dim = conversion.projection
            classifier = ("Variable_1", "Variable_3")
        else:
            classifier = ("Variable", "Variable_1")
        cell = model.get_layer("rnn").cell
        _assign_lstm(
            cell, weights[LSTM_KERNEL], weights[LSTM_BIAS], input_dim, conversion.forget_bias
        )
    logits = model.get_layer("logits")
    _assign(logits.kernel, weights[classifier[0]])
    _assign(logits.bias, weights[classifier[1]])
    return model


# --- The workdir ------------------------------------------------------------------------------


def _check_workdir(workdir: str) -> None:
    if os.path.exists(workdir) and not (os.path.isdir(workdir) and not os.listdir(workdir)):
        raise UsageError(f"--workdir {workdir} exists and is not empty; name a new folder")


def write_workdir(conversion: Conversion, checkpoint: str, workdir: str) -> keras.Model:
    """Writes ``model.keras``, ``config.json``, ``metrics.json`` and ``conversion.json`` to
    ``workdir``, all at once (a temporary folder beside it, renamed); returns the model."""
    _check_workdir(workdir)
    model = build_model(conversion)
    parent = os.path.dirname(os.path.abspath(workdir))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".convert-", dir=parent)
    try:
        model.save(os.path.join(staging, "model.keras"))
        config = {"task": conversion.task, **conversion.config()}
        with open(os.path.join(staging, "config.json"), "w") as handle:
            json.dump(config, handle, indent=2)
        with open(os.path.join(staging, "metrics.json"), "w") as handle:
            json.dump({"config": config, "epochs": []}, handle, indent=2)
        record = {
            "tutorial": conversion.tutorial,
            "graph": conversion.graph,
            "checkpoint": os.path.abspath(checkpoint),
            "cell": conversion.cell,
            "units": conversion.units,
            "input_projection": conversion.projection,
            "forget_bias_folded_into_bias": conversion.forget_bias,
            "variables": {name: list(np.shape(v)) for name, v in conversion.variables.items()},
            "optimizer_variables_not_imported": list(conversion.optimizer_variables),
        }
        with open(os.path.join(staging, "conversion.json"), "w") as handle:
            json.dump(record, handle, indent=2)
        if os.path.isdir(workdir):
            os.rmdir(workdir)  # empty (checked): the rename takes its place
        os.rename(staging, workdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model


def convert(
    checkpoint: str, workdir: str, tutorial: str | None = None, forget_bias: float | None = None
) -> Conversion:
    """Reads ``checkpoint``, recognises it and writes the tfrnn workdir; returns what it found."""
    _check_workdir(workdir)
    conversion = recognise(read_checkpoint(checkpoint), tutorial, forget_bias)
    write_workdir(conversion, checkpoint, workdir)
    return conversion


def main(argv):
    """The command: convert, then say what was found and how to export it."""
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    tutorial = FLAGS.tutorial.upper() if FLAGS.tutorial else None
    conversion = convert(FLAGS.tf1_checkpoint, FLAGS.workdir, tutorial, FLAGS.forget_bias)
    sizes = f"{conversion.units} units"
    if conversion.projection:
        sizes += f", input projection {conversion.projection}"
    print(
        f"converted {FLAGS.tf1_checkpoint} (tutorial {conversion.tutorial}: {conversion.cell} "
        f"cell, {sizes}) to {FLAGS.workdir}/model.keras"
    )
    if conversion.optimizer_variables:
        print(f"left out {len(conversion.optimizer_variables)} optimizer variables")
    print(f"serve it: python -m tfrnn.export --workdir {FLAGS.workdir} --export_dir models/NAME")


def define_flags() -> None:
    """Defines the command's flags (absl's global flags), when it runs as a command."""
    flags.DEFINE_string(
        "tf1_checkpoint", None, "TF1 checkpoint prefix (model.ckpt-800) or its folder"
    )
    flags.DEFINE_string("workdir", None, "new tfrnn workdir to write")
    flags.DEFINE_string(
        "tutorial",
        None,
        "A, C1, C2 or C3, where the variables cannot tell (C1 vs C2 when the "
        "units are neither 100 nor 128)",
    )
    flags.DEFINE_float(
        "forget_bias", None, "the BasicLSTMCell's forget_bias (default 1.0, as in every tutorial)"
    )
    flags.mark_flags_as_required(["tf1_checkpoint", "workdir"])
