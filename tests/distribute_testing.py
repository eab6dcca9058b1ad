"""Helpers of test_distribute.py and test_survive.py, and the worker process of the first's
multi-worker test.

As a script, ``python tests/distribute_testing.py OUT_DIR MNIST_FLAGS...`` is one worker of a
MultiWorkerMirroredStrategy cluster (TF_CONFIG in its environment): it runs the real MNIST
command (``python -m tfrnn.experiments.mnist --strategy multi_worker MNIST_FLAGS...``), then
trains a few echo windows in stateful mode under the strategy that command made, and saves
both results to ``OUT_DIR/mnist_<task>.npz`` and ``OUT_DIR/echo_<task>.npz`` so that the test
can compare the workers with each other and with one process.
"""

import json
import os
import runpy
import socket
import sys

import keras
import numpy as np
import tensorflow as tf

from tfrnn.data.echo import epoch_rng, epoch_windows, generate_series
from tfrnn.engine import distribute
from tfrnn.tasks.echo import tbptt

ECHO_BATCH, ECHO_STEPS, ECHO_STATE = 4, 3, 3


def train_echo_windows(mode: str, strategy: tf.distribute.Strategy, *, jit_compile: bool):
    """Ten windows of 4 LSTM streams in ``mode`` under ``strategy``, in two runner calls.

    Returns (per-window losses (10,), the carried state of every stream after each call
    (two lists of (4, 3) arrays, [h, c]), the final weights).
    """
    keras.utils.set_random_seed(0)
    with strategy.scope():
        model = tbptt.build_training_model(
            mode,
            "lstm",
            ECHO_STATE,
            distribute.per_replica_batch_size(strategy, ECHO_BATCH),
        )
        optimizer = keras.optimizers.Adagrad(0.1)
    run = tbptt.make_window_runner(
        mode, model, optimizer, strategy=strategy, jit_compile=jit_compile
    )
    inputs, targets = epoch_windows(*generate_series(120, epoch_rng(0, 0)), ECHO_BATCH, ECHO_STEPS)
    carry = tbptt.start_epoch(mode, model, ECHO_BATCH, ECHO_STEPS, strategy)
    losses, states = [], []
    for part in (slice(0, 5), slice(5, 10)):  # the state also crosses a call boundary
        part_losses, carry = run(
            distribute.distribute_rows(strategy, inputs[part], axis=1),
            distribute.distribute_rows(strategy, targets[part], axis=1),
            carry,
        )
        losses.append(np.asarray(part_losses))
        states.append([np.asarray(s) for s in tbptt.carried_state(mode, model, carry, strategy)])
    return np.concatenate(losses), states, model.get_weights()


def free_ports(count: int) -> list[int]:
    """``count`` TCP ports on 127.0.0.1 free a moment ago, for a cluster's workers."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _worker(out_dir: str, mnist_flags: list[str]) -> None:
    from tfrnn.tasks.mnist import train as mnist_train

    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    train_and_evaluate, used = mnist_train.train_and_evaluate, {}

    def recording(config, workdir, **kwargs):
        result = train_and_evaluate(config, workdir, **kwargs)
        used["strategy"] = kwargs["strategy"]
        np.savez(os.path.join(out_dir, f"mnist_{task}.npz"), *result.model.get_weights())
        return result

    mnist_train.train_and_evaluate = recording
    sys.argv = ["mnist", "--strategy", "multi_worker", *mnist_flags]
    try:
        runpy.run_module("tfrnn.experiments.mnist", run_name="__main__")
    except SystemExit as exit_status:  # absl's app.run always exits
        if exit_status.code:
            raise
    losses, states, weights = train_echo_windows("stateful", used["strategy"], jit_compile=False)
    np.savez(
        os.path.join(out_dir, f"echo_{task}.npz"),
        losses=losses,
        **{f"state_{call}_{i}": s for call, pair in enumerate(states) for i, s in enumerate(pair)},
        **{f"weight_{i}": w for i, w in enumerate(weights)},
    )


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2:])
