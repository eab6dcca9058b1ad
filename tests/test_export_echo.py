"""Tests of tfrnn.export with echo models: whole sequences, streams, and the state."""

import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf
from export_testing import rest_to_tensors, save_workdir

from tfrnn.serving import export, tf_serving
from tfrnn.tasks.echo.model import build_echo_model

STATE_SIZE = 4


# lstm: the stateless model.keras that training saves. concat: a stateful model (batch 3),
# which the exporter must turn into a stateless copy with the same weights.
@pytest.fixture(scope="module", params=[("lstm", False), ("concat", True)], ids=["lstm", "concat"])
def echo(request, tmp_path_factory):
    """(kind, stateless Keras model with the trained weights, version dir, description)."""
    kind, stateful = request.param
    keras.utils.set_random_seed(1)
    trained = build_echo_model(
        kind, STATE_SIZE, batch_size=3 if stateful else None, stateful=stateful
    )
    # Non-zero biases, so that a weight lost on the way would show in the outputs.
    trained.set_weights([w + 0.1 for w in trained.get_weights()])
    root = tmp_path_factory.mktemp(f"echo_{kind}")
    config = {
        "task": "echo",
        "cell": kind,
        "state_size": STATE_SIZE,
        "num_steps": 5,
        "mode": "stateful",
    }
    workdir = save_workdir(root / "run", trained, config)
    # Into a folder named export, as a training workdir's: the model is named echo all the same.
    description = export.export_workdir(workdir, str(root / "export"))
    reference = build_echo_model(kind, STATE_SIZE)
    reference.set_weights(trained.get_weights())
    return kind, reference, os.path.join(root, "export", "1"), description


def _states(kind):
    return ["h", "c"] if kind == "lstm" else ["h"]


def _symbols(batch, time, seed=0):
    return np.random.default_rng(seed).integers(0, 2, size=(batch, time)).astype(np.int32)


def test_signatures_take_and_return_named_state(echo):
    kind, _, version_dir, description = echo
    state = {"dtype": "float32", "shape": [None, STATE_SIZE]}
    states = {name: state for name in _states(kind)}
    assert (
        tf_serving.signatures(version_dir)
        == description["signatures"]
        == {
            "serving_default": {
                "method": "tensorflow/serving/predict",
                "inputs": {"symbols": {"dtype": "int32", "shape": [None, None]}},
                "outputs": {
                    "probabilities": {"dtype": "float32", "shape": [None, None, 2]},
                    **states,
                },
            },
            "step": {
                "method": "tensorflow/serving/predict",
                "inputs": {"symbols": {"dtype": "int32", "shape": [None]}, **states},
                "outputs": {"probabilities": {"dtype": "float32", "shape": [None, 2]}, **states},
            },
        }
    )
    assert description["source"]["config"]["cell"] == kind
    assert description["model"] == "echo"


def test_whole_sequence_matches_keras_through_the_tf_serving_path(echo):
    _, reference, version_dir, _ = echo
    symbols = _symbols(batch=5, time=11)
    outputs = tf_serving.run_like_tf_serving(version_dir, "serving_default", {"symbols": symbols})
    expected = np.asarray(keras.ops.softmax(reference(symbols), axis=-1))
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    # Lengths the training windows never had work too: the copy has no fixed time axis.
    longer = _symbols(batch=2, time=40, seed=3)
    outputs = tf_serving.run_like_tf_serving(version_dir, "serving_default", {"symbols": longer})
    expected = np.asarray(keras.ops.softmax(reference(longer), axis=-1))
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)


def test_streaming_step_by_step_equals_the_whole_sequence(echo):
    kind, _, version_dir, _ = echo
    signatures = tf.saved_model.load(version_dir).signatures
    symbols = _symbols(batch=3, time=9, seed=1)
    whole = signatures["serving_default"](symbols=tf.constant(symbols))
    state = {name: tf.zeros([3, STATE_SIZE]) for name in _states(kind)}
    streamed = []
    for time in range(symbols.shape[1]):
        answer = signatures["step"](symbols=tf.constant(symbols[:, time]), **state)
        streamed.append(answer["probabilities"].numpy())
        state = {name: answer[name] for name in _states(kind)}
    np.testing.assert_allclose(np.stack(streamed, axis=1), whole["probabilities"], atol=1e-6)
    for name in _states(kind):  # the state after the last step is the whole sequence's
        np.testing.assert_allclose(state[name], whole[name], atol=1e-6)
    assert np.ptp(whole["probabilities"].numpy()[..., 1]) > 1e-3  # steps differ: not vacuous


def test_described_requests_give_the_described_answers(echo):
    kind, _, version_dir, description = echo
    signatures = tf.saved_model.load(version_dir).signatures
    for name in ("serving_default", "step"):
        request = description["rest"]["requests"][name]
        with open(request["request_file"]) as handle:
            body = json.load(handle)
        assert body == request["body"] and "instances" in body
        assert body.get("signature_name", "serving_default") == name
        url = "http://localhost:8501/v1/models/echo/versions/1:predict"
        assert request["curl"] == f"curl -s -X POST {url} -d @{request['request_file']}"
        answer = signatures[name](**rest_to_tensors(body, signatures[name]))
        (described,) = request["response"]["predictions"]
        for output in ["probabilities", *_states(kind)]:
            np.testing.assert_allclose(answer[output][0], described[output], atol=1e-5)
    # The columnar form of the same step request gives the same answer.
    step_body = description["rest"]["requests"]["step"]["body"]
    columns = {
        "inputs": {
            key: [row[key] for row in step_body["instances"]] for key in step_body["instances"][0]
        }
    }
    from_columns = signatures["step"](**rest_to_tensors(columns, signatures["step"]))
    from_rows = signatures["step"](**rest_to_tensors(step_body, signatures["step"]))
    np.testing.assert_allclose(from_columns["probabilities"], from_rows["probabilities"], atol=1e-7)


def _step_inputs(kind, batch=2, **changes):
    inputs = {"symbols": np.array([0, 1][:batch], np.int32)}
    inputs.update({name: np.zeros((batch, STATE_SIZE), np.float32) for name in _states(kind)})
    inputs.update(changes)
    return inputs


@pytest.mark.parametrize(
    "signature, make_inputs, message",
    [
        (
            "serving_default",
            lambda kind: {"symbols": np.array([0, 1, 1], np.int32)},
            r"symbols must have shape \[batch, time\]; got \[3\]",
        ),
        (
            "serving_default",
            lambda kind: {"symbols": np.zeros((2, 0), np.int32)},
            r"symbols is empty",
        ),
        (
            "serving_default",
            lambda kind: {"symbols": np.zeros((0, 5), np.int32)},
            r"symbols is empty",
        ),
        (
            "serving_default",
            lambda kind: {"symbols": np.array([[0, 1, 2]], np.int32)},
            r"symbols must be 0 or 1; got values from 0 to 2",
        ),
        (
            "step",
            lambda kind: _step_inputs(kind, symbols=np.array([[0], [1]], np.int32)),
            r"symbols must have shape \[batch\] \(one symbol per stream\); got \[2, 1\]",
        ),
        (
            "step",
            lambda kind: _step_inputs(kind, h=np.zeros((2, STATE_SIZE + 1), np.float32)),
            rf"h must have shape \[batch, {STATE_SIZE}\]; got \[2, {STATE_SIZE + 1}\]",
        ),
        (
            "step",
            lambda kind: _step_inputs(kind, h=np.zeros((3, STATE_SIZE), np.float32)),
            r"h must have one row per symbol; got 3 rows for 2 symbols",
        ),
        ("step", lambda kind: _step_inputs(kind, batch=0), r"symbols is empty"),
        (
            "step",
            lambda kind: _step_inputs(kind, symbols=np.int32(1)),
            r"symbols must have shape \[batch\] \(one symbol per stream\); got \[\]",
        ),
    ],
    ids=[
        "rank",
        "empty_time",
        "empty_batch",
        "symbol_2",
        "step_rank",
        "state_width",
        "state_batch",
        "step_empty",
        "step_scalar",
    ],
)
def test_wrong_inputs_fail_at_the_signature(echo, signature, make_inputs, message):
    kind, _, version_dir, _ = echo
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        tf_serving.run_like_tf_serving(version_dir, signature, make_inputs(kind))
    assert "assertion failed" in error.value.message
    line = tf_serving.signature_error(error.value)
    assert re.search(message, line), line


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_states_fail_at_the_step_signature(echo, value):
    kind, _, version_dir, _ = echo
    for name in _states(kind):  # h, and c for an LSTM
        state = np.zeros((2, STATE_SIZE), np.float32)
        state[1, 0] = value
        with pytest.raises(tf.errors.InvalidArgumentError) as error:
            tf_serving.run_like_tf_serving(version_dir, "step", _step_inputs(kind, **{name: state}))
        line = tf_serving.signature_error(error.value)
        assert line == f"{name} must hold finite numbers; got 1 NaN or inf values", line


def test_wrong_dtype_fails_at_the_signature(echo):
    _, _, version_dir, _ = echo
    signature = tf.saved_model.load(version_dir).signatures["serving_default"]
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="expected to be a int32 tensor but is a float"
    ):
        signature(symbols=tf.zeros([1, 3], tf.float32))


def test_graph_has_no_cudnn_ops(echo):
    _, _, version_dir, _ = echo
    types = tf_serving.op_types(version_dir)
    # The time loop reads no variable (tfrnn.layers.cells.RNN reads the weights before it), so
    # TensorFlow makes it a StatelessWhile; walking the function library is what finds it.
    assert "OneHot" in types and types & {"While", "StatelessWhile"}
    assert not [op for op in types if op.startswith("CudnnRNN")]


@pytest.mark.parametrize(
    "value", [[2**40], [0.5], [float("nan")], ["1"]], ids=["too_large", "fraction", "nan", "text"]
)
def test_requests_are_converted_like_rest_json_never_wrapped(value):
    # int64 2**40 would wrap to 0 in int32, and 0.5 would truncate to 0: both are refused.
    with pytest.raises(ValueError, match="^symbols must hold"):
        tf_serving.to_signature_dtype("symbols", np.array(value), "int32")
    assert tf_serving.to_signature_dtype("symbols", np.array([1.0, 0.0]), "int32").tolist() == [
        1,
        0,
    ]
