"""The echo-dependency model: one-hot symbols -> recurrent layer -> per-step logits.

The tutorial's network (r2rt, "RNNs in TensorFlow I"): each step's symbol (0 or 1) is
one-hot encoded, a recurrent cell of ``state_size`` units reads the sequence, and a softmax
layer reads every step's output. Shapes: symbols (batch, time) int32 -> one-hot
(batch, time, 2) -> rnn outputs (batch, time, state_size) -> logits (batch, time, 2).

Three builds share one weight order (the cell's weights, then ``logits`` kernel and bias),
so trained weights move between them with ``get_weights`` / ``set_weights``:

* stateless (``batch_size=None, stateful=False``): any batch, any length; what is saved
  and served (:func:`stateless_copy` makes it from a trained model of any build).
* stateful (``stateful=True``, fixed ``batch_size``): the layer keeps the final state of
  each call and starts the next call from it (truncated BPTT with the state in the layer).
* explicit state (``explicit_state=True``): inputs ``[symbols, *initial_states]``, outputs
  ``[logits, *final_states]``: the TF1 program's ``init_state`` feed and
  ``final_state`` fetch.
"""

from __future__ import annotations

import keras

from tfrnn.layers.cells import cell_kind, make_rnn

NUM_CLASSES = 2


@keras.saving.register_keras_serializable(package="tfrnn")
class OneHot(keras.layers.Layer):
    """Integer symbols (batch, time) -> float one-hot (batch, time, num_classes).

    A registered layer rather than a ``Lambda`` so that saved models reload without
    deserialising arbitrary code.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes

    def call(self, symbols):
        return keras.ops.one_hot(symbols, self.num_classes, dtype=self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return (*input_shape, self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def state_sizes(kind: str, state_size: int) -> list[int]:
    """Widths of the recurrent state tensors: ``[h]``, or ``[h, c]`` for an LSTM."""
    return [state_size, state_size] if kind == "lstm" else [state_size]


def build_echo_model(
    kind: str,
    state_size: int,
    *,
    batch_size: int | None = None,
    stateful: bool = False,
    explicit_state: bool = False,
    unroll: bool = False,
) -> keras.Model:
    """Builds the echo model.

    Args:
      kind: the cell, ``concat`` (the tutorial's hand-built one), ``simple`` or ``lstm``.
      state_size: units of the cell.
      batch_size: a fixed batch (required when ``stateful``); ``None`` for any batch.
      stateful: keep the final state in the ``rnn`` layer between calls.
      explicit_state: take the initial state(s) as extra inputs, (batch, state_size) each,
        and return the final state(s) after the logits.
      unroll: unroll the time loop (``static_rnn``); needs a fixed time length in use.

    Returns:
      A ``keras.Model``; input int32 symbols (batch, time), output logits
      (batch, time, 2) (plus the final states when ``explicit_state``). Layers are named
      ``one_hot``, ``rnn`` and ``logits``.
    """
    if stateful and batch_size is None:
        raise ValueError("a stateful model needs a fixed batch_size")
    if stateful and explicit_state:
        raise ValueError("choose one of stateful and explicit_state: the state lives in one place")
    symbols = keras.Input(shape=(None,), batch_size=batch_size, dtype="int32", name="symbols")
    rnn = make_rnn(
        kind,
        state_size,
        return_sequences=True,
        return_state=explicit_state,
        stateful=stateful,
        unroll=unroll,
        name="rnn",
    )
    readout = keras.layers.Dense(NUM_CLASSES, name="logits")
    one_hot = OneHot(name="one_hot")(symbols)
    if not explicit_state:
        return keras.Model(symbols, readout(rnn(one_hot)), name=f"echo_{kind}_{state_size}")
    initial_states = [
        keras.Input(shape=(size,), batch_size=batch_size, name=f"initial_state_{index}")
        for index, size in enumerate(state_sizes(kind, state_size))
    ]
    outputs, *final_states = rnn(one_hot, initial_state=initial_states)
    return keras.Model(
        [symbols, *initial_states],
        [readout(outputs), *final_states],
        name=f"echo_{kind}_{state_size}_explicit_state",
    )


def stateless_copy(model: keras.Model, *, explicit_state: bool = False) -> keras.Model:
    """A stateless build of a trained echo model, with its weights.

    Training saves it, and serving serves it: any batch and any length, and no state kept
    between calls, whatever ``model``'s batch size, statefulness or unrolling. The cell's kind
    and width are read from ``model``'s layer ``rnn``.

    Args:
      model: an echo model of any build (:func:`build_echo_model`).
      explicit_state: build the explicit-state model: ``[symbols (batch, time), *states
        (batch, state_size)]`` -> ``[logits (batch, time, 2), *final states]``.

    Returns:
      The copy: symbols (batch, time) int32 -> logits (batch, time, 2), or the explicit-state
      model. ValueError if ``model`` has no layer ``rnn``, a cell of no kind, or other weights.
    """
    cell = model.get_layer("rnn").cell  # ValueError: "No such layer: rnn"
    kind = cell_kind(cell)
    copy = build_echo_model(kind, cell.units, explicit_state=explicit_state)
    try:
        copy.set_weights(model.get_weights())
    except ValueError as error:
        raise ValueError(f"the weights do not fit a {kind} model: {error}") from error
    return copy
