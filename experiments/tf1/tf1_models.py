"""Users' own TF1 recurrent models, built with the TF1 API: the TF1 side of their lockstep proof.

Each job is a model as a TF1 user wrote it, in ``tf.compat.v1`` graph mode: placeholders, a
``Session``, the legacy ``tf.compat.v1.nn.rnn_cell`` cells (``BasicRNNCell``,
``BasicLSTMCell``, ``LSTMCell``, ``GRUCell``, ``MultiRNNCell``), one of ``nn.dynamic_rnn``,
``nn.static_rnn``, ``nn.bidirectional_dynamic_rnn``, ``nn.static_bidirectional_rnn``, an
optional head (``tf.compat.v1.layers.dense``, or tensorflow/models' PTB word model around the
cells), ``train.Saver``. Every model variable is set to seeded uniform values in
[-scale, scale] (biases included, so a dropped or misplaced bias shows), and the model is run on
seeded random inputs. ``tests/test_tf1_lockstep.py`` converts the checkpoints with
:mod:`tfrnn.tf1` and checks the converted layers against the numbers recorded here.

The legacy cells need ``tf_keras`` (requirements-dev.txt) and ``TF_USE_LEGACY_KERAS=1`` set
before TensorFlow is imported, which this script does itself: run it as its own process::

    python experiments/tf1/tf1_models.py DIR      # runs every job of DIR/jobs.json

``DIR/jobs.json`` is a list of jobs; for each it writes ``DIR/<name>/ckpt`` (the Saver
checkpoint) and ``DIR/<name>/results.npz``. A job (only ``name`` and ``cells`` are required)::

    {"name": "stacked_lstm",            # folder of its outputs
     "seed": 0,                         # weights and inputs
     "call": "dynamic",                 # dynamic | static | bidirectional_dynamic |
                                        #   bidirectional_static
     "cells": [{"family": "lstm", "units": 4, "use_peepholes": true, "num_proj": 3},
               {"family": "gru", "units": 5}],
     "multi": false,                    # a MultiRNNCell even of one cell (always for 2 or more)
     "backward_cells": [...],           # bidirectional: the backward cells (default: as cells)
     "model_scope": "",                 # variable_scope around the whole model, e.g. "Model"
     "rnn_scope": "",                   # variable_scope around the rnn call only, e.g. "RNN"
     "call_scope": null,                # the call's scope= argument (replaces "rnn" /
                                        #   "bidirectional_rnn" in the names)
     "input_size": 3, "batch": 3, "time": 5,
     "sequence_length": [5, 3, 1],      # one per row, or null for none
     "head": null,                      # null | {"type": "dense", "units": 2} |
                                        #   {"type": "ptb", "vocab": 10}
     "old_names": false,                # save with TF 1.0/1.1's names (weights, biases)
     "optimizer": null,                 # null | "adam": one Adam step before saving
     "scale": 0.5}

A cell spec is ``family`` and ``units`` plus the family's constructor arguments, spelled as
the constructor spells them:

- ``basic_rnn``: ``BasicRNNCell``; ``name``.
- ``basic_lstm``: ``BasicLSTMCell``; ``forget_bias``, ``name``.
- ``lstm``: ``LSTMCell``; ``forget_bias``, ``use_peepholes``, ``cell_clip``, ``num_proj``,
  ``proj_clip``, ``name``.
- ``gru``: ``GRUCell``; ``name``.
- ``block_lstm``: contrib's ``LSTMBlockCell`` (gone from TensorFlow 2), emulated exactly:
  ``forget_bias``, ``cell_clip``, ``use_peephole``, ``name``. See :class:`LSTMBlockCell`.

Names as TF 2.21's compat path writes them (the same as TF 1.2-1.15), for example:
``rnn/multi_rnn_cell/cell_0/lstm_cell/kernel``, ``.../bias``, ``.../w_f_diag``,
``.../w_i_diag``, ``.../w_o_diag``, ``.../projection/kernel``; ``rnn/gru_cell/gates/kernel``,
``.../gates/bias``, ``.../candidate/kernel``, ``.../candidate/bias``;
``bidirectional_rnn/fw/lstm_cell/kernel`` and ``bidirectional_rnn/bw/...``; the PTB model
``Model/embedding``, ``Model/RNN/rnn/multi_rnn_cell/cell_<k>/basic_lstm_cell/kernel``,
``Model/softmax_w``, ``Model/softmax_b``; a dense head ``dense/kernel``, ``dense/bias``; Adam's
``<variable>/Adam``, ``<variable>/Adam_1``, ``beta1_power``, ``beta2_power``, ``global_step``.
``old_names`` renames, inside the cells' variables only (slots included), a trailing
``kernel`` to ``weights`` and ``bias`` to ``biases``: ``rnn/basic_lstm_cell/weights``,
``rnn/gru_cell/gates/biases``, ``rnn/lstm_cell/projection/weights``, as TF 1.0 and 1.1 wrote
them (through ``Saver(var_list={name: variable})``, so the file is what TF 1.0 wrote).

``results.npz`` holds ``inputs`` (batch, time, input_size) float32, or int32 token ids
(batch, time) for the PTB head; ``sequence_length`` (batch,) where the job has one;
``outputs``: TF1's outputs tensor, (batch, time, units) (a static call's list stacked on
axis 1; a bidirectional call's two directions concatenated on the last axis, as
``tf.concat(outputs, -1)``); ``state_0``, ``state_1``, ...: the leaves of the final state in
``tf.nest.flatten`` order (per direction, per layer: ``c, h`` for an LSTM, ``h`` otherwise);
``head``: the head's outputs, (batch, time, units) or the PTB logits (batch, time, vocab).
When the job has a ``sequence_length``, ``full_outputs``, ``full_state_<k>`` and ``full_head``
are the same model (same variables) called without it. With an optimizer every number is
computed after its step, from the saved weights.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

# Both before TensorFlow's first import: the legacy cells exist only with legacy Keras.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_keras.src.layers.rnn.legacy_cells import LayerRNNCell  # noqa: E402

tf1 = tf.compat.v1
CALLS = ("dynamic", "static", "bidirectional_dynamic", "bidirectional_static")
HEADS = ("dense", "ptb")
JOB_KEYS = {
    "name", "seed", "call", "cells", "multi", "backward_cells", "model_scope", "rnn_scope",
    "call_scope", "input_size", "batch", "time", "sequence_length", "head", "old_names",
    "optimizer", "scale",
}  # fmt: skip
# Each family's constructor arguments a cell spec may give besides family and units.
CELL_ARGUMENTS = {
    "basic_rnn": {"name"},
    "basic_lstm": {"forget_bias", "name"},
    "lstm": {"forget_bias", "use_peepholes", "cell_clip", "num_proj", "proj_clip", "name"},
    "gru": {"name"},
    "block_lstm": {"forget_bias", "cell_clip", "use_peephole", "name"},
}
OLD_LEAF_NAMES = {"kernel": "weights", "bias": "biases"}  # TF 1.0 and 1.1
ADAM_LEARNING_RATE = 0.01


class JobError(ValueError):
    """A job of jobs.json that cannot be built as written."""


class LSTMBlockCell(LayerRNNCell):
    """``tf.contrib.rnn.LSTMBlockCell`` of TF 1.x, which TensorFlow 2 no longer has.

    Its variables as contrib created them (``lstm_cell/kernel`` (n+u, 4u), ``lstm_cell/bias``
    (4u), with peepholes ``w_i_diag``, ``w_f_diag``, ``w_o_diag`` (u); names read from
    tensorflow/contrib/rnn/python/ops/lstm_ops.py), and its step computed by TensorFlow's LSTM
    block kernel: ``tf.raw_ops.BlockLSTM`` over one time step. (Contrib called the one-step op
    ``LSTMBlockCell``, the same kernel, and registered its gradient; core TF 2.21 has a gradient
    only for ``BlockLSTM``.) Gate blocks i, cs, f, o; ``forget_bias`` added to f; ``cell_clip``
    -1 meaning none; peepholes on the old c for i and f, on the new c for o. State
    ``LSTMStateTuple(c, h)``.
    """

    def __init__(self, num_units, forget_bias=1.0, cell_clip=None, use_peephole=False, name=None):
        super().__init__(name=name or "lstm_cell")
        self._num_units = num_units
        self._forget_bias = forget_bias
        self._cell_clip = -1.0 if cell_clip is None else cell_clip
        self._use_peephole = use_peephole

    @property
    def state_size(self):
        return tf1.nn.rnn_cell.LSTMStateTuple(self._num_units, self._num_units)

    @property
    def output_size(self):
        return self._num_units

    def build(self, inputs_shape):
        input_size = inputs_shape[-1]
        units = self._num_units
        self._kernel = self.add_weight("kernel", [input_size + units, 4 * units])
        self._bias = self.add_weight("bias", [4 * units], initializer=tf1.constant_initializer(0.0))
        if self._use_peephole:
            self._peepholes = [
                self.add_weight(name, [units]) for name in ("w_i_diag", "w_f_diag", "w_o_diag")
            ]
        self.built = True

    def call(self, inputs, state):
        cell_state, hidden = state
        if self._use_peephole:
            w_i_diag, w_f_diag, w_o_diag = self._peepholes
        else:
            w_i_diag = w_f_diag = w_o_diag = tf.zeros([self._num_units])
        step = tf.raw_ops.BlockLSTM(
            seq_len_max=tf.constant(1, tf.int64),
            x=inputs[None],
            cs_prev=cell_state,
            h_prev=hidden,
            w=self._kernel,
            wci=w_i_diag,
            wcf=w_f_diag,
            wco=w_o_diag,
            b=self._bias,
            forget_bias=self._forget_bias,
            cell_clip=self._cell_clip,
            use_peephole=self._use_peephole,
        )
        return step.h[0], tf1.nn.rnn_cell.LSTMStateTuple(step.cs[0], step.h[0])


def _make_cell(spec: dict):
    """One cell of a spec: ``{"family": ..., "units": ..., **constructor arguments}``."""
    family = spec.get("family")
    if family not in CELL_ARGUMENTS:
        raise JobError(f"cell family {family!r} is not one of {sorted(CELL_ARGUMENTS)}")
    arguments = {key: value for key, value in spec.items() if key not in ("family", "units")}
    unknown = set(arguments) - CELL_ARGUMENTS[family]
    if unknown:
        raise JobError(f"{family} takes no {sorted(unknown)}")
    rnn_cell = tf1.nn.rnn_cell
    constructor = {
        "basic_rnn": rnn_cell.BasicRNNCell,
        "basic_lstm": rnn_cell.BasicLSTMCell,
        "lstm": rnn_cell.LSTMCell,
        "gru": rnn_cell.GRUCell,
        "block_lstm": LSTMBlockCell,
    }[family]
    return constructor(spec["units"], **arguments)


def _make_cells(specs: list, multi: bool):
    """A cell, or a ``MultiRNNCell`` of them (for two or more, or ``multi``)."""
    if not specs:
        raise JobError("a cell list is empty")
    cells = [_make_cell(spec) for spec in specs]
    return tf1.nn.rnn_cell.MultiRNNCell(cells) if multi or len(cells) > 1 else cells[0]


def _rnn_call(job: dict, inputs, sequence_length):
    """The job's rnn call on ``inputs`` (batch, time, n): (outputs (batch, time, units),
    final state), outputs as TF1's outputs tensor (directions concatenated)."""
    call = job.get("call", "dynamic")
    multi = job.get("multi", False)
    forward = _make_cells(job["cells"], multi)
    arguments = dict(sequence_length=sequence_length, dtype=tf.float32, scope=job.get("call_scope"))
    if call == "dynamic":
        return tf1.nn.dynamic_rnn(forward, inputs, **arguments)
    steps = tf.unstack(inputs, axis=1)
    if call == "static":
        outputs, state = tf1.nn.static_rnn(forward, steps, **arguments)
        return tf.stack(outputs, axis=1), state
    backward = _make_cells(job.get("backward_cells", job["cells"]), multi)
    if call == "bidirectional_dynamic":
        outputs, state = tf1.nn.bidirectional_dynamic_rnn(forward, backward, inputs, **arguments)
        return tf.concat(outputs, -1), state
    if call == "bidirectional_static":
        outputs, state_fw, state_bw = tf1.nn.static_bidirectional_rnn(
            forward, backward, steps, **arguments
        )
        return tf.stack(outputs, axis=1), (state_fw, state_bw)
    raise JobError(f"call {call!r} is not one of {CALLS}")


def _model(job: dict, inputs, sequence_length):
    """The whole model on the ``inputs`` placeholder: ({"outputs", "state", "head"}, names of
    the variables the rnn call created). The first call creates the variables; a call in a
    ``reuse`` scope uses them (and creates none)."""
    head = job.get("head") or {}
    if head and head.get("type") not in HEADS:
        raise JobError(f"head type {head.get('type')!r} is not one of {HEADS}")
    with tf1.variable_scope(job.get("model_scope", "") or tf1.get_variable_scope()):
        if head.get("type") == "ptb":
            embedding = tf1.get_variable("embedding", [head["vocab"], job["input_size"]])
            inputs = tf.nn.embedding_lookup(embedding, inputs)
        existing = {variable.op.name for variable in tf1.global_variables()}
        with tf1.variable_scope(job.get("rnn_scope", "") or tf1.get_variable_scope()):
            outputs, state = _rnn_call(job, inputs, sequence_length)
        cell_variables = [
            variable.op.name
            for variable in tf1.global_variables()
            if variable.op.name not in existing
        ]
        tensors = {"outputs": outputs, "state": state}
        if head.get("type") == "dense":
            tensors["head"] = tf1.layers.dense(outputs, head["units"], name="dense")
        elif head.get("type") == "ptb":
            tensors["head"] = _ptb_logits(outputs, head["vocab"])
    return tensors, cell_variables


def _ptb_logits(outputs, vocab: int):
    """ptb_word_lm's softmax: (batch, time, size) outputs -> (batch, time, vocab) logits,
    through its (batch * time, size) reshape and ``softmax_w``, ``softmax_b``."""
    batch, time, size = outputs.shape
    softmax_w = tf1.get_variable("softmax_w", [size, vocab])
    softmax_b = tf1.get_variable("softmax_b", [vocab])
    logits = tf.matmul(tf.reshape(outputs, [-1, size]), softmax_w) + softmax_b
    return tf.reshape(logits, [batch, time, vocab])


def _checkpoint_names(cell_variables: list) -> dict:
    """{name in the checkpoint: variable} for every global variable; with ``old_names``
    (``cell_variables`` given) a cell variable's trailing ``kernel``/``bias`` and its
    optimizer slots get TF 1.0's ``weights``/``biases``."""
    names = {}
    for variable in tf1.global_variables():
        name = variable.op.name
        for cell_variable in cell_variables:
            if name == cell_variable or name.startswith(cell_variable + "/"):
                scope, leaf = cell_variable.rsplit("/", 1)
                name = f"{scope}/{OLD_LEAF_NAMES.get(leaf, leaf)}{name[len(cell_variable) :]}"
                break
        names[name] = variable
    return names


def _inputs(job: dict, rng: np.random.RandomState) -> np.ndarray:
    batch, time = job["batch"], job["time"]
    head = job.get("head") or {}
    if head.get("type") == "ptb":
        return rng.randint(0, head["vocab"], size=(batch, time)).astype(np.int32)
    return rng.uniform(-1.0, 1.0, size=(batch, time, job["input_size"])).astype(np.float32)


def _check_job(job: dict) -> None:
    unknown = set(job) - JOB_KEYS
    if unknown:
        raise JobError(f"unknown keys {sorted(unknown)}")
    for key in ("name", "cells", "input_size", "batch", "time"):
        if key not in job:
            raise JobError(f"no {key!r}")
    lengths = job.get("sequence_length")
    if lengths is not None and (
        len(lengths) != job["batch"] or not all(0 <= length <= job["time"] for length in lengths)
    ):
        raise JobError(f"sequence_length {lengths} is not one length in [0, time] per row")
    if job.get("optimizer") not in (None, "adam"):
        raise JobError(f"optimizer {job['optimizer']!r} is not null or 'adam'")


def run_job(job: dict, directory: str) -> None:
    """Builds, initialises, (steps,) saves and runs one job; writes DIR/<name>/."""
    _check_job(job)
    seed = job.get("seed", 0)
    rng = np.random.RandomState(seed)
    inputs_value = _inputs(job, rng)
    lengths = job.get("sequence_length")
    # The job's call, and with a sequence_length the same model called without one.
    runs = {"": lengths} if lengths is None else {"": lengths, "full_": None}
    with tf.Graph().as_default():
        tf1.set_random_seed(seed)
        inputs = tf1.placeholder(tf.as_dtype(inputs_value.dtype), inputs_value.shape, "inputs")
        length_feed = tf1.placeholder(tf.int32, [job["batch"]], "sequence_length")
        models, cell_variables = {}, []
        for prefix, run_lengths in runs.items():
            with tf1.variable_scope(tf1.get_variable_scope(), reuse=bool(models)):
                run_feed = None if run_lengths is None else length_feed
                models[prefix], created = _model(job, inputs, run_feed)
            cell_variables += created
        model_variables = tf1.trainable_variables()
        step = None
        if job.get("optimizer") == "adam":
            main = models[""].get("head", models[""]["outputs"])
            step = tf1.train.AdamOptimizer(ADAM_LEARNING_RATE).minimize(
                tf.reduce_mean(tf.square(main)), global_step=tf1.train.get_or_create_global_step()
            )
        saver = tf1.train.Saver(_checkpoint_names(cell_variables if job.get("old_names") else []))
        feed = {inputs: inputs_value}
        if lengths is not None:
            feed[length_feed] = np.asarray(lengths, np.int32)
        scale = job.get("scale", 0.5)
        out = os.path.join(directory, job["name"])
        os.makedirs(out, exist_ok=True)
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            for variable in model_variables:
                shape = variable.shape.as_list()
                variable.load(rng.uniform(-scale, scale, size=shape).astype(np.float32), session)
            if step is not None:
                session.run(step, feed)
            saver.save(session, os.path.join(out, "ckpt"), write_meta_graph=False)
            values = session.run(models, feed)
    results = {"inputs": inputs_value}
    if lengths is not None:
        results["sequence_length"] = np.asarray(lengths, np.int32)
    for prefix, value in values.items():
        results[f"{prefix}outputs"] = value["outputs"]
        for index, leaf in enumerate(tf.nest.flatten(value["state"])):
            results[f"{prefix}state_{index}"] = leaf
        if "head" in value:
            results[f"{prefix}head"] = value["head"]
    np.savez(os.path.join(out, "results.npz"), **results)


def main(argv: list) -> int:
    if len(argv) != 1:
        print(f"usage: python {os.path.relpath(__file__)} DIR  (DIR/jobs.json)", file=sys.stderr)
        return 2
    directory = argv[0]
    with open(os.path.join(directory, "jobs.json")) as handle:
        jobs = json.load(handle)
    tf1.disable_v2_behavior()
    tf1.logging.set_verbosity(tf1.logging.ERROR)
    # The legacy cells warn that they are deprecated: they are what the users' models used.
    warnings.filterwarnings("ignore", message=".*is deprecated", category=UserWarning)
    for job in jobs:
        try:
            run_job(job, directory)
        except JobError as error:
            print(f"error: job {job.get('name')!r}: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
