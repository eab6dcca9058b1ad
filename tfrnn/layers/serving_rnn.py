"""The recurrent layer a served model runs: unrolled, and an LSTM's small batches as one op.

A served one-image request through the 28 unrolled steps of an LSTM is a few hundred small
ops, and TensorFlow's executor hands them between its pool threads; the hand-offs, not the
arithmetic, make the latency's tail. TensorFlow's ``BlockLSTMV2`` kernel (a core op, so
in every TF Serving build) runs the whole sequence in one op. On 2 cores it was about as fast
as the unrolled steps or faster for batches of up to :data:`FUSED_MAX_ROWS` rows and slower
beyond, so :class:`ServingRNN` takes it for those batches only. Measurements:
experiments/bench/README.md.

``BlockLSTMV2`` is Keras' ``LSTMCell`` in one op: gates in Keras' order (input, forget,
cell, output), ``sigmoid`` and ``tanh``, no clipping, no peepholes, the bias (which holds
``unit_forget_bias``) added once. It multiplies ``[x ; h]`` by the stacked kernels in one
matmul where Keras adds ``x . kernel`` and ``h . recurrent_kernel``, so outputs agree to
float32 rounding (about 1e-7), not bit for bit.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from tfrnn.layers.cells import RNN

# Batches of up to this many rows take BlockLSTMV2; measured on 2 cores, where it was about
# as fast as the unrolled steps at 8 rows, 5-20% faster at 32 to 128 and 40% slower at 256.
FUSED_MAX_ROWS = 128


def fusable(layer: keras.layers.RNN) -> bool:
    """Whether ``layer``'s inference is ``BlockLSTMV2``'s arithmetic (up to summation order)."""
    cell = layer.cell
    return (
        isinstance(cell, keras.layers.LSTMCell)
        and cell.activation is keras.activations.tanh
        and cell.recurrent_activation is keras.activations.sigmoid
        and cell.compute_dtype == "float32"
        and not layer.go_backwards
    )


def block_lstm(cell: keras.layers.LSTMCell, sequences, initial_state):
    """The LSTM ``cell`` run over ``sequences`` as one ``BlockLSTMV2`` op.

    Args:
      cell: a built Keras ``LSTMCell`` (tanh, sigmoid).
      sequences: (batch, time, features) float32.
      initial_state: ``[h, c]``, each (batch, units).

    Returns:
      Keras' inner-loop triple: the last output (batch, units), the outputs (batch, time,
      units), the final states ``[h, c]``.
    """
    h_initial, c_initial = initial_state
    units = cell.units
    no_peephole = tf.zeros((units,), sequences.dtype)
    bias = cell.bias if cell.use_bias else tf.zeros((4 * units,), sequences.dtype)
    _, cell_states, _, _, _, _, outputs = tf.raw_ops.BlockLSTMV2(
        seq_len_max=tf.cast(tf.shape(sequences)[1], tf.int64),
        x=tf.transpose(sequences, (1, 0, 2)),  # time-major
        cs_prev=c_initial,
        h_prev=h_initial,
        w=tf.concat([cell.kernel, cell.recurrent_kernel], axis=0),
        wci=no_peephole,
        wcf=no_peephole,
        wco=no_peephole,
        b=bias,
        cell_clip=0.0,  # no clipping
        use_peephole=False,
    )
    last_output, last_cell_state = outputs[-1], cell_states[-1]
    return last_output, tf.transpose(outputs, (1, 0, 2)), [last_output, last_cell_state]


class ServingRNN(RNN):
    """:class:`~tfrnn.layers.cells.RNN` for inference: an LSTM's batches of up to
    :attr:`fused_max_rows` rows through :func:`block_lstm`, any other through the layer's
    own steps (unrolled, when built with ``unroll=True`` as a served copy is)."""

    fused_max_rows = FUSED_MAX_ROWS

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if training or mask is not None or not fusable(self):
            return super().inner_loop(sequences, initial_state, mask, training=training)

        def fused():
            last_output, outputs, states = block_lstm(self.cell, sequences, initial_state)
            # Keras' unrolled loop keeps only the last output unless all are returned.
            kept = outputs if self.return_sequences else last_output[:, None]
            return last_output, kept, states

        def stepped():
            last_output, outputs, states = super(ServingRNN, self).inner_loop(
                sequences, initial_state, mask
            )
            return last_output, outputs, list(states)

        rows = sequences.shape[0]
        if rows is not None:  # a static batch: choose now
            return fused() if rows <= self.fused_max_rows else stepped()
        return tf.cond(tf.shape(sequences)[0] <= self.fused_max_rows, fused, stepped)
