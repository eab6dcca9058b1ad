"""Recurrent cells and the one factory that wraps them in :class:`RNN`.

Five kinds of cell, chosen by name:

* ``simple``: Keras' ``SimpleRNNCell``, the TF1 ``BasicRNNCell``.
* ``lstm``: Keras' ``LSTMCell``, the TF1 ``BasicLSTMCell`` (``unit_forget_bias`` is
  the TF1 ``forget_bias=1``).
* ``concat``: :class:`ConcatRNNCell`, the tutorials' hand-built loop
  ``state = tanh([x ; state] . W + b)`` with a single matrix ``W``.
* ``gru``: Keras' ``GRUCell``; with ``reset_after=False`` it computes the TF1 ``GRUCell``.
* ``lstmp``: :class:`~tfrnn.layers.lstmp_cell.LSTMPCell`, the TF1 ``LSTMCell`` with its
  peepholes, clips and projection.

The tutorials and the experiments built on them (MNIST, echo) use the first three,
:data:`TUTORIAL_CELL_KINDS`; the other two are for models converted from TF1.

Every kind is wrapped in :class:`RNN`, a ``keras.layers.RNN`` that reads the cell's weights
once per call instead of once per time step, so the while-loop ("dynamic_rnn") and the
unrolled ("static_rnn") styles, statefulness and ``return_state`` are the same for all.
"""

from __future__ import annotations

import inspect

import keras
import tensorflow as tf

from tfrnn.layers.lstmp_cell import LSTMPCell, positive_integer


@tf.function
def concat_rnn_step(inputs, state, kernel, bias):
    """One step of the tutorials' cell: ``tanh([inputs ; state] . kernel + bias)``.

    ``[inputs ; state] . kernel`` is computed as ``inputs . kernel[:input_dim] +
    state . kernel[input_dim:]``, the same sum split at the row where ``state`` starts:
    XLA cannot compile the gradient of a concat inside a nested function (its ConcatOffset
    needs compile-time shapes), and the split form also skips copying the concat each step.

    Args:
      inputs: (batch, input_dim) float tensor, x_t.
      state: (batch, units) float tensor, state_{t-1}.
      kernel: (input_dim + units, units) float tensor, W.
      bias: (units,) float tensor, b.

    Returns:
      (batch, units): the new state, which is also the step's output.
    """
    input_dim = inputs.shape[-1]
    return tf.tanh(
        tf.matmul(inputs, kernel[:input_dim]) + tf.matmul(state, kernel[input_dim:]) + bias
    )


@keras.saving.register_keras_serializable(package="tfrnn")
class ConcatRNNCell(keras.layers.Layer):
    """The tutorials' hand-built tanh cell, with one kernel over ``[x_t ; state_{t-1}]``.

    Mathematically a ``SimpleRNNCell`` whose kernel and recurrent kernel are stacked into
    one matrix; kept as its own cell because that single ``W`` is what the tutorials
    teach and what their checkpoints hold.

    Shapes: inputs (batch, input_dim); state (batch, units); kernel
    (input_dim + units, units); bias (units,); output = new state (batch, units).
    """

    def __init__(
        self,
        units: int,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = positive_integer("units", units)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.state_size = self.units
        self.output_size = self.units

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError("ConcatRNNCell needs a known input feature size (last axis).")
        self.kernel = self.add_weight(
            shape=(input_dim + self.units, self.units),
            initializer=self.kernel_initializer,
            name="kernel",
        )
        self.bias = self.add_weight(
            shape=(self.units,), initializer=self.bias_initializer, name="bias"
        )

    def call(self, inputs, states, training=False):
        # keras.layers.RNN hands states over as a list even for a single state tensor.
        state = states[0] if isinstance(states, (list, tuple)) else states
        # Keras variables (the weights, and a stateful layer's carried state) are not
        # tf.function arguments: hand over their current values.
        new_state = concat_rnn_step(
            inputs,
            tf.convert_to_tensor(state),
            tf.convert_to_tensor(self.kernel),
            tf.convert_to_tensor(self.bias),
        )
        return new_state, [new_state]

    def get_initial_state(self, batch_size=None):
        return [tf.zeros((batch_size, self.units), dtype=self.compute_dtype)]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tfrnn")
class RNN(keras.layers.RNN):
    """``keras.layers.RNN`` that reads the cell's weights once per call, before the time loop.

    Same arguments, outputs and numbers as ``keras.layers.RNN`` (the cell's ops are
    unchanged; only where its weights are read moves). Why: a cell reads its kernels inside
    the loop body, so each step's read is an intermediate of the loop, and the gradient of
    a while loop keeps every such intermediate for the backward pass: the whole recurrent
    kernel copied once per time step and read back (for the 128-unit LSTM over 28 rows,
    28 copies of 256 KB per call). Read once outside the loop, the kernel is a loop
    invariant that the loop merely captures, and a forward and backward pass of the MNIST
    LSTM takes about 10% less CPU time (measurements: experiments/bench/README.md).

    How: Keras runs the loop (``inner_loop``) without changing any variable, so it can run
    inside a ``keras.StatelessScope`` that maps each trainable weight of the cell to a value
    read just before; the gradient reaches the variables through that read.
    """

    def inner_loop(self, sequences, initial_state, mask, training=False):
        weights = [(weight, tf.convert_to_tensor(weight)) for weight in self.cell.trainable_weights]
        with keras.StatelessScope(state_mapping=weights):
            if self.unroll:
                return self._static_rnn(sequences, initial_state, mask, training)
            return super().inner_loop(sequences, initial_state, mask, training=training)

    def reset_state(self):
        """Zeroes a stateful layer's carried states, nested ones (a cell of cells) included.

        ``keras.layers.RNN.reset_state`` assigns to each top-level state, and fails on a
        ``StackedRNNCells``' list of per-cell state lists (keras 3.15).
        """
        for state in keras.tree.flatten(self.states or []):
            state.assign(tf.zeros_like(state))

    def _static_rnn(self, sequences, initial_state, mask, training):
        """The unrolled loop, TF1's ``static_rnn``: one cell call per time step in the graph.

        The arithmetic of Keras' while loop, step by step: a masked row keeps its states
        and repeats its previous output (zeros with ``zero_output_for_mask``), the states
        keep the nesting of ``initial_state``, and ``go_backwards`` runs the steps, and
        returns their outputs, last to first. Keras' own unrolled loop differs (keras 3.15):
        it fails on a cell that returns its states less nested than it takes them (a
        one-cell ``StackedRNNCells``), and with ``go_backwards`` and ``zero_output_for_mask``
        it zeroes the outputs at the unreversed mask's skipped steps. Each step's incoming
        leaf states other than the previous step's output pass through
        :func:`gradient_computed_once`, which changes no number.

        Args:
          sequences: (batch, time, features), time static.
          initial_state: the list of initial states, each a tensor (batch, state) or, for a
            cell of cells (``StackedRNNCells``), a nested list of them.
          mask: (batch, time) booleans, False for the steps to skip; or None.
          training: passed to the cell.

        Returns:
          Keras' inner-loop triple: the last output (batch, units); the outputs (batch,
          time, units) with ``return_sequences``, else (batch, 1, units); the final states,
          nested as ``initial_state``.
        """
        steps = tf.unstack(sequences, axis=1)
        if mask is None:
            step_masks = [None] * len(steps)
        else:  # (batch, 1) per step, to broadcast over each output and state
            step_masks = [
                tf.reshape(kept, (-1, 1)) for kept in tf.unstack(tf.cast(mask, tf.bool), axis=1)
            ]
        if self.go_backwards:
            steps.reverse()
            step_masks.reverse()
        takes_training = "training" in inspect.signature(self.cell.call).parameters
        cell_kwargs = {"training": training} if takes_training else {}
        states, outputs, output = initial_state, [], None
        for inputs, kept in zip(steps, step_masks, strict=True):
            # A state that is the previous step's output gets its gradient through this
            # step's matmul, which XLA never fuses into its consumers; the others (an LSTM's
            # carry) only through elementwise ops.
            new_output, new_states = self.cell(
                inputs, tuple(_carried_states(states, output)), **cell_kwargs
            )
            if kept is not None:
                previous_output = None if self.zero_output_for_mask else output
                new_output, new_states = _rows_kept(
                    kept, (new_output, new_states), (previous_output, states)
                )
            output = new_output
            states = keras.tree.pack_sequence_as(initial_state, keras.tree.flatten(new_states))
            outputs.append(output)
        kept_outputs = outputs if self.return_sequences else outputs[-1:]
        return outputs[-1], tf.stack(kept_outputs, axis=1), states


def _rows_kept(kept, new, previous):
    """The step's results in the rows ``kept`` (batch, 1) is True, the previous ones in the
    others, as Keras' masked while loop does.

    Args:
      kept: (batch, 1) booleans.
      new: the step's (output, states), its states nested as the cell returned them.
      previous: (output, states) before the step; an output of None stands for zeros.

    Returns:
      (output, flat list of states).
    """
    (new_output, new_states), (previous_output, previous_states) = new, previous
    if previous_output is None:
        previous_output = tf.zeros_like(new_output)
    states = zip(keras.tree.flatten(new_states), keras.tree.flatten(previous_states), strict=True)
    return (
        tf.where(kept, new_output, previous_output),
        [tf.where(kept, new_state, previous_state) for new_state, previous_state in states],
    )


def _carried_states(states, output):
    """``states`` (any nesting of (batch, size) tensors) in the same structure, each leaf
    that is not the tensor ``output`` passed through :func:`gradient_computed_once`."""
    return keras.tree.map_structure(
        lambda state: state if state is output else gradient_computed_once(state), states
    )


@tf.custom_gradient
def gradient_computed_once(state):
    """The identity on ``state`` (batch, units), whose gradient XLA computes once.

    Why: XLA's CPU compiler fuses cheap elementwise producers into each consumer, computing
    them again inside every fusion that reads them. Unrolled, an LSTM's cell-state gradient
    is one elementwise chain through every step (``dc[t-1] = dc[t] * f[t] + ...``), so each
    step's fused gradient recomputed the chain from the last step back to its own: work
    quadratic in the steps. Passing the gradient through a row scatter, which XLA does not
    fuse into its consumers, stores it once per step, as the while loop's iterations do.
    Measurements: experiments/bench/README.md.
    """

    def gradient(upstream):
        rows = tf.shape(upstream)[0]
        return tf.scatter_nd(tf.range(rows)[:, None], upstream, tf.shape(upstream))

    return tf.identity(state), gradient


# The one map between a cell's kind (its name in configs and flags) and its class: building
# reads it forwards (make_cell), exporting backwards (cell_kind).
CELL_CLASSES = {
    "simple": keras.layers.SimpleRNNCell,
    "lstm": keras.layers.LSTMCell,
    "concat": ConcatRNNCell,
    "gru": keras.layers.GRUCell,
    "lstmp": LSTMPCell,
}
CELL_KINDS = tuple(CELL_CLASSES)
# The tutorials' cells, the ones their experiments (MNIST, echo) offer.
TUTORIAL_CELL_KINDS = ("simple", "lstm", "concat")


def make_cell(kind: str, units: int, **cell_kwargs) -> keras.layers.Layer:
    """Builds one cell of ``kind`` (one of :data:`CELL_KINDS`) with ``units`` units.

    ``cell_kwargs`` go to the cell's constructor (initialisers, ``unit_forget_bias``,
    ``reset_after`` for ``gru``, ``projection_units`` for ``lstmp``...).
    """
    positive_integer("units", units)
    if kind not in CELL_CLASSES:
        raise ValueError(f"kind must be one of {', '.join(CELL_KINDS)}; got {kind!r}")
    return CELL_CLASSES[kind](units, **cell_kwargs)


def cell_kind(cell: keras.layers.Layer) -> str:
    """The kind :func:`make_cell` builds ``cell`` from; ValueError for a cell of no kind."""
    for kind, cell_class in CELL_CLASSES.items():
        if isinstance(cell, cell_class):
            return kind
    raise ValueError(f"a {type(cell).__name__} is none of tfrnn's cells ({', '.join(CELL_KINDS)})")


def make_rnn(
    kind: str,
    units: int,
    *,
    return_sequences: bool = False,
    return_state: bool = False,
    stateful: bool = False,
    unroll: bool = False,
    name: str | None = None,
    **cell_kwargs,
) -> RNN:
    """A recurrent layer: :class:`RNN` (a ``keras.layers.RNN``) around a cell of ``kind``.

    Args:
      kind: one of :data:`CELL_KINDS`: ``simple``, ``lstm``, ``concat``, ``gru`` or ``lstmp``.
      units: state width, a positive integer (for ``lstmp``, the cell state's; its output
        and ``h`` are ``projection_units`` wide if that is given).
      return_sequences: output (batch, time, units) instead of the last step's (batch, units).
      return_state: also return the final state(s): ``[h]`` for simple, concat and gru,
        ``[h, c]`` for lstm and lstmp.
      stateful: carry the final state of each call into the next (needs a static batch).
      unroll: ``True`` builds the graph step by step like TF1 ``static_rnn`` (needs a
        static time length); ``False`` runs a while loop like ``dynamic_rnn``.
      name: the layer's name.
      **cell_kwargs: passed to the cell, for example ``reset_after=False`` (gru: TF1's
        GRUCell) or ``projection_units``, ``use_peepholes``, ``cell_clip``,
        ``projection_clip`` (lstmp).
    """
    cell = make_cell(kind, units, **cell_kwargs)
    return RNN(
        cell,
        return_sequences=return_sequences,
        return_state=return_state,
        stateful=stateful,
        unroll=unroll,
        name=name,
    )
