"""The echo-dependency series and the tutorial's batching (r2rt, "RNNs in TensorFlow I").

The series. X is a binary series, X_t ~ Bernoulli(0.5). The target Y_t is drawn with

    P(Y_t = 1) = 0.5 + 0.5 * [X_{t-3} = 1] - 0.25 * [X_{t-8} = 1],

so Y "echoes" X three and eight steps back. A worked example, with X_{t-3} and X_{t-8}:

    X_{t-3}  X_{t-8}  P(Y_t = 1)
       0        0        0.50
       0        1        0.25
       1        0        1.00
       1        1        0.75

The tutorial indexes ``X[t-3]`` with Python indexing, so for t < 3 (t < 8) the lag wraps
around to the end of the series; :func:`generate_series` does the same (``np.roll``).

What a model can reach. A model that knows some of the lags predicts P(Y_t = 1 | those
lags), the average of the table's rows that agree with them; its expected cross-entropy is
the mean binary entropy of that prediction. :func:`expected_losses` computes the three
levels from :data:`ECHO_RULE`: nothing learned (0.6616 nats), the t-3 dependency
(0.5192), both (0.4544).

The batching ("TF-style" truncated BPTT). The series of length N is cut into
``batch_size`` contiguous rows of L = N // batch_size steps (row i is X[i*L:(i+1)*L]).
An epoch walks the rows left to right in windows of ``num_steps``: batch k holds columns
[k*num_steps, (k+1)*num_steps) of every row, so row i of batch k+1 continues row i of
batch k and a state carried from one batch to the next is the state of the same stream.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class EchoRule:
    """P(Y_t = 1) = base + sum of weight * [X_{t-lag} = 1] over (lag, weight) pairs."""

    base: float
    terms: tuple[tuple[int, float], ...]

    def probability(self, lagged: np.ndarray) -> np.ndarray:
        """P(Y=1) for lagged values (..., len(terms)) of 0/1, one column per term."""
        weights = np.array([weight for _, weight in self.terms])
        return self.base + np.asarray(lagged, dtype=np.float64) @ weights


# The tutorial's rule: Y echoes X three steps back (+0.5) and eight steps back (-0.25).
ECHO_RULE = EchoRule(base=0.5, terms=((3, 0.5), (8, -0.25)))


def generate_series(
    length: int, rng: np.random.Generator, rule: EchoRule = ECHO_RULE
) -> tuple[np.ndarray, np.ndarray]:
    """Draws (X, Y), two int32 arrays of shape (length,), lags wrapping around at the start."""
    if length <= max(lag for lag, _ in rule.terms):
        raise ValueError(f"series length must exceed the longest lag, got {length}")
    inputs = rng.integers(0, 2, size=length, dtype=np.int32)
    # np.roll(x, lag)[t] == x[t - lag], with x[-1] the last element: the tutorial's wrap.
    lagged = np.stack([np.roll(inputs, lag) for lag, _ in rule.terms], axis=-1)
    targets = (rng.random(length) < rule.probability(lagged)).astype(np.int32)
    return inputs, targets


def binary_entropy(probability) -> np.ndarray:
    """H(p) = -p ln p - (1-p) ln(1-p) in nats, with 0 ln 0 = 0."""
    p = np.asarray(probability, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -p * np.log(p) - (1 - p) * np.log(1 - p)
    return np.where((p == 0) | (p == 1), 0.0, terms)


def expected_loss(known_lags: tuple[int, ...], rule: EchoRule = ECHO_RULE) -> float:
    """Expected cross-entropy (nats) of the best model that knows only ``known_lags``.

    The lagged values are independent fair coins, so the best prediction given the known
    lags is the mean of P(Y=1) over the unknown ones, and the loss is the mean binary
    entropy of that prediction over the known lags' values.
    """
    lags = [lag for lag, _ in rule.terms]
    unknown = [lag for lag in known_lags if lag not in lags]
    if unknown:
        raise ValueError(f"the rule has no lag {unknown[0]}; its lags are {lags}")
    # All 2**len(lags) equally likely values of the lagged inputs: (combos, lags).
    combos = np.array(list(itertools.product((0, 1), repeat=len(lags))))
    probability = rule.probability(combos)
    known = [lags.index(lag) for lag in known_lags]
    # Group the combinations by the known lags' values; predict each group's mean.
    keys = combos[:, known] @ (2 ** np.arange(len(known))) if known else np.zeros(len(combos))
    losses = [binary_entropy(probability[keys == key].mean()) for key in np.unique(keys)]
    return float(np.mean(losses))


def expected_losses(rule: EchoRule = ECHO_RULE) -> dict[str, float]:
    """The three reference levels: nothing, the first lag only, every lag."""
    lags = tuple(lag for lag, _ in rule.terms)
    return {
        "nothing": expected_loss((), rule),
        f"t-{lags[0]} only": expected_loss(lags[:1], rule),
        "both": expected_loss(lags, rule),
    }


def epoch_windows(
    inputs: np.ndarray, targets: np.ndarray, batch_size: int, num_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's batching of one epoch's series.

    Args:
      inputs, targets: (N,) arrays.
      batch_size: number of contiguous rows (streams).
      num_steps: window length.

    Returns:
      (inputs, targets), each (num_batches, batch_size, num_steps) with
      num_batches = (N // batch_size) // num_steps; ``[k, i]`` is columns
      [k*num_steps, (k+1)*num_steps) of row i. Steps that do not fill a whole row or
      window are dropped, as in the tutorial.
    """
    row_length = len(inputs) // batch_size
    num_batches = row_length // num_steps
    if num_batches == 0:
        raise ValueError(
            f"a series of {len(inputs)} steps in {batch_size} rows has rows of {row_length}"
            f" steps, shorter than one window of {num_steps}"
        )

    def cut(series):
        rows = np.asarray(series)[: batch_size * row_length].reshape(batch_size, row_length)
        rows = rows[:, : num_batches * num_steps].reshape(batch_size, num_batches, num_steps)
        return np.ascontiguousarray(rows.transpose(1, 0, 2))

    return cut(inputs), cut(targets)


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """The generator of epoch ``epoch``'s series: a fresh, reproducible series every epoch."""
    return np.random.default_rng([seed, epoch])
