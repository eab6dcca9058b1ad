"""tfrnn.tf1 against users' own TF1 recurrent models, run side by side ("lockstep").

The TF1 side is ``experiments/tf1/tf1_models.py``: each model below built with the TF1 API
(``tf.compat.v1`` graph mode, the legacy ``rnn_cell`` cells, ``dynamic_rnn`` / ``static_rnn``
/ the bidirectional calls, ``train.Saver``), every variable set to seeded uniform values in
[-0.5, 0.5] (biases included), run on random inputs with and without ``sequence_length``. It
needs ``TF_USE_LEGACY_KERAS=1`` before TensorFlow's first import, so it runs once for this
module in a subprocess of the same Python (tf_keras from requirements-dev.txt).

Each checkpoint is then converted by ``tfrnn.tf1.recurrent_layers``, built as a while loop and
unrolled, and each layer's outputs and final states must equal TF1's to 1e-5, with the
sequence lengths as a mask and without. What a checkpoint does not store (``forget_bias``,
``cell_clip``, ``proj_clip``) is passed as the job built it. TF1's final state is flattened
per direction, per layer, ``(c, h)`` for an LSTM and ``h`` otherwise; the layers give Keras'
``[h, c]``. The command's library function ``convert`` is checked on two models: the PTB word
model, whole from token ids to logits, and a stack with a dense head and Adam's slots, through
the files it writes (the layer's ``.keras`` file and ``variables.npz``).
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tfrnn.tf1 import recurrent_layers
from tfrnn.tf1.convert import convert

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TF1_MODELS = os.path.join(ROOT, "experiments", "tf1", "tf1_models.py")
ENV = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}

# What is left between TF1's kernels and Keras' is float32 rounding in a different order.
TOLERANCE = 1e-5
SIZES = dict(input_size=3, batch=3, time=5)
LENGTHS = [5, 2, 4]  # one full row, two shorter
LSTM_FAMILIES = ("basic_lstm", "lstm", "block_lstm")
PROJ_CLIP, CELL_CLIP = 0.15, 0.4


def _cell(family, units, **arguments):
    return {"family": family, "units": units, **arguments}


# name: (the job for tf1_models.py (SIZES and LENGTHS unless given), its recurrent scope)
MODELS = {
    "basic_rnn": (dict(cells=[_cell("basic_rnn", 4)]), "rnn/basic_rnn_cell"),
    "basic_lstm": (dict(cells=[_cell("basic_lstm", 4)]), "rnn/basic_lstm_cell"),
    "lstm_peepholes_projection_clips": (
        dict(
            cells=[
                _cell(
                    "lstm",
                    4,
                    forget_bias=0.7,
                    use_peepholes=True,
                    num_proj=3,
                    cell_clip=CELL_CLIP,
                    proj_clip=PROJ_CLIP,
                )
            ]
        ),
        "rnn/lstm_cell",
    ),
    "lstm_peepholes": (dict(cells=[_cell("lstm", 4, use_peepholes=True)]), "rnn/lstm_cell"),
    "lstm_projection": (
        dict(call="static", cells=[_cell("lstm", 4, num_proj=2)]),
        "rnn/lstm_cell",
    ),
    "gru_named": (dict(cells=[_cell("gru", 4, name="my_gru")]), "rnn/my_gru"),
    "stacked_lstm_dense": (
        dict(cells=[_cell("lstm", 4), _cell("lstm", 3)], head={"type": "dense", "units": 2}),
        "rnn/multi_rnn_cell",
    ),
    "stacked_basic_lstm_static": (
        dict(call="static", cells=[_cell("basic_lstm", 3, forget_bias=0.5)] * 2),
        "rnn/multi_rnn_cell",
    ),
    "stack_of_one": (dict(cells=[_cell("gru", 3)], multi=True), "rnn/multi_rnn_cell"),
    "mixed_stack": (
        dict(cells=[_cell("basic_rnn", 5), _cell("lstm", 4), _cell("gru", 3)]),
        "rnn/multi_rnn_cell",
    ),
    "bidirectional_dynamic": (
        dict(
            call="bidirectional_dynamic",
            cells=[_cell("lstm", 3)],
            backward_cells=[_cell("lstm", 4)],
        ),
        "bidirectional_rnn",
    ),
    "bidirectional_static_stacks": (
        dict(
            call="bidirectional_static",
            cells=[_cell("lstm", 3), _cell("gru", 2)],
            backward_cells=[_cell("basic_rnn", 4), _cell("basic_lstm", 2)],
        ),
        "bidirectional_rnn",
    ),
    "scopes_and_names": (
        dict(
            model_scope="outer",
            call_scope="my_scope",
            cells=[_cell("lstm", 4, name="encoder"), _cell("gru", 3, name="decoder")],
        ),
        "outer/my_scope/multi_rnn_cell",
    ),
    "old_names_basic_lstm": (
        dict(call="static", cells=[_cell("basic_lstm", 4)], old_names=True),
        "rnn/basic_lstm_cell",
    ),
    "old_names_gru": (dict(cells=[_cell("gru", 4)], old_names=True), "rnn/gru_cell"),
    "old_names_lstm_projection": (
        dict(cells=[_cell("lstm", 4, use_peepholes=True, num_proj=3)], old_names=True),
        "rnn/lstm_cell",
    ),
    "adam_slots": (
        dict(
            cells=[_cell("gru", 4), _cell("lstm", 3)],
            head={"type": "dense", "units": 2},
            optimizer="adam",
        ),
        "rnn/multi_rnn_cell",
    ),
    "ptb": (
        dict(
            call="static",
            cells=[_cell("basic_lstm", 4, forget_bias=0.0)] * 2,
            model_scope="Model",
            rnn_scope="RNN",
            input_size=4,
            sequence_length=None,  # the PTB model fed whole windows
            head={"type": "ptb", "vocab": 7},
        ),
        "Model/RNN/rnn/multi_rnn_cell",
    ),
    "lstm_block_cell": (
        dict(
            cells=[_cell("block_lstm", 4, forget_bias=0.5, use_peephole=True, cell_clip=CELL_CLIP)]
        ),
        "rnn/lstm_cell",
    ),
}


@pytest.fixture(scope="module")
def tf1_runs(tmp_path_factory):
    """{model name: (job, checkpoint prefix, results)}: every model run by the TF1 script in
    one subprocess."""
    root = tmp_path_factory.mktemp("tf1_models")
    jobs = {
        name: {"name": name, "seed": seed, **SIZES, "sequence_length": LENGTHS, **job}
        for seed, (name, (job, _)) in enumerate(MODELS.items())
    }
    (root / "jobs.json").write_text(json.dumps(list(jobs.values())))
    finished = subprocess.run(
        [sys.executable, TF1_MODELS, str(root)],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert finished.returncode == 0, finished.stderr[-3000:]
    return {
        name: (job, str(root / name / "ckpt"), dict(np.load(root / name / "results.npz")))
        for name, job in jobs.items()
    }


def _directions(job) -> list:
    """The cell specs of each direction, forward first."""
    if job.get("call", "dynamic").startswith("bidirectional"):
        return [job["cells"], job.get("backward_cells", job["cells"])]
    return [job["cells"]]


def _all_cells(job) -> list:
    return [cell for cells in _directions(job) for cell in cells]


def _run_time_options(job) -> dict:
    """The constructor arguments a checkpoint does not store, as the job gave them (one value
    for the whole checkpoint): ``recurrent_layers``' forget_bias, cell_clip, proj_clip."""
    options = {}
    lstms = [cell for cell in _all_cells(job) if cell["family"] in LSTM_FAMILIES]
    for argument, default in (("forget_bias", 1.0), ("cell_clip", None), ("proj_clip", None)):
        values = {cell.get(argument, default) for cell in lstms} or {default}
        assert len(values) == 1, f"one {argument} per checkpoint, not {values}"
        options[argument] = values.pop()
    return options


def _runs(results) -> list:
    """[(mask or None, TF1's numbers of that run)]: with the sequence lengths as a mask, if
    the job has them, and without (the ``full_`` results then)."""
    if "sequence_length" not in results:
        return [(None, results)]
    steps = np.arange(results["inputs"].shape[1])
    mask = steps[None, :] < results["sequence_length"][:, None]
    masked = {key: value for key, value in results.items() if not key.startswith("full_")}
    full = {key[5:]: value for key, value in results.items() if key.startswith("full_")}
    return [(tf.constant(mask), masked), (None, full)]


def _tf1_states_in_keras_order(job, run) -> list:
    """TF1's flattened final state (per direction, per layer: ``c, h`` for an LSTM, ``h``
    otherwise) in Keras' order (``h, c``)."""
    count = sum(key.startswith("state_") for key in run)
    leaves = iter(run[f"state_{index}"] for index in range(count))
    ordered = []
    for cell in _all_cells(job):
        if cell["family"] in LSTM_FAMILIES:
            cell_state, hidden = next(leaves), next(leaves)
            ordered += [hidden, cell_state]
        else:
            ordered.append(next(leaves))
    assert next(leaves, None) is None, "more TF1 state leaves than the job's cells have"
    return ordered


def _layer_inputs(job, checkpoint, results) -> np.ndarray:
    """The recurrent layer's inputs: the job's, or for the PTB model its token ids looked up
    in the checkpoint's embedding."""
    if (job.get("head") or {}).get("type") == "ptb":
        embedding = tf.train.load_checkpoint(checkpoint).get_tensor("Model/embedding")
        return embedding[results["inputs"]]
    return results["inputs"]


def _max_error(actual, expected) -> float:
    actual = np.asarray(actual)
    assert actual.shape == expected.shape, f"shape {actual.shape}, TF1 {expected.shape}"
    return float(np.max(np.abs(actual - expected)))


@pytest.mark.parametrize("unroll", [False, True], ids=["loop", "unrolled"])
@pytest.mark.parametrize("name", list(MODELS))
def test_converted_layer_gives_tf1_outputs_and_final_states(tf1_runs, name, unroll):
    job, checkpoint, results = tf1_runs[name]
    layers = recurrent_layers(
        checkpoint, unroll=unroll, return_state=True, **_run_time_options(job)
    )
    assert list(layers) == [MODELS[name][1]]
    layer = layers[MODELS[name][1]]
    inputs = _layer_inputs(job, checkpoint, results)
    for mask, run in _runs(results):
        # A new tensor each call: a model called with a mask leaves it on its input tensor.
        outputs, *states = layer(tf.constant(inputs), mask=mask)
        which = "masked" if mask is not None else "full"
        error = _max_error(outputs, run["outputs"])
        assert error <= TOLERANCE, f"{which} outputs: max error {error:.2e}"
        expected_states = _tf1_states_in_keras_order(job, run)
        states = keras.tree.flatten(states)
        assert len(states) == len(expected_states)
        for index, (state, expected) in enumerate(zip(states, expected_states, strict=True)):
            error = _max_error(state, expected)
            assert error <= TOLERANCE, f"{which} state {index}: max error {error:.2e}"


def _recurrent_layer_of(model) -> keras.layers.Layer:
    (layer,) = [layer for layer in model.layers if hasattr(layer, "unroll")]
    return layer


@pytest.mark.parametrize("unroll", [False, True], ids=["loop", "unrolled"])
def test_ptb_word_model_converts_whole_to_tf1_logits(tf1_runs, tmp_path, unroll):
    _, checkpoint, results = tf1_runs["ptb"]
    convert(checkpoint, str(tmp_path / "ptb"), forget_bias=0.0)
    model = keras.saving.load_model(str(tmp_path / "ptb" / "model.keras"))
    _recurrent_layer_of(model).unroll = unroll  # read by the layer's call
    logits = model(tf.constant(results["inputs"]))
    error = _max_error(logits, results["head"])
    assert error <= TOLERANCE, f"logits: max error {error:.2e}"


def test_converted_files_give_tf1_outputs_and_dense_head(tf1_runs, tmp_path):
    # The model with Adam slots: its layer in a .keras file, its head in variables.npz.
    job, checkpoint, results = tf1_runs["adam_slots"]
    workdir = tmp_path / "converted"
    convert(checkpoint, str(workdir), **_run_time_options(job))
    record = json.loads((workdir / "conversion.json").read_text())
    assert list(record["layers"]) == [MODELS["adam_slots"][1]]
    holder = keras.saving.load_model(str(workdir / record["layers"]["rnn/multi_rnn_cell"]["file"]))
    head = np.load(workdir / "variables.npz")
    assert sorted(head.files) == ["dense/bias", "dense/kernel"]  # no slot, no bookkeeping
    for mask, run in _runs(results):
        outputs = np.asarray(holder(tf.constant(results["inputs"]), mask=mask))  # a new tensor
        assert _max_error(outputs, run["outputs"]) <= TOLERANCE
        dense = outputs @ head["dense/kernel"] + head["dense/bias"]
        assert _max_error(dense, run["head"]) <= TOLERANCE


def _checkpoint_names(checkpoint) -> set:
    return set(tf.train.load_checkpoint(checkpoint).get_variable_to_shape_map())


def test_tf1_models_hold_what_the_lockstep_must_see(tf1_runs):
    # Every bias non-zero, so that a dropped or misplaced one changes the numbers.
    for name, (_, checkpoint, _) in tf1_runs.items():
        reader = tf.train.load_checkpoint(checkpoint)
        for variable in _checkpoint_names(checkpoint):
            if variable.rpartition("/")[2] in ("bias", "biases"):
                assert np.all(reader.get_tensor(variable) != 0), f"{name}: {variable}"
    # The clips bind on some steps and not on others.
    outputs = tf1_runs["lstm_peepholes_projection_clips"][2]["full_outputs"]
    assert 0 < np.mean(np.isclose(np.abs(outputs), PROJ_CLIP)) < 1
    for name in ("lstm_peepholes_projection_clips", "lstm_block_cell"):
        cell_state = np.abs(tf1_runs[name][2]["full_state_0"])
        assert np.any(np.isclose(cell_state, CELL_CLIP)) and np.any(cell_state < CELL_CLIP - 1e-3)
    # TF 1.0's names, and an optimizer's variables beside the model's.
    names = _checkpoint_names(tf1_runs["old_names_lstm_projection"][1])
    assert {"rnn/lstm_cell/weights", "rnn/lstm_cell/projection/weights"} <= names
    assert not any(name.endswith(("kernel", "bias")) for name in names)
    names = _checkpoint_names(tf1_runs["adam_slots"][1])
    assert {"beta1_power", "beta2_power", "global_step", "dense/kernel/Adam"} <= names
