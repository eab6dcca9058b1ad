"""LSTMP: the LSTM with peepholes, cell clipping and a recurrent projection.

The LSTM of Sak et al. 2014 ("Long Short-Term Memory Recurrent Neural Network Architectures
for Large Scale Acoustic Modeling"), with the arithmetic of TF1's full
``tf.compat.v1.nn.rnn_cell.LSTMCell(num_units, use_peepholes, cell_clip, num_proj,
proj_clip)``. Keras 3 has no cell with peepholes, a projection or a clip; with none of them
:class:`LSTMPCell` computes exactly what ``keras.layers.LSTMCell`` computes.

TF1's run-time ``forget_bias`` has no counterpart here: it is a constant added to the forget
gate, so a converted checkpoint holds it in the f block of ``bias``.
"""

from __future__ import annotations

import numbers

import keras
from keras import ops


def positive_integer(name: str, value) -> int:
    """``value`` if it is a positive int, else ValueError naming the argument ``name``."""
    # bool is an int subclass; True units is a typo, not a width.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _clip_value(name: str, value) -> float | None:
    """``value`` as a float if it is a positive real number, None if None, else ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number or None, got {value!r}")
    return float(value)


@keras.saving.register_keras_serializable(package="tfrnn")
class LSTMPCell(keras.layers.Layer):
    """An LSTM cell with optional peepholes, cell clip, projection and projection clip.

    Gate blocks are Keras' (input i, forget f, candidate c, output o). With ``r`` the
    recurrent width (``projection_units`` if set, else ``units``), one step computes, for
    inputs x (batch, input_dim), h (batch, r) and c (batch, units)::

        i, f, g, o = split(x . kernel + h . recurrent_kernel + bias, 4)
        i += input_peephole * c;  f += forget_peephole * c           # if use_peepholes
        c' = sigma(f) * c + sigma(i) * act(g)
        c' = clip(c', -cell_clip, cell_clip)                          # if cell_clip
        o += output_peephole * c'                                     # if use_peepholes
        m = sigma(o) * act(c')
        m = m . projection_kernel                                     # if projection_units
        m = clip(m, -projection_clip, projection_clip)                # if projection_clip

    where sigma is ``recurrent_activation`` and act is ``activation``. The output peephole
    reads the new cell state, as in TF1. The output and the new ``h`` are m (batch, r).

    Args:
      units: width of the cell state c, a positive integer.
      projection_units: width r of the projected output, a positive integer; None for no
        projection (then r = units).
      use_peepholes: add the diagonal peephole connections from c to the gates.
      cell_clip: clip c' to [-cell_clip, cell_clip] after each step; None for no clip.
      projection_clip: clip the projected output likewise; only with ``projection_units``.
      activation: of the candidate and of the cell state on output (TF1's ``activation``).
      recurrent_activation: of the gates.
      kernel_initializer: of ``kernel`` (input_dim, 4 * units).
      recurrent_initializer: of ``recurrent_kernel`` (r, 4 * units).
      bias_initializer: of ``bias`` (4 * units,).
      unit_forget_bias: start the f block of the bias at 1, as Keras' ``LSTMCell`` does.
      peephole_initializer: of ``input_peephole``, ``forget_peephole``, ``output_peephole``
        (units,) each; glorot uniform by default, as TF1 and Keras 2's peephole cell had.
      projection_initializer: of ``projection_kernel`` (units, projection_units).
      **kwargs: passed to ``keras.layers.Layer``.

    States: ``[h, c]``, h (batch, r) and c (batch, units).
    """

    def __init__(
        self,
        units,
        projection_units=None,
        use_peepholes=False,
        cell_clip=None,
        projection_clip=None,
        activation="tanh",
        recurrent_activation="sigmoid",
        kernel_initializer="glorot_uniform",
        recurrent_initializer="orthogonal",
        bias_initializer="zeros",
        unit_forget_bias=True,
        peephole_initializer="glorot_uniform",
        projection_initializer="glorot_uniform",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.units = positive_integer("units", units)
        if projection_units is not None:
            positive_integer("projection_units", projection_units)
        elif projection_clip is not None:
            raise ValueError("projection_clip clips the projection: it needs projection_units")
        self.projection_units = projection_units
        self.use_peepholes = bool(use_peepholes)
        self.cell_clip = _clip_value("cell_clip", cell_clip)
        self.projection_clip = _clip_value("projection_clip", projection_clip)
        self.activation = keras.activations.get(activation)
        self.recurrent_activation = keras.activations.get(recurrent_activation)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.unit_forget_bias = bool(unit_forget_bias)
        self.peephole_initializer = keras.initializers.get(peephole_initializer)
        self.projection_initializer = keras.initializers.get(projection_initializer)
        recurrent_units = self.projection_units or self.units
        self.state_size = [recurrent_units, self.units]
        self.output_size = recurrent_units

    def build(self, input_shape):
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError("LSTMPCell needs a known input feature size (last axis).")
        self.kernel = self.add_weight(
            shape=(input_dim, 4 * self.units), initializer=self.kernel_initializer, name="kernel"
        )
        self.recurrent_kernel = self.add_weight(
            shape=(self.output_size, 4 * self.units),
            initializer=self.recurrent_initializer,
            name="recurrent_kernel",
        )
        self.bias = self.add_weight(
            shape=(4 * self.units,), initializer=self._full_bias_initializer, name="bias"
        )
        if self.use_peepholes:
            for gate in ("input", "forget", "output"):
                peephole = self.add_weight(
                    shape=(self.units,),
                    initializer=self.peephole_initializer,
                    name=f"{gate}_peephole",
                )
                setattr(self, f"{gate}_peephole", peephole)
        if self.projection_units:
            self.projection_kernel = self.add_weight(
                shape=(self.units, self.projection_units),
                initializer=self.projection_initializer,
                name="projection_kernel",
            )

    def _full_bias_initializer(self, shape, dtype=None):
        """``bias_initializer`` over the 4 blocks, the f block ones if ``unit_forget_bias``."""
        if not self.unit_forget_bias:
            return self.bias_initializer(shape, dtype=dtype)
        return ops.concatenate(
            [
                self.bias_initializer((self.units,), dtype=dtype),
                ops.ones((self.units,), dtype=dtype),
                self.bias_initializer((2 * self.units,), dtype=dtype),
            ]
        )

    def call(self, inputs, states):
        """One step: inputs (batch, input_dim), states ``[h, c]`` -> (m, ``[m, c']``)."""
        h_previous, c_previous = states[0], states[1]
        gates = ops.matmul(inputs, self.kernel)
        gates = ops.add(gates, ops.matmul(h_previous, self.recurrent_kernel))
        gates = ops.add(gates, self.bias)
        input_gate, forget_gate, candidate, output_gate = ops.split(gates, 4, axis=-1)
        if self.use_peepholes:
            input_gate = input_gate + self.input_peephole * c_previous
            forget_gate = forget_gate + self.forget_peephole * c_previous
        c = self.recurrent_activation(forget_gate) * c_previous + self.recurrent_activation(
            input_gate
        ) * self.activation(candidate)
        if self.cell_clip is not None:
            c = ops.clip(c, -self.cell_clip, self.cell_clip)
        if self.use_peepholes:
            output_gate = output_gate + self.output_peephole * c
        m = self.recurrent_activation(output_gate) * self.activation(c)
        if self.projection_units:
            m = ops.matmul(m, self.projection_kernel)
            if self.projection_clip is not None:
                m = ops.clip(m, -self.projection_clip, self.projection_clip)
        return m, [m, c]

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, size), dtype=self.compute_dtype) for size in self.state_size]

    def get_config(self):
        config = super().get_config()
        serialize = keras.initializers.serialize
        config.update(
            {
                "units": self.units,
                "projection_units": self.projection_units,
                "use_peepholes": self.use_peepholes,
                "cell_clip": self.cell_clip,
                "projection_clip": self.projection_clip,
                "activation": keras.activations.serialize(self.activation),
                "recurrent_activation": keras.activations.serialize(self.recurrent_activation),
                "kernel_initializer": serialize(self.kernel_initializer),
                "recurrent_initializer": serialize(self.recurrent_initializer),
                "bias_initializer": serialize(self.bias_initializer),
                "unit_forget_bias": self.unit_forget_bias,
                "peephole_initializer": serialize(self.peephole_initializer),
                "projection_initializer": serialize(self.projection_initializer),
            }
        )
        return config
