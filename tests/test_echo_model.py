"""Tests of tfrnn.tasks.echo.model: shapes, names, one weight order for every build, state."""

import keras
import numpy as np
import pytest

from tfrnn.layers.cells import TUTORIAL_CELL_KINDS
from tfrnn.tasks.echo.model import OneHot, build_echo_model, state_sizes, stateless_copy


def _symbols(batch=4, time=6, seed=0):
    return np.random.default_rng(seed).integers(0, 2, size=(batch, time)).astype("int32")


def _nonzero_weights(model, seed=0):
    # Random weights everywhere (biases start at zero), so that every weight shows up.
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype("float32") for w in model.weights])


@pytest.mark.parametrize("kind", TUTORIAL_CELL_KINDS)
def test_stateless_model_takes_any_batch_and_time(kind):
    model = build_echo_model(kind, 3)
    assert [layer.name for layer in model.layers[1:]] == ["one_hot", "rnn", "logits"]
    assert model.inputs[0].dtype == "int32"
    for batch, time in [(1, 1), (4, 6), (7, 2)]:
        assert model(_symbols(batch, time)).shape == (batch, time, 2)


def test_one_hot_layer():
    np.testing.assert_array_equal(OneHot()(np.array([[1, 0]], "int32")), [[[0, 1], [1, 0]]])


@pytest.mark.parametrize("kind", TUTORIAL_CELL_KINDS)
def test_every_build_shares_the_weight_order(kind):
    stateless = build_echo_model(kind, 3)
    _nonzero_weights(stateless)
    symbols = _symbols()
    expected = np.asarray(stateless(symbols))

    explicit = build_echo_model(kind, 3, explicit_state=True)
    explicit.set_weights(stateless.get_weights())
    zeros = [np.zeros((4, size), "float32") for size in state_sizes(kind, 3)]
    logits, *final_states = explicit([symbols, *zeros])
    np.testing.assert_allclose(logits, expected, atol=1e-6)
    assert len(final_states) == len(zeros)

    stateful = build_echo_model(kind, 3, batch_size=4, stateful=True, unroll=True)
    stateful.set_weights(stateless.get_weights())
    np.testing.assert_allclose(stateful(symbols), expected, atol=1e-6)


@pytest.mark.parametrize("kind", TUTORIAL_CELL_KINDS)
def test_stateless_copy_of_a_stateful_unrolled_model_has_its_weights(kind):
    trained = build_echo_model(kind, 3, batch_size=4, stateful=True, unroll=True)
    _nonzero_weights(trained, seed=3)
    symbols = _symbols(seed=4)
    expected = np.asarray(trained(symbols))
    trained.get_layer("rnn").reset_state()
    copy = stateless_copy(trained)
    assert not copy.get_layer("rnn").stateful and copy.inputs[0].shape == (None, None)
    np.testing.assert_allclose(copy(symbols), expected, atol=1e-6)
    assert copy(_symbols(batch=2, time=11)).shape == (2, 11, 2)  # any batch, any length
    explicit = stateless_copy(trained, explicit_state=True)
    zeros = [np.zeros((4, size), "float32") for size in state_sizes(kind, 3)]
    np.testing.assert_allclose(explicit([symbols, *zeros])[0], expected, atol=1e-6)


def test_stateless_copy_refuses_a_model_that_is_no_echo_model():
    features = keras.Input((5,))
    other = keras.Model(features, keras.layers.Dense(2)(features))
    with pytest.raises(ValueError, match="No such layer: rnn"):
        stateless_copy(other)


@pytest.mark.parametrize("kind", TUTORIAL_CELL_KINDS)
def test_chunked_stateful_and_explicit_forward_equal_the_whole_forward(kind):
    stateless = build_echo_model(kind, 3)
    _nonzero_weights(stateless, seed=1)
    symbols = _symbols(time=9, seed=2)
    whole = np.asarray(stateless(symbols))

    stateful = build_echo_model(kind, 3, batch_size=4, stateful=True)
    stateful.set_weights(stateless.get_weights())
    chunks = [np.asarray(stateful(symbols[:, start : start + 3])) for start in (0, 3, 6)]
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), whole, atol=1e-5)
    stateful.get_layer("rnn").reset_state()
    np.testing.assert_allclose(stateful(symbols[:, :3]), whole[:, :3], atol=1e-6)

    explicit = build_echo_model(kind, 3, explicit_state=True)
    explicit.set_weights(stateless.get_weights())
    states = [np.zeros((4, size), "float32") for size in state_sizes(kind, 3)]
    chunks = []
    for start in (0, 3, 6):
        logits, *states = explicit([symbols[:, start : start + 3], *states])
        states = [np.asarray(state) for state in states]
        chunks.append(np.asarray(logits))
    np.testing.assert_allclose(np.concatenate(chunks, axis=1), whole, atol=1e-5)


@pytest.mark.parametrize("kind", TUTORIAL_CELL_KINDS)
def test_saved_stateless_model_reloads(kind, tmp_path):
    model = build_echo_model(kind, 3)
    _nonzero_weights(model, seed=3)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    symbols = _symbols(batch=2, time=5)
    np.testing.assert_allclose(loaded(symbols), model(symbols), atol=1e-6)


def test_bad_builds_are_refused():
    with pytest.raises(ValueError, match="batch_size"):
        build_echo_model("concat", 3, stateful=True)
    with pytest.raises(ValueError, match="one of stateful and explicit_state"):
        build_echo_model("concat", 3, batch_size=2, stateful=True, explicit_state=True)
