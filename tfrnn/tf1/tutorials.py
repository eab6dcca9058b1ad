"""The tutorials' own TF1 graphs: which one wrote a checkpoint, and its tfrnn model.

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

Optimizer slots (``<variable>/Adam``, ``/Adam_1``, ``/Adagrad``…), ``beta1_power``,
``beta2_power`` and ``global_step`` are recognised and left out: the workdir holds the model.

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

Both naming eras are read: TF 1.0 and 1.1 named the cells' variables ``weights`` and
``biases`` (``rnn/basic_lstm_cell/weights``), TF 1.2 on ``kernel`` and ``bias``.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tfrnn.errors import UsageError
from tfrnn.tasks.echo.model import NUM_CLASSES as ECHO_CLASSES
from tfrnn.tasks.echo.model import build_echo_model
from tfrnn.tasks.mnist import config as mnist_config
from tfrnn.tasks.mnist import model as mnist_model
from tfrnn.tf1.cells import ERAS, assign, lstm_weights
from tfrnn.tf1.checkpoint import TrainingVariables, describe_variables, split_training_variables

TUTORIALS = ("A", "C1", "C2", "C3")
IMAGE_SIZE = 28
DIGITS = 10
DEFAULT_FORGET_BIAS = 1.0
KERAS_LSTM = ("kernel", "recurrent_kernel", "bias")
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
      variables: the model's variables by TF1 name, TF 1.2's names for the cell's
        (optimizer slots left out).
      training: what the optimizer and the training loop kept, left out.
      renamed: {TF 1.0/1.1 name: the TF 1.2 name it was read as}, for an old checkpoint.
    """

    tutorial: str
    graph: str
    cell: str
    units: int
    projection: int
    forget_bias: float | None
    variables: dict
    training: TrainingVariables
    renamed: dict

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


# --- Recognising a tutorial's checkpoint ------------------------------------------------


def read_in_new_names(model: dict) -> tuple[dict, dict]:
    """(``model`` with the tutorial cells' TF 1.0/1.1 names read as TF 1.2's, what was renamed):
    ``rnn/basic_lstm_cell/weights`` is ``rnn/basic_lstm_cell/kernel``, ``…/biases`` ``…/bias``."""
    renamed = {}
    for name in model:
        scope, _, leaf = name.rpartition("/")
        if scope in ("rnn/basic_rnn_cell", "rnn/basic_lstm_cell"):
            for new, (_, old) in ERAS.items():
                if leaf == old:
                    renamed[name] = f"{scope}/{new}"
    return {renamed.get(name, name): value for name, value in model.items()}, renamed


def is_tutorial_graph(model: dict) -> bool:
    """Whether ``model`` (the model's variables) holds exactly one tutorial graph's names."""
    names = set(read_in_new_names(model)[0])
    return any(names == set(graph_names) for graph_names, _ in GRAPHS.values())


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
    model, training = split_training_variables(variables)
    model, renamed = read_in_new_names(model)
    found = describe_variables(model, training)
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
        training=training,
        renamed=renamed,
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
            assign(cell, {"kernel": kernel, "bias": weights[bias_name]})
        else:
            split = {"kernel": kernel[:ECHO_CLASSES], "recurrent_kernel": kernel[ECHO_CLASSES:]}
            assign(cell, {**split, "bias": weights[bias_name]})
        classifier = ("softmax/W", "softmax/b")
    else:
        model = mnist_model.build_model(mnist_config.Config(**conversion.config()))
        input_dim = IMAGE_SIZE
        if conversion.tutorial == "C3":
            projection = model.get_layer("input_projection")
            assign(projection, {"kernel": weights["Variable"], "bias": weights["Variable_2"]})
            input_dim = conversion.projection
            classifier = ("Variable_1", "Variable_3")
        else:
            classifier = ("Variable", "Variable_1")
        lstm = lstm_weights(
            weights[LSTM_KERNEL], weights[LSTM_BIAS], input_dim, conversion.forget_bias
        )
        assign(model.get_layer("rnn").cell, dict(zip(KERAS_LSTM, lstm, strict=True)))
    assign(
        model.get_layer("logits"),
        {"kernel": weights[classifier[0]], "bias": weights[classifier[1]]},
    )
    return model
