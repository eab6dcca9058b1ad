"""Truncated backpropagation through time, three ways to carry the state between windows.

Every mode trains on the same batches: (batch, num_steps) windows of ``batch_size``
streams, where row i of window k+1 continues row i of window k (see
:mod:`tfrnn.data.echo`). Each mode is a plain function of
``(model, inputs, targets, carry, global_batch_size)`` returning ``(loss, gradients, carry)``;
:func:`make_window_runner` applies the gradients and loops over many windows inside one
compiled ``tf.function``, under any ``tf.distribute`` strategy.

Across replicas (``--strategy mirrored`` or ``multi_worker``, see :mod:`tfrnn.engine.distribute`).
The global batch of B streams is split into R contiguous blocks: replica r trains rows
[r * B / R, (r + 1) * B / R) of every window of the epoch
(:func:`tfrnn.engine.distribute.distribute_rows`), so stream i always lives on replica
i // (B / R) and its state never moves. Each replica carries only its own rows' state: in
``explicit`` and ``true`` mode the carry is a per-replica value of (B / R, ...) tensors; in
``stateful`` mode the model is built with the per-replica batch B / R and the layer's state
variable holds, on each replica, that replica's rows (a per-replica copy the strategy
keeps; :func:`carried_state` gathers the rows back in order, while reading the variable
outside a replica gives replica 0's rows only). Each replica's loss is its share of the mean
over all B rows (:func:`tfrnn.engine.distribute.global_mean_loss`, as MNIST's step), so the
gradients the optimiser sums, and the shares the reported loss sums, are those of the mean
over all B rows, as on one device. Under the default
strategy the whole loop (forward, backward and update) is one XLA program; under a real
strategy the all-reduce inside the update cannot be compiled, so each replica's forward
and backward pass is one XLA program and the loop and update run as a plain graph.

Modes (the values of ``mode`` everywhere):

``stateful``: the state lives in the ``rnn`` layer (``stateful=True``, fixed batch). Each
  call starts from the state the previous call left and stores its final state; reading a
  variable is where the gradient stops, so every window is backpropagated only within
  itself ("TF-style": the k-th output of a window is backpropagated k steps). ``carry`` is
  empty; :func:`start_epoch` resets the layer to zeros. Cost: one forward and backward pass
  over num_steps steps per window.

``explicit``: the TF1 program's shape. The model takes the initial state as an input and
  returns its final state; the loop feeds it back (the tutorial's ``init_state`` feed).
  ``carry`` is the list of state tensors, (batch, state_size) each. Mathematically the same
  as ``stateful`` (same losses to float rounding); the state is a value the caller owns,
  which is what a server or a distribution strategy needs. Same cost as ``stateful``.

``true``: true n-step truncated BPTT (r2rt, "Styles of truncated backpropagation"): the
  error of *every* output is backpropagated exactly ``num_steps`` steps. For a window of
  n new steps at positions w .. w+n-1, the output at t = w+j is recomputed from the stored
  state s_{t-n} (a constant: the gradient stops there) over the n inputs x_{t-n+1} .. x_t.
  The n sub-sequences of each stream are stacked into one batch of ``batch_size * n``
  sequences of n steps, so one recurrent pass computes them all; the loss is the mean over
  their last outputs. The final state of sub-sequence j is s_{w+j}, which is exactly what
  the next window needs, so ``carry`` = (the last n-1 inputs, which of them are real, the
  last n states of every stream) costs no extra pass. At the start of an epoch there are no
  earlier steps: the missing inputs are masked (a masked step leaves the state unchanged),
  so output t sees its t+1 real steps from the zero state, as TF-style does.
  Cost: n times the recurrent work of TF-style per window (n sequences of n steps instead
  of one) and n times the activation memory; the parameter update is the same.
"""

from __future__ import annotations

from typing import NamedTuple

import keras
import numpy as np
import tensorflow as tf

from tfrnn.engine import distribute
from tfrnn.engine.training import sparse_softmax_cross_entropy
from tfrnn.tasks.echo.model import build_echo_model

MODES = ("stateful", "explicit", "true")


def stream_losses(targets, logits):
    """Each stream's mean cross-entropy over its steps: targets (batch, steps) int, logits
    (batch, steps, C) -> (batch,)."""
    return tf.reduce_mean(sparse_softmax_cross_entropy(targets, logits), axis=1)


def _loss_share(per_stream, global_batch_size):
    """This replica's share of the mean loss over the global batch of streams (the whole
    mean when ``global_batch_size`` is None: one replica holds every stream)."""
    return distribute.global_mean_loss(per_stream, global_batch_size or per_stream.shape[0])


def _gradients(model, tape, loss):
    return tape.gradient(loss, model.trainable_variables)


def stateful_layer_gradients(model, inputs, targets, carry=(), global_batch_size=None):
    """One window in ``stateful`` mode.

    inputs, targets (batch, num_steps) -> (loss share, gradients, ()); the loss share and
    its gradients are this replica's share of the mean over ``global_batch_size`` streams.
    """
    with tf.GradientTape() as tape:
        loss = _loss_share(stream_losses(targets, model(inputs, training=True)), global_batch_size)
    return loss, _gradients(model, tape, loss), carry


def explicit_state_gradients(model, inputs, targets, carry, global_batch_size=None):
    """One window in ``explicit`` mode; ``carry`` is the list of initial states.

    Returns (loss share, gradients, final states), the final states cut from the gradient.
    """
    with tf.GradientTape() as tape:
        logits, *final_states = model([inputs, *carry], training=True)
        loss = _loss_share(stream_losses(targets, logits), global_batch_size)
    carry = tuple(tf.stop_gradient(state) for state in final_states)
    return loss, _gradients(model, tape, loss), carry


class TrueCarry(NamedTuple):
    """What ``true`` mode carries from one window to the next, per stream.

    symbols: (batch, num_steps - 1) int32, the last num_steps - 1 inputs.
    real: (num_steps - 1,) bool, False for the slots before the epoch's first step.
    states: one (batch, num_steps, size) tensor per state tensor of the cell: the states
      after each of the last num_steps inputs (slot num_steps - 1 is the newest).
    """

    symbols: tf.Tensor
    real: tf.Tensor
    states: tuple


def true_tbptt_gradients(model, inputs, targets, carry: TrueCarry, global_batch_size=None):
    """One window in ``true`` mode (see the module docstring for the computation).

    Args:
      model: the explicit-state model (layers ``one_hot``, ``rnn``, ``logits``).
      inputs, targets: (batch, num_steps) int32.
      carry: a :class:`TrueCarry`.
      global_batch_size: streams over all replicas; None: ``inputs`` holds them all.

    Returns:
      (loss share, gradients, new carry), as :func:`stateful_layer_gradients`.
    """
    batch, num_steps = inputs.shape
    # (batch, 2n - 1): the n - 1 earlier inputs, then the window's n.
    extended = tf.concat([carry.symbols, inputs], axis=1)
    real = tf.concat([carry.real, tf.ones([num_steps], tf.bool)], axis=0)
    # Sub-sequence j ends at the window's step j: extended[:, j : j + n]. Stacked so that
    # row b * n + j is stream b's sub-sequence j.
    windows = tf.reshape(
        tf.stack([extended[:, j : j + num_steps] for j in range(num_steps)], axis=1),
        [batch * num_steps, num_steps],
    )
    mask = tf.tile(
        tf.stack([real[j : j + num_steps] for j in range(num_steps)], axis=0), [batch, 1]
    )
    start_states = [
        tf.stop_gradient(tf.reshape(state, [batch * num_steps, -1])) for state in carry.states
    ]
    rnn, readout = model.get_layer("rnn"), model.get_layer("logits")
    with tf.GradientTape() as tape:
        one_hot = model.get_layer("one_hot")(windows)
        outputs, *final_states = rnn(one_hot, initial_state=start_states, mask=mask, training=True)
        logits = readout(outputs[:, -1])
        # Row b * n + j is stream b's sub-sequence j: its last output predicts targets[b, j].
        per_stream = stream_losses(targets, tf.reshape(logits, [batch, num_steps, -1]))
        loss = _loss_share(per_stream, global_batch_size)
    new_carry = TrueCarry(
        symbols=extended[:, num_steps:],
        real=tf.ones([num_steps - 1], tf.bool),
        states=tuple(
            tf.reshape(tf.stop_gradient(state), [batch, num_steps, -1]) for state in final_states
        ),
    )
    return loss, _gradients(model, tape, loss), new_carry


GRADIENTS = {
    "stateful": stateful_layer_gradients,
    "explicit": explicit_state_gradients,
    "true": true_tbptt_gradients,
}


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")


def build_training_model(
    mode: str, kind: str, state_size: int, batch_size: int, *, unroll: bool = True
) -> keras.Model:
    """The model a mode trains: stateful with a fixed batch, or explicit-state.

    ``unroll=True`` (the default) unrolls each window's fixed num_steps: with XLA this is
    several times faster than the while loop for these short windows.
    """
    _check_mode(mode)
    if mode == "stateful":
        return build_echo_model(
            kind, state_size, batch_size=batch_size, stateful=True, unroll=unroll
        )
    return build_echo_model(kind, state_size, explicit_state=True, unroll=unroll)


def start_epoch(
    mode: str,
    model: keras.Model,
    batch_size: int,
    num_steps: int,
    strategy: tf.distribute.Strategy | None = None,
):
    """Zero state at the start of an epoch: resets the stateful layer, returns the carry.

    ``batch_size`` is the global batch; under ``strategy`` each replica's carry holds its
    own batch_size / replicas rows.
    """
    _check_mode(mode)
    strategy = strategy or tf.distribute.get_strategy()
    rows = distribute.per_replica_batch_size(strategy, batch_size)
    kind_sizes = _state_widths(model)
    if mode == "stateful":
        model.get_layer("rnn").reset_state()  # every replica's copy
        return ()

    def zero_carry(context):
        if mode == "explicit":
            return tuple(tf.zeros([rows, size]) for size in kind_sizes)
        return TrueCarry(
            symbols=tf.zeros([rows, num_steps - 1], tf.int32),
            real=tf.zeros([num_steps - 1], tf.bool),
            states=tuple(tf.zeros([rows, num_steps, size]) for size in kind_sizes),
        )

    return strategy.experimental_distribute_values_from_function(zero_carry)


def carried_state(
    mode: str, model: keras.Model, carry, strategy: tf.distribute.Strategy | None = None
) -> list[tf.Tensor]:
    """The state each stream carries into the next window: one (batch, size) tensor per
    state tensor of the cell, rows in stream order, gathered from every replica."""
    _check_mode(mode)
    strategy = strategy or tf.distribute.get_strategy()
    if mode == "stateful":
        # Read inside each replica: outside, the variable shows replica 0's rows only.
        states = model.get_layer("rnn").states
        carry = strategy.run(lambda: tuple(tf.identity(state.value) for state in states))
    elif mode == "true":
        carry = carry.states
    gathered = [distribute.gather_rows(strategy, state) for state in carry]
    # In true mode, the newest of the last num_steps states is the current one.
    return [state[:, -1] if mode == "true" else state for state in gathered]


def carry_arrays(
    mode: str, model: keras.Model, carry, strategy: tf.distribute.Strategy | None = None
) -> list[tf.Tensor]:
    """Everything ``mode`` carries into the next window, rows of every replica in stream
    order (what a checkpoint holds; :func:`carry_from_arrays` is the inverse).

    ``stateful`` and ``explicit``: one (batch, size) tensor per state tensor of the cell.
    ``true``: symbols (batch, num_steps - 1) int32, real (num_steps - 1,) bool, then one
    (batch, num_steps, size) tensor per state tensor.
    """
    _check_mode(mode)
    strategy = strategy or tf.distribute.get_strategy()
    if mode != "true":
        return carried_state(mode, model, carry, strategy)
    # Every replica holds the same flags: one copy is all of them.
    real = strategy.experimental_local_results(carry.real)[0]
    symbols = distribute.gather_rows(strategy, carry.symbols)
    return [symbols, real, *(distribute.gather_rows(strategy, state) for state in carry.states)]


def carry_from_arrays(
    mode: str, model: keras.Model, arrays, strategy: tf.distribute.Strategy | None = None
):
    """The carry :func:`carry_arrays` gave ``arrays`` for, each replica given its own rows;
    in ``stateful`` mode the layer's state is set and the carry is empty."""
    _check_mode(mode)
    strategy = strategy or tf.distribute.get_strategy()
    arrays = [np.asarray(array) for array in arrays]
    rows = distribute.per_replica_batch_size(strategy, arrays[0].shape[0])

    def replica_carry(context):
        first = context.replica_id_in_sync_group * rows

        def own(array):
            return tf.constant(array[first : first + rows])

        if mode == "true":
            symbols, real, *states = arrays
            return TrueCarry(own(symbols), tf.constant(real), tuple(map(own, states)))
        return tuple(map(own, arrays))

    carry = strategy.experimental_distribute_values_from_function(replica_carry)
    if mode != "stateful":
        return carry
    states = model.get_layer("rnn").states
    # Assigned inside each replica: the layer's state variable holds that replica's rows.
    strategy.run(
        lambda values: [state.assign(value) for state, value in zip(states, values, strict=True)],
        args=(carry,),
    )
    return ()


def _state_widths(model) -> list[int]:
    # Keras cells give one int, or a list ([h, c] for an LSTM).
    sizes = model.get_layer("rnn").cell.state_size
    return [int(size) for size in (sizes if isinstance(sizes, (list, tuple)) else [sizes])]


def make_window_runner(
    mode: str,
    model,
    optimizer,
    *,
    strategy: tf.distribute.Strategy | None = None,
    jit_compile: bool = True,
):
    """A compiled function that trains on a run of windows and returns each window's loss.

    ``run(inputs, targets, carry) -> (losses, carry)``: inputs and targets
    (num_windows, batch, num_steps) int32 (under a strategy, per-replica values from
    :func:`tfrnn.engine.distribute.distribute_rows` with axis 1), losses (num_windows,), the mean
    over all rows. One call replaces num_windows Python-level steps, so the per-window cost
    is the step's own work. ``model`` and ``optimizer`` must be built under ``strategy``'s
    scope.
    """
    _check_mode(mode)
    strategy = strategy or tf.distribute.get_strategy()
    window_gradients = GRADIENTS[mode]
    replicas = strategy.num_replicas_in_sync
    # One device: the whole loop is one XLA program. Several replicas: the gradient
    # all-reduce in apply_gradients cannot be compiled, so only the forward and backward.
    compile_whole_loop = distribute.is_default(strategy)
    if not optimizer.built:
        # Its slots must exist before the loop: a variable created inside it is not mirrored.
        with strategy.scope():
            optimizer.build(model.trainable_variables)

    def replica_gradients(inputs, targets, carry):
        # The optimiser sums the replicas' gradients: each is that of its share of the mean
        # over every replica's streams (the same number on each).
        return window_gradients(model, inputs, targets, carry, inputs.shape[0] * replicas)

    if not compile_whole_loop:
        replica_gradients = tf.function(replica_gradients, jit_compile=jit_compile)

    # Plain Python, traced as written: only run's loop needs AutoGraph, and converting
    # everything it calls took most of the tracing (about 0.45 of 0.55 s for echo).
    @tf.autograph.experimental.do_not_convert
    def replica_window(inputs, targets, index, carry):
        loss, gradients, carry = replica_gradients(inputs[index], targets[index], carry)
        optimizer.apply_gradients(zip(gradients, model.trainable_variables, strict=True))
        return loss, carry

    @tf.function(jit_compile=jit_compile and compile_whole_loop)
    def run(inputs, targets, carry):
        num_windows = strategy.experimental_local_results(inputs)[0].shape[0]
        losses = tf.TensorArray(tf.float32, size=num_windows)
        for index in tf.range(num_windows):
            loss, carry = strategy.run(replica_window, args=(inputs, targets, index, carry))
            losses = losses.write(index, strategy.reduce("SUM", loss, axis=None))
        return losses.stack(), carry

    return run


class ResetStateAtEpochStart(keras.callbacks.Callback):
    """Zeroes every stateful recurrent layer of the model as each epoch of ``model.fit`` begins.

    ``stateful`` mode with Keras' own loop: fit the windows in order (``shuffle=False``,
    ``batch_size`` = the number of streams, the epoch's windows stacked as
    ``inputs.reshape(-1, num_steps)``), and the layer carries each stream's state from one
    window to the next as the window runner does. ``fit`` itself never resets a layer's
    state, so without this callback an epoch would start from the previous epoch's last
    state instead of zeros (:func:`start_epoch`).
    """

    def on_epoch_begin(self, epoch, logs=None):
        for layer in self.model.layers:
            if getattr(layer, "stateful", False):
                layer.reset_state()
