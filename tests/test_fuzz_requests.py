"""Fuzzed requests to both exports, through TF Serving's loading path.

Every request hypothesis draws (ranks, shapes, dtypes, empty and large batches, NaN, inf,
out-of-range values, states of the wrong width or row count) is either answered with what
the Keras model says, or refused with a one-line message that names the input at fault:
never a crash, never a wrong answer. The validity of a request is decided here, from the
signature's documented contract, independently of the exported checks.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from export_testing import mnist_model, save_workdir
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfrnn.serving import export, tf_serving
from tfrnn.tasks.echo.model import build_echo_model, state_sizes

STATE_SIZE = 3
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,  # the same cases on every run: a failure is reproducible in CI
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def tried():
    """One test's cases, counted as answered or refused; after its last case (hypothesis runs
    them all in one call of the test), each kind was drawn and max_examples in all."""
    counts = {"answered": 0, "refused": 0}
    yield counts
    print(f"fuzzed requests: {counts}")
    assert counts["answered"] > 0 and counts["refused"] > 0, counts
    assert sum(counts.values()) >= FUZZ.max_examples, counts


def _count(tried, valid):
    tried["answered" if valid else "refused"] += 1


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """{task: (Keras reference, server)}: an MNIST and an LSTM echo export, loaded once."""
    root = tmp_path_factory.mktemp("fuzz")
    mnist = mnist_model()
    keras.utils.set_random_seed(2)
    echo = build_echo_model("lstm", STATE_SIZE)
    echo.set_weights([w + 0.1 for w in echo.get_weights()])
    result = {}
    for task, model, config in (
        ("mnist", mnist, {"cell": "lstm", "units": 8}),
        ("echo", echo, {"cell": "lstm", "state_size": STATE_SIZE, "num_steps": 5}),
    ):
        workdir = save_workdir(root / task, model, {"task": task, **config})
        export.export_workdir(workdir, str(root / "models" / task))
        server = tf_serving.TFServingSession(os.path.join(root, "models", task, "1"))
        result[task] = (model, server)
    yield result
    for _, server in result.values():
        server.close()


# Requests: half of them of the declared shape (batches from 1 to large), half of any rank
# up to 4 with dimensions near and far from the declared ones (empty ones included); every
# dtype a client can send, the expected one most often; values valid (most often), out of
# range, NaN or infinite.
DTYPES = st.sampled_from(
    [np.float32, np.float32, np.int32, np.float64, np.int64, np.float16, np.bool_, str]
)
BATCHES = st.sampled_from([1, 2, 3, 1000])


def _shapes(declared, dims):
    """``declared``: the valid shape with None for the batch (and any free axis)."""
    valid = st.tuples(*[BATCHES if size is None else st.just(size) for size in declared])
    # At most 3M values (12 MB in float32): large batches, not the machine's memory.
    anything = st.lists(dims, min_size=0, max_size=4).filter(lambda s: np.prod(s) <= 3e6)
    return st.one_of(valid.map(list), anything)


def _arrays(shapes, values):
    return st.tuples(shapes, DTYPES, values, st.integers(0, 2**31)).map(lambda d: _array(*d))


def _array(shape, dtype, value_kind, seed):
    rng = np.random.default_rng(seed)
    if dtype is str:
        return np.full(shape, "a")
    values = {
        "unit": lambda: rng.uniform(0, 1, shape),
        "binary": lambda: rng.integers(0, 2, shape),
        "wide": lambda: rng.uniform(-300, 300, shape),
        "nan": lambda: np.where(rng.uniform(size=shape) < 0.1, np.nan, 0.5),
        "inf": lambda: np.where(rng.uniform(size=shape) < 0.1, -np.inf, 0.0),
    }[value_kind]()
    with np.errstate(invalid="ignore", over="ignore"):
        return np.asarray(values).astype(dtype)


def _numeric(array, integral: bool) -> bool:
    """Whether a client's array converts to the signature's dtype as the REST API would."""
    if array.dtype.kind not in "iuf":
        return False
    with np.errstate(invalid="ignore"):
        return not integral or array.dtype.kind in "iu" or bool(np.all(np.mod(array, 1) == 0))


def _refused(server, signature, inputs, names):
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError)) as error:
        server.run(signature, inputs)
    line = tf_serving.signature_error(error.value)
    assert "\n" not in line
    assert any(name in line for name in names), line
    return line


@FUZZ
@given(
    rows=_arrays(
        _shapes([None, 28, 28], st.sampled_from([0, 1, 2, 27, 28, 29, 3000])),
        st.sampled_from(["unit", "unit", "unit", "binary", "wide", "nan", "inf"]),
    )
)
def test_mnist_rows_are_answered_like_keras_or_refused_by_name(served, tried, rows):
    model, server = served["mnist"]
    converted = rows.astype(np.float32) if _numeric(rows, integral=False) else None
    valid = (
        converted is not None
        and converted.ndim == 3
        and converted.shape[0] > 0
        and converted.shape[1:] == (28, 28)
        and bool(np.all(np.isfinite(converted)))
        and bool(np.all((converted >= 0) & (converted <= 1)))
    )
    _count(tried, valid)
    if not valid:
        _refused(server, "serving_default", {"rows": rows}, ["rows"])
        return
    answer = server.run("serving_default", {"rows": rows})
    expected = np.asarray(keras.ops.softmax(model(converted, training=False), axis=-1))
    np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)
    assert np.array_equal(answer["classes"], np.argmax(answer["probabilities"], -1))


STREAM_COPIES = {}  # id(model) -> the model's weights in a copy that takes the state


def _echo_reference(model, symbols, states):
    if id(model) not in STREAM_COPIES:
        STREAM_COPIES[id(model)] = build_echo_model("lstm", STATE_SIZE, explicit_state=True)
        STREAM_COPIES[id(model)].set_weights(model.get_weights())
    logits, *final = STREAM_COPIES[id(model)]([symbols, *states], training=False)
    return np.asarray(keras.ops.softmax(logits, axis=-1)), [np.asarray(s) for s in final]


@FUZZ
@given(
    symbols=_arrays(
        _shapes([None, 7], st.sampled_from([0, 1, 2, 7, 300])),
        st.sampled_from(["binary", "binary", "binary", "unit", "wide", "nan", "inf"]),
    )
)
def test_echo_sequences_are_answered_like_keras_or_refused_by_name(served, tried, symbols):
    model, server = served["echo"]
    valid = (
        _numeric(symbols, integral=True)
        and symbols.ndim == 2
        and symbols.size > 0
        and bool(np.all((symbols == 0) | (symbols == 1)))
    )
    _count(tried, valid)
    if not valid:
        _refused(server, "serving_default", {"symbols": symbols}, ["symbols"])
        return
    symbols = symbols.astype(np.int32)
    answer = server.run("serving_default", {"symbols": symbols})
    zeros = [np.zeros((len(symbols), STATE_SIZE), np.float32)] * 2
    probabilities, (h, c) = _echo_reference(model, symbols, zeros)
    np.testing.assert_allclose(answer["probabilities"], probabilities, atol=1e-5)
    np.testing.assert_allclose(answer["h"], h, atol=1e-5)
    np.testing.assert_allclose(answer["c"], c, atol=1e-5)


@FUZZ
@given(
    symbols=_arrays(
        _shapes([2], st.sampled_from([0, 1, 2, 5])),
        st.sampled_from(["binary", "binary", "binary", "wide", "nan"]),
    ),
    # None: one row of the declared width per symbol; else any (rows, width).
    state_shape=st.one_of(
        st.none(), st.tuples(st.sampled_from([0, 1, 2, 5]), st.sampled_from([1, 3, 4]))
    ),
    state_kind=st.sampled_from(["unit", "unit", "unit", "wide", "nan", "inf"]),
    seed=st.integers(0, 2**31),
)
def test_echo_steps_are_answered_like_keras_or_refused_by_name(
    served, tried, symbols, state_shape, state_kind, seed
):
    model, server = served["echo"]
    rows = len(symbols) if symbols.ndim else 1
    state_shape = state_shape or (rows, STATE_SIZE)
    states = [_array(list(state_shape), np.float32, state_kind, seed + i) for i in range(2)]
    valid = (
        _numeric(symbols, integral=True)
        and symbols.ndim == 1
        and symbols.size > 0
        and bool(np.all((symbols == 0) | (symbols == 1)))
        and state_shape == (len(symbols), STATE_SIZE)
        and all(bool(np.all(np.isfinite(state))) for state in states)
    )
    inputs = {"symbols": symbols, "h": states[0], "c": states[1]}
    _count(tried, valid)
    if not valid:
        _refused(server, "step", inputs, ["symbols", "h", "c"])
        return
    answer = server.run("step", {**inputs, "symbols": symbols.astype(np.int32)})
    probabilities, (h, c) = _echo_reference(model, symbols.astype(np.int32)[:, None], states)
    np.testing.assert_allclose(answer["probabilities"], probabilities[:, 0], atol=1e-5)
    np.testing.assert_allclose(answer["h"], h, atol=1e-5)
    np.testing.assert_allclose(answer["c"], c, atol=1e-5)


def test_the_echo_lstm_state_is_h_and_c_of_the_declared_width():
    assert state_sizes("lstm", STATE_SIZE) == [STATE_SIZE, STATE_SIZE]
