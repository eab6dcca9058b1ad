"""Tests of tfrnn.data.echo: the generating rule, its expected losses, the batching."""

import numpy as np
import pytest

from tfrnn.data.echo import (
    ECHO_RULE,
    EchoRule,
    binary_entropy,
    epoch_rng,
    epoch_windows,
    expected_loss,
    expected_losses,
    generate_series,
)


def test_expected_losses_are_the_tutorials():
    losses = expected_losses()
    assert list(losses) == ["nothing", "t-3 only", "both"]
    np.testing.assert_allclose(list(losses.values()), [0.6616, 0.5192, 0.4544], atol=1e-4)


def _empirical_conditional_entropy(inputs, targets, lags):
    # Mean over the groups of known lagged values of H(empirical P(Y=1 | group)),
    # weighted by group frequency.
    keys = np.zeros(len(inputs), dtype=np.int64)
    for position, lag in enumerate(lags):
        keys += np.roll(inputs, lag).astype(np.int64) << position
    total = 0.0
    for key in np.unique(keys):
        in_group = keys == key
        total += in_group.mean() * binary_entropy(targets[in_group].mean())
    return total


@pytest.mark.parametrize("known_lags", [(), (3,), (3, 8)])
def test_expected_loss_matches_the_entropy_of_a_generated_series(known_lags):
    inputs, targets = generate_series(400_000, np.random.default_rng(1))
    empirical = _empirical_conditional_entropy(inputs, targets, known_lags)
    assert abs(empirical - expected_loss(known_lags)) < 3e-3


def test_the_target_probability_follows_the_table():
    inputs, targets = generate_series(400_000, np.random.default_rng(2))
    lag3, lag8 = np.roll(inputs, 3), np.roll(inputs, 8)
    for x3, x8, probability in [(0, 0, 0.5), (0, 1, 0.25), (1, 0, 1.0), (1, 1, 0.75)]:
        rows = (lag3 == x3) & (lag8 == x8)
        assert abs(targets[rows].mean() - probability) < 0.01


def test_lags_wrap_around_at_the_start():
    # A rule with P(Y=1) = X_{t-3} exactly, so Y is X shifted by three, wrapped.
    echo = EchoRule(base=0.0, terms=((3, 1.0),))
    inputs, targets = generate_series(50, np.random.default_rng(3), echo)
    np.testing.assert_array_equal(targets[3:], inputs[:-3])
    np.testing.assert_array_equal(targets[:3], inputs[-3:])


def test_series_are_seeded_and_fresh_every_epoch():
    first, _ = generate_series(1000, epoch_rng(7, 0))
    again, _ = generate_series(1000, epoch_rng(7, 0))
    next_epoch, _ = generate_series(1000, epoch_rng(7, 1))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, next_epoch)
    assert first.dtype == np.int32 and set(np.unique(first)) == {0, 1}


def test_windows_continue_each_row():
    series = np.arange(2 * 11)  # 2 rows of 11 steps; windows of 3 drop each row's last 2
    inputs, targets = epoch_windows(series, series + 100, batch_size=2, num_steps=3)
    assert inputs.shape == (3, 2, 3)
    np.testing.assert_array_equal(inputs[0], [[0, 1, 2], [11, 12, 13]])
    np.testing.assert_array_equal(inputs[1], [[3, 4, 5], [14, 15, 16]])
    np.testing.assert_array_equal(inputs[2], [[6, 7, 8], [17, 18, 19]])
    np.testing.assert_array_equal(targets, inputs + 100)
    # Row i of window k+1 starts where row i of window k ended.
    np.testing.assert_array_equal(inputs[1:, :, 0], inputs[:-1, :, -1] + 1)


def test_too_short_series_name_the_problem():
    with pytest.raises(ValueError, match="shorter than one window"):
        epoch_windows(np.arange(10), np.arange(10), batch_size=5, num_steps=3)
    with pytest.raises(ValueError, match="longest lag"):
        generate_series(8, np.random.default_rng(0), ECHO_RULE)
    with pytest.raises(ValueError, match="no lag 4"):
        expected_loss((4,))
