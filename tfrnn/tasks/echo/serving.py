"""Echo's serving spec: whole series, and streams one symbol at a time with the state.

The served model is a stateless copy of the trained one with the same weights
(:func:`tfrnn.tasks.echo.model.stateless_copy`): a stateful model would share one state among
all clients and fix the batch size. The state is passed in and out explicitly instead.

* ``serving_default`` takes ``symbols`` int32 [None, None] (0 or 1), starts from a zero state
  and returns per-step ``probabilities`` float32 [None, None, 2] and the final state ``h``
  (and ``c`` for an LSTM), each float32 [None, state_size].
* ``step`` takes one symbol per stream, ``symbols`` int32 [None], and the state ``h`` (and
  ``c``), and returns ``probabilities`` float32 [None, 2] and the new state: a client of a
  stateless server streams by feeding each answer's state into the next call.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf

from tfrnn.errors import UsageError
from tfrnn.layers.cells import RNN, ConcatRNNCell
from tfrnn.serving import checks
from tfrnn.serving.spec import ServingSpec
from tfrnn.serving.tf_serving import DEFAULT_SIGNATURE
from tfrnn.tasks.echo.model import NUM_CLASSES, OneHot, stateless_copy

STEP_SIGNATURE = "step"
STATE_NAMES = ("h", "c")  # h for every cell; c too for an LSTM
# Sequence of the example requests: long enough to show the t-3 and t-8 echoes.
EXAMPLE_SYMBOLS = [1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1]
INPUTS = (
    "symbols: int32, 0 or 1. serving_default takes whole series [batch, time] and "
    "starts from a zero state; step takes one symbol per stream [batch] and the state "
    "(h, and c for an LSTM: float32 [batch, state_size], zeros to start) and returns the "
    "next state to send with the next symbol"
)


def check_model(model: keras.Model) -> None:
    """UsageError unless ``model`` takes int symbols (batch, time).

    What the input cannot show (a layer ``rnn`` with one of tfrnn's cells, the weights of an
    echo model) :func:`archive` checks when it copies the model.
    """
    inputs = [(tensor.dtype, tuple(tensor.shape)) for tensor in model.inputs]
    # One input, of that kind of dtype and shape.
    if [("int" in dtype, len(shape)) for dtype, shape in inputs] != [(True, 2)]:
        takes = ", ".join(f"{dtype} {shape}" for dtype, shape in inputs)
        raise UsageError(f"the model takes {takes}: not an echo model (int32 (batch, time))")


def _stream_model(model: keras.Model) -> keras.Model:
    """The explicit-state copy: [symbols (batch, time), *states] -> [logits, *final states]."""
    try:
        return stateless_copy(model, explicit_state=True)
    except ValueError as error:
        raise UsageError(f"not an echo model: {error}".splitlines()[0]) from error


def _symbol_range(symbols):
    return checks.in_range(symbols, "symbols", 0, NUM_CLASSES - 1, "0 or 1")


def _one_row_per_symbol(state, name, symbols):
    rows, streams = tf.shape(state)[0], tf.shape(symbols)[0]
    message = [f"{name} must have one row per symbol; got", rows, "rows for", streams]
    return tf.equal(rows, streams), [*message, "symbols"]


def _checked_series(symbols) -> tf.Tensor:
    """``symbols`` (batch, time) once its shape, size and values have passed."""
    (symbols,) = checks.after(
        [
            lambda: checks.has_shape(symbols, "symbols", (None, None), "[batch, time]"),
            lambda: checks.not_empty(
                symbols, "symbols is empty: send at least one step of one series"
            ),
            lambda: _symbol_range(symbols),
        ],
        symbols,
    )
    return symbols


def _checked_step(symbols, states, names, state_size) -> list[tf.Tensor]:
    """``[symbols (batch,), *states (batch, state_size)]`` once they have passed their checks."""
    step_checks = [
        lambda: checks.has_shape(symbols, "symbols", (None,), "[batch] (one symbol per stream)"),
        lambda: checks.not_empty(symbols, "symbols is empty: send at least one stream"),
    ]
    for name, state in zip(names, states, strict=True):
        described = f"[batch, {state_size}]"
        step_checks += [
            functools.partial(checks.has_shape, state, name, (None, state_size), described),
            functools.partial(_one_row_per_symbol, state, name, symbols),
            functools.partial(checks.finite, state, name),
        ]
    step_checks.append(lambda: _symbol_range(symbols))
    return checks.after(step_checks, symbols, *states)


def archive(model: keras.Model) -> keras.export.ExportArchive:
    """The echo serving module: ``serving_default`` (whole series) and ``step`` (streams)."""
    stream_model = _stream_model(model)
    initial_states = stream_model.inputs[1:]
    names, state_size = STATE_NAMES[: len(initial_states)], initial_states[0].shape[1]
    export_archive = keras.export.ExportArchive()
    export_archive.track(stream_model)

    def serve(symbols):
        symbols = _checked_series(symbols)
        zeros = tf.zeros([tf.shape(symbols)[0], state_size])
        logits, *final_states = stream_model([symbols, *[zeros] * len(names)], training=False)
        return {
            "probabilities": tf.nn.softmax(logits, axis=-1),
            **dict(zip(names, final_states, strict=True)),
        }

    def step(symbols, states):
        symbols, *states = _checked_step(symbols, states, names, state_size)
        logits, *new_states = stream_model([symbols[:, None], *states], training=False)
        return {
            "probabilities": tf.nn.softmax(logits[:, 0], axis=-1),
            **dict(zip(names, new_states, strict=True)),
        }

    export_archive.add_endpoint(
        DEFAULT_SIGNATURE,
        serve,
        input_signature=[tf.TensorSpec([None, None], tf.int32, name="symbols")],
    )
    export_archive.add_endpoint(
        STEP_SIGNATURE,
        _named_state_arguments(step, len(names)),
        input_signature=[
            tf.TensorSpec([None], tf.int32, name="symbols"),
            *(tf.TensorSpec([None, state_size], tf.float32, name=name) for name in names),
        ],
    )
    return export_archive


def _named_state_arguments(step, state_count: int):
    """``step(symbols, states)`` as a function of ``(symbols, h)`` or ``(symbols, h, c)``.

    A signature's input names are the Python argument names of its function.
    """
    if state_count == 1:

        def step_h(symbols, h):
            return step(symbols, [h])

        return step_h

    def step_h_c(symbols, h, c):
        return step(symbols, [h, c])

    return step_h_c


def example_inputs(declared: dict) -> dict[str, dict[str, np.ndarray]]:
    """A request per signature: {signature: {input name: batch array}}, a batch of one.

    ``declared`` is what the SavedModel's signatures declare: the ``step`` example holds a
    zero state (1, state_size) for every state input ``step`` declares.
    """
    states = {
        name: np.zeros((1, info["shape"][1]), np.float32)
        for name, info in declared[STEP_SIGNATURE]["inputs"].items()
        if name != "symbols"
    }
    return {
        DEFAULT_SIGNATURE: {"symbols": np.array([EXAMPLE_SYMBOLS], np.int32)},
        STEP_SIGNATURE: {"symbols": np.array([EXAMPLE_SYMBOLS[0]], np.int32), **states},
    }


def keras_reference(model: keras.Model, signature: str, inputs: dict) -> dict[str, np.ndarray]:
    """The trained model's probabilities for ``inputs``, started from a zero state.

    ``serving_default``: (batch, time, 2) for symbols (batch, time). ``step``: (batch, 2),
    a step being the first step of a one-step series (the example's state is zeros).
    """
    symbols = inputs["symbols"] if signature == DEFAULT_SIGNATURE else inputs["symbols"][:, None]
    rnn = model.get_layer("rnn")
    batch = len(symbols)
    if rnn.stateful:
        # A stateful model takes its fixed batch only, and starts from the state it holds.
        fixed_batch = model.inputs[0].shape[0]
        symbols = np.resize(symbols, (fixed_batch, symbols.shape[1]))
        rnn.reset_state()
    logits = model(symbols, training=False)[:batch]
    if rnn.stateful:
        rnn.reset_state()
    probabilities = np.asarray(keras.ops.softmax(logits, axis=-1))
    return {
        "probabilities": probabilities if signature == DEFAULT_SIGNATURE else probabilities[:, 0]
    }


SPEC = ServingSpec(
    task="echo",
    layers=(OneHot, RNN, ConcatRNNCell),
    inputs=INPUTS,
    check_model=check_model,
    archive=archive,
    example_inputs=example_inputs,
    keras_reference=keras_reference,
)
