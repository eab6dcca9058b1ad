"""The recurrent layers of any TF1 ``rnn_cell`` checkpoint, as Keras layers with its weights.

    layers = tfrnn.tf1.recurrent_layers("model.ckpt-1000")
    outputs = layers["rnn/multi_rnn_cell"](inputs, mask=mask)   # TF1's `outputs`

TF1 runs a cell (or a ``MultiRNNCell`` of cells) under the scope of the call, ``rnn`` for
``dynamic_rnn`` and ``static_rnn`` (or the call's ``scope=``), ``bidirectional_rnn/fw`` and
``…/bw`` for the bidirectional calls, all under the user's own ``variable_scope``\\ s. A
recurrent scope here is what one call ran: the scope of the cell handed to ``dynamic_rnn`` /
``static_rnn`` (``rnn/gru_cell``, ``Model/RNN/rnn/multi_rnn_cell``), or the scope of a
bidirectional call (``bidirectional_rnn``). ``static_rnn`` and ``dynamic_rnn`` store the same
variables and compute the same numbers, so one layer stands for both, unrolled or not.

Each becomes a ``tfrnn.layers.cells.RNN`` (a ``keras.layers.RNN``) over the Keras cell of each
TF1 cell (:mod:`tfrnn.tf1.cells`), a ``StackedRNNCells`` for a ``MultiRNNCell``, and a
``keras.layers.Bidirectional`` (``merge_mode="concat"``) for the bidirectional calls. A
boolean ``mask`` (batch, time) stands for ``sequence_length``: outputs are zero past each
sequence's end (``zero_output_for_mask``) and the final state is its last valid step's, as
``dynamic_rnn`` gives.
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np

from tfrnn.errors import UsageError
from tfrnn.layers.cells import RNN
from tfrnn.tf1 import cells as tf1_cells
from tfrnn.tf1.checkpoint import read_checkpoint, split_training_variables

_STACK_LAYER = re.compile(r"(?P<stack>.+)/cell_(?P<index>\d+)/[^/]+")


@dataclasses.dataclass(frozen=True)
class RecurrentScope:
    """What one TF1 rnn call ran.

    Attributes:
      scope: the key: the cell's scope, or a bidirectional call's.
      directions: the cells of each direction, forward first (one direction unless
        bidirectional), each a tuple of the stack's layers in order.
      stacked: for each direction, whether its cells sit in a ``MultiRNNCell`` (a stack of
        one included).
    """

    scope: str
    directions: tuple
    stacked: tuple

    @property
    def bidirectional(self) -> bool:
        return len(self.directions) == 2

    @property
    def input_size(self) -> int:
        return self.directions[0][0].input_size

    @property
    def output_size(self) -> int:
        return sum(cells[-1].output_size for cells in self.directions)

    @property
    def variable_names(self) -> list[str]:
        return [
            name for cells in self.directions for cell in cells for name in cell.variables.values()
        ]

    def describe(self) -> str:
        """``MultiRNNCell([LSTMCell(8), GRUCell(4)])``, bidirectional as ``fw: …, bw: …``."""

        def direction(cells, stacked):
            listed = ", ".join(cell.describe() for cell in cells)
            return f"MultiRNNCell([{listed}])" if stacked else listed

        described = [direction(*pair) for pair in zip(self.directions, self.stacked, strict=True)]
        if self.bidirectional:
            return f"bidirectional, fw: {described[0]}, bw: {described[1]}"
        return described[0]


def find_recurrent_scopes(variables: dict) -> list[RecurrentScope]:
    """The recurrent scopes among ``variables`` (the model's, name -> array), by scope.

    Raises:
      UsageError: a cell no family explains, a stack with a layer missing or of the wrong
        input width, a bidirectional call whose directions take different inputs.
    """
    calls: dict[str, dict[str, dict[int, tf1_cells.Cell]]] = {}
    tops, stacked = {}, {}
    for cell in tf1_cells.find_cells(variables):
        scope = (cell[0] if isinstance(cell, tuple) else cell).scope
        layer = _STACK_LAYER.fullmatch(scope)
        top, index = (layer["stack"], int(layer["index"])) if layer else (scope, 0)
        bidirectional_call, _, last = top.rpartition("/")[0].rpartition("/")
        call, direction = (bidirectional_call, last) if last in ("fw", "bw") else (top, "fw")
        calls.setdefault(call, {}).setdefault(direction, {})[index] = cell
        tops[call, direction], stacked[call, direction] = top, bool(layer)
    scopes = []
    for call, directions in sorted(calls.items()):
        if set(directions) != {"fw", "bw"}:  # a lone fw or bw scope is no bidirectional call
            ((direction, layers),) = directions.items()
            top = tops[call, direction]
            scopes.append(RecurrentScope(top, (_stack(top, layers),), (stacked[call, direction],)))
            continue
        ordered = tuple(_stack(call, directions[name]) for name in ("fw", "bw"))
        if len({cells[0].input_size for cells in ordered}) > 1:
            raise UsageError(
                f"{call}: its forward and backward cells take inputs of different widths "
                f"({', '.join(str(cells[0].input_size) for cells in ordered)})"
            )
        scopes.append(RecurrentScope(call, ordered, (stacked[call, "fw"], stacked[call, "bw"])))
    return scopes


def _stack(call: str, layers: dict) -> tuple:
    """The layers of one direction in order, checked: none missing, each fed the last's width."""
    missing = sorted(set(range(max(layers) + 1)) - set(layers))
    if missing:
        raise UsageError(
            f"{call}: a MultiRNNCell without cell_{missing[0]}, though it has "
            f"cell_{max(layers)}: the checkpoint lacks a layer's variables"
        )
    ordered = _resolve([layers[index] for index in sorted(layers)])
    for below, above in zip(ordered, ordered[1:], strict=False):
        if above.input_size != below.output_size:
            raise UsageError(
                f"{above.scope} takes inputs {above.input_size} wide but {below.scope} below it "
                f"gives {below.output_size}"
            )
    return ordered


def _resolve(layers: list) -> tuple:
    """The stack's layers with each ambiguous one (a tuple of candidate cells) replaced by the
    candidate whose widths fit the layers beside it; refused where none or both fit."""
    layers = list(layers)
    while any(isinstance(layer, tuple) for layer in layers):
        resolved = False
        for index, layer in enumerate(layers):
            if not isinstance(layer, tuple):
                continue
            below = layers[index - 1] if index > 0 else None
            above = layers[index + 1] if index + 1 < len(layers) else None
            fitting = [
                cell
                for cell in layer
                if (not isinstance(below, tf1_cells.Cell) or cell.input_size == below.output_size)
                and (not isinstance(above, tf1_cells.Cell) or cell.output_size == above.input_size)
            ]
            known = [n for n in (below, above) if isinstance(n, tf1_cells.Cell)]
            if len(fitting) == 1 and known:
                layers[index], resolved = fitting[0], True
        if not resolved:
            raise tf1_cells.ambiguous(next(layer for layer in layers if isinstance(layer, tuple)))
    return tuple(layers)


def build_layer(
    scope: RecurrentScope,
    variables: dict,
    options: tf1_cells.RunTimeOptions,
    *,
    unroll: bool = False,
    return_state: bool = False,
) -> keras.layers.Layer:
    """The built Keras layer of ``scope`` with the checkpoint's weights.

    Called on inputs (batch, time, input_size) and an optional boolean ``mask`` (batch, time),
    it returns TF1's ``outputs`` (batch, time, output_size); with ``return_state`` also the
    final states, per direction and layer, each cell's as Keras orders it: ``[h]``, or
    ``[h, c]`` for an LSTM (TF1's ``LSTMStateTuple`` is ``(c, h)``).
    """
    name = scope.scope.replace("/", "_")

    def rnn(cells, go_backwards, suffix):
        keras_cells = [tf1_cells.keras_cell(cell, options) for cell in cells]
        return RNN(
            # A stack of one runs as its cell (the same states, flattened): Keras 3.15's while
            # loop fails on a mask with a StackedRNNCells of one cell.
            keras.layers.StackedRNNCells(keras_cells) if len(keras_cells) > 1 else keras_cells[0],
            return_sequences=True,
            return_state=return_state,
            zero_output_for_mask=True,
            go_backwards=go_backwards,
            unroll=unroll,
            name=name + suffix,
        )

    if scope.bidirectional:
        layer = keras.layers.Bidirectional(
            rnn(scope.directions[0], False, "_fw"),
            backward_layer=rnn(scope.directions[1], True, "_bw"),
            merge_mode="concat",
            name=name,
        )
        directions = lambda: (layer.forward_layer, layer.backward_layer)  # noqa: E731
    else:
        layer = rnn(scope.directions[0], False, "")
        directions = lambda: (layer,)  # noqa: E731
    # Bidirectional builds its own copies of the layers: the weights go in once it is built.
    layer(np.zeros((1, 1, scope.input_size), np.float32))
    for cells, built in zip(scope.directions, directions(), strict=True):
        keras_cells = built.cell.cells if len(cells) > 1 else [built.cell]
        for cell, keras_cell in zip(cells, keras_cells, strict=True):
            tf1_cells.assign(keras_cell, tf1_cells.keras_weights(cell, variables, options))
    return layer


def recurrent_layers(
    checkpoint_prefix: str,
    forget_bias: float = 1.0,
    *,
    cell_clip: float | None = None,
    proj_clip: float | None = None,
    unroll: bool = False,
    return_state: bool = False,
) -> dict[str, keras.layers.Layer]:
    """Every recurrent scope of a TF1 checkpoint, as a Keras layer with its weights.

    Args:
      checkpoint_prefix: the ``tf.train.Saver`` prefix (``model.ckpt-1000``) or its folder.
      forget_bias: the LSTMs' run-time ``forget_bias`` (not in the checkpoint; TF1's default
        1.0), folded into their biases.
      cell_clip, proj_clip: the ``LSTMCell``\\ s' clips, likewise not in the checkpoint.
      unroll: ``True`` builds each layer step by step as ``static_rnn`` did (needs a static
        time length), ``False`` as a while loop like ``dynamic_rnn``; the same numbers.
      return_state: the layers also return their final states (see :func:`build_layer`).

    Returns:
      {scope: layer}, e.g. ``rnn/multi_rnn_cell``, ``Model/RNN/rnn/multi_rnn_cell``,
      ``bidirectional_rnn``. Called on (batch, time, features) with an optional boolean
      ``mask`` (batch, time) for ``sequence_length``, a layer returns TF1's ``outputs``.

    Raises:
      UsageError: no checkpoint, no recurrent cell in it, or a cell that cannot be mapped.
    """
    variables, _ = split_training_variables(read_checkpoint(checkpoint_prefix))
    scopes = find_recurrent_scopes(variables)
    if not scopes:
        raise UsageError(f"{checkpoint_prefix}: no TF1 recurrent cell in the checkpoint")
    options = tf1_cells.RunTimeOptions(forget_bias, cell_clip, proj_clip)
    return {
        scope.scope: build_layer(
            scope, variables, options, unroll=unroll, return_state=return_state
        )
        for scope in scopes
    }
