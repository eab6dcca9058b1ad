"""In-graph checks of a signature's inputs, run before the model sees them.

A server feeds request tensors straight to the graph without checking them against the
signature's shapes, so each signature checks its own inputs (rank and inner shape, empty
batch, NaN or infinite values, value range) and fails with a message that names the input,
instead of an error from deep inside the graph.

A check is a function that returns ``(condition, message data)``: a scalar bool tensor and
the items ``tf.debugging.Assert`` prints when it is false. :func:`after` runs a list of them
in order and returns the inputs made to depend on them.
"""

from __future__ import annotations

import tensorflow as tf


def assert_in_order(checks) -> tf.Operation:
    """Assert ops for ``checks``, each computed and run only after the previous one passed.

    Each check is called under a control dependency on the previous assert, so that a check
    may assume what the earlier ones established: a reduction over the axes the signature
    declares must not run on a tensor of another rank before the shape check has refused it.
    """
    previous = []
    for check in checks:
        with tf.control_dependencies(previous):
            condition, data = check()
            previous = [tf.debugging.Assert(condition, data, summarize=8)]
    return previous[0]


def after(checks, *tensors) -> list[tf.Tensor]:
    """``tensors`` that depend on the assert ops of ``checks``, so nothing runs before them."""
    with tf.control_dependencies([assert_in_order(checks)]):
        return [tf.identity(tensor) for tensor in tensors]


def has_shape(tensor, name: str, expected: tuple, described: str):
    """(condition, data) that ``tensor`` has ``expected``'s rank and its non-None sizes.

    ``described`` is the shape as the message names it, ``[batch, 28, 28]``.
    """
    # Raw ops: tf.rank (and tf.shape, where all sizes are known) fold to constants taken from
    # the signature, but a server feeds whatever the request holds: check the real shape.
    actual = tf.raw_ops.Shape(input=tensor)
    rank_ok = tf.equal(tf.raw_ops.Rank(input=tensor), len(expected))
    # Pad with -1 so that indexing is safe whatever the rank.
    padded = tf.concat([actual, tf.fill([len(expected)], -1)], axis=0)
    conditions = [rank_ok] + [
        tf.equal(padded[axis], size) for axis, size in enumerate(expected) if size is not None
    ]
    # The shape as text, "[2, 784]": the Assert would print a one-element shape as a number.
    shape_text = tf.strings.join(
        ["[", tf.strings.reduce_join(tf.strings.as_string(actual), separator=", "), "]"]
    )
    message = f"{name} must have shape {described}; got"
    return tf.reduce_all(tf.stack(conditions)), [message, shape_text]


def not_empty(tensor, message: str):
    """(condition, data) that ``tensor`` holds at least one value; ``message`` says what to send."""
    return tf.size(tensor) > 0, [message]


def in_range(tensor, name: str, low, high, described: str):
    """(condition, data) that every value of ``tensor`` lies in [low, high]."""
    return (
        tf.reduce_all((tensor >= low) & (tensor <= high)),
        [
            f"{name} must be {described}; got values from",
            tf.reduce_min(tensor),
            "to",
            tf.reduce_max(tensor),
        ],
    )


def finite(tensor, name: str):
    """(condition, data) that every value of ``tensor`` is a finite number (no NaN, no ±inf)."""
    is_finite = tf.math.is_finite(tensor)
    bad = tf.size(is_finite) - tf.math.count_nonzero(is_finite, dtype=tf.int32)
    return tf.reduce_all(is_finite), [
        f"{name} must hold finite numbers; got",
        bad,
        "NaN or inf values",
    ]
