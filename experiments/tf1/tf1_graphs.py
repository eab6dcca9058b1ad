"""The tutorials' own TF1 graphs, built with the TF1 API, to check tfrnn against the originals.

Each graph is the tutorial's program as it was written for TF 1.0 (``tf.contrib.rnn``), in
``tf.compat.v1`` graph mode: placeholders, a ``Session``, ``nn.static_rnn`` /
``nn.dynamic_rnn``, the legacy ``BasicRNNCell`` / ``BasicLSTMCell``, ``train.Saver``. Sizes are
parameters, so the same builders make the tutorials' full-size runs and the small graphs of
the lockstep tests (``tests/test_convert_lockstep.py``).

The legacy cells need ``tf_keras`` (requirements-dev.txt) and ``TF_USE_LEGACY_KERAS=1`` set
before TensorFlow is imported, which this script does itself: run it as its own process::

    python experiments/tf1/tf1_graphs.py echo --graph handbuilt --num_steps 5 --state_size 4
    python experiments/tf1/tf1_graphs.py mnist --graph C2 --data_dir /data/mnist  # IDX files
    python experiments/tf1/tf1_graphs.py mnist-epochs --graph C2 --data_dir /data/mnist --epochs 2
    python experiments/tf1/tf1_graphs.py lockstep DIR      # DIR/jobs.json, see run_lockstep

Graphs: ``handbuilt``, ``static``, ``dynamic`` (tutorial A: the hand-built cell, and
``BasicRNNCell`` with ``static_rnn`` or ``dynamic_rnn``), ``C1``, ``C2``, ``C3`` (MNIST row by
row). Every graph has the variable names of the tutorial's checkpoints.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import struct
import sys
import time
import warnings

# Both before TensorFlow's first import: the legacy cells exist only with legacy Keras.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf1 = tf.compat.v1
ECHO_GRAPHS = ("handbuilt", "static", "dynamic")
MNIST_GRAPHS = ("C1", "C2", "C3")
NUM_CLASSES_ECHO = 2
ROWS = 28  # MNIST: 28 rows of 28 pixels
NUM_DIGITS = 10


class Graph:
    """The tensors a training loop needs: feeds, outputs, loss and the training op."""

    def __init__(self, **tensors):
        self.__dict__.update(tensors)


# --- Tutorial A: echo dependencies -------------------------------------------------------


def echo_graph(graph: str, batch_size: int, num_steps: int, state_size: int, learning_rate=0.1):
    """r2rt's network: one-hot symbols -> tanh RNN -> softmax on every step, Adagrad.

    ``init_state`` is a zeros tensor that training feeds with the previous window's final
    state (the tutorial's TF-style truncated backpropagation).
    """
    x = tf1.placeholder(tf.int32, [batch_size, num_steps], name="input_placeholder")
    y = tf1.placeholder(tf.int32, [batch_size, num_steps], name="labels_placeholder")
    init_state = tf.zeros([batch_size, state_size])
    x_one_hot = tf.one_hot(x, NUM_CLASSES_ECHO)
    if graph == "handbuilt":
        with tf1.variable_scope("rnn_cell"):
            tf1.get_variable("W", [NUM_CLASSES_ECHO + state_size, state_size])
            tf1.get_variable("b", [state_size], initializer=tf1.constant_initializer(0.0))

        def rnn_cell(rnn_input, state):
            with tf1.variable_scope("rnn_cell", reuse=True):
                weight = tf1.get_variable("W", [NUM_CLASSES_ECHO + state_size, state_size])
                bias = tf1.get_variable("b", [state_size])
            return tf.tanh(tf.matmul(tf.concat([rnn_input, state], 1), weight) + bias)

        state, rnn_outputs = init_state, []
        for rnn_input in tf.unstack(x_one_hot, axis=1):
            state = rnn_cell(rnn_input, state)
            rnn_outputs.append(state)
        final_state = rnn_outputs[-1]
    else:
        cell = tf1.nn.rnn_cell.BasicRNNCell(state_size)
        if graph == "static":
            rnn_outputs, final_state = tf1.nn.static_rnn(
                cell, tf.unstack(x_one_hot, axis=1), initial_state=init_state
            )
        else:
            outputs, final_state = tf1.nn.dynamic_rnn(cell, x_one_hot, initial_state=init_state)
            rnn_outputs = tf.unstack(outputs, axis=1)
    with tf1.variable_scope("softmax"):
        weight = tf1.get_variable("W", [state_size, NUM_CLASSES_ECHO])
        bias = tf1.get_variable("b", [NUM_CLASSES_ECHO], initializer=tf1.constant_initializer(0.0))
    logits = tf.stack([tf.matmul(output, weight) + bias for output in rnn_outputs], axis=1)
    total_loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits)
    )
    train_step = tf1.train.AdagradOptimizer(learning_rate).minimize(total_loss)
    return Graph(
        x=x,
        y=y,
        init_state=init_state,
        final_state=final_state,
        logits=logits,
        loss=total_loss,
        train_step=train_step,
    )


def echo_series(size: int, rng: np.random.RandomState):
    """The tutorial's data: X ~ Bernoulli(0.5), P(Y_t = 1) = 0.5 + 0.5 X_{t-3} - 0.25 X_{t-8},
    the lags wrapping around to the end of the series as Python's X[t - 3] does."""
    x = rng.choice(2, size=(size,))
    threshold = 0.5 + 0.5 * (np.roll(x, 3) == 1) - 0.25 * (np.roll(x, 8) == 1)
    y = (rng.rand(size) <= threshold).astype(np.int32)
    return x.astype(np.int32), y


def echo_windows(x, y, batch_size: int, num_steps: int):
    """Yields (x, y) windows: batch_size contiguous rows, walked num_steps columns at a time."""
    partition = len(x) // batch_size
    data_x = x[: batch_size * partition].reshape(batch_size, partition)
    data_y = y[: batch_size * partition].reshape(batch_size, partition)
    for index in range(partition // num_steps):
        columns = slice(index * num_steps, (index + 1) * num_steps)
        yield data_x[:, columns], data_y[:, columns]


def run_echo(args) -> None:
    """Trains like the tutorial: a fresh series each epoch, the state fed back window to
    window, the average loss printed every 100 windows."""
    tf1.set_random_seed(args.seed)
    rng = np.random.RandomState(args.seed)
    net = echo_graph(args.graph, args.batch_size, args.num_steps, args.state_size)
    curve = []
    start = time.perf_counter()
    with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        for epoch in range(args.epochs):
            state = np.zeros((args.batch_size, args.state_size), np.float32)
            running = 0.0
            windows = echo_windows(*echo_series(args.size, rng), args.batch_size, args.num_steps)
            for step, (x, y) in enumerate(windows, start=1):
                loss, state, _ = session.run(
                    [net.loss, net.final_state, net.train_step],
                    {net.x: x, net.y: y, net.init_state: state},
                )
                running += float(loss)
                if step % 100 == 0:
                    curve.append(running / 100)
                    print(f"epoch {epoch + 1} step {step}: average loss {running / 100:.4f}")
                    running = 0.0
        seconds = time.perf_counter() - start
        _save(session, args.out)
    summary = {
        "graph": args.graph,
        "num_steps": args.num_steps,
        "state_size": args.state_size,
        "epochs": args.epochs,
        "final_loss": curve[-1],
        "last_epoch_loss": float(np.mean(curve[-len(curve) // args.epochs :])),
        "seconds": round(seconds, 3),
        "curve": curve,
    }
    print(json.dumps({k: v for k, v in summary.items() if k != "curve"}))
    _write_json(args.out, "summary.json", summary)


# --- Tutorials C1-C3: MNIST row by row ----------------------------------------------------


def mnist_graph(
    graph: str, units: int, learning_rate: float, batch_size: int = 128, forget_bias: float = 1.0
):
    """The row-by-row LSTM classifier of C1, C2 or C3; ``x`` is (batch, 28, 28) in [0, 1]
    (C1 fed flat (batch, 784) images and reshaped them; the reshape is here too).

    ``batch_size`` matters for C3 only, whose initial state is ``zero_state(batch_size)``.
    ``forget_bias`` is 1 in every tutorial (C1 and C3 by default, C2 explicitly); another
    value tests the converter's ``--forget_bias``.
    """
    y = tf1.placeholder(tf.float32, [None, NUM_DIGITS])  # one-hot, as read_data_sets gave
    if graph == "C1":
        x = tf1.placeholder(tf.float32, [None, ROWS * ROWS])
        weight = tf.Variable(tf1.truncated_normal([units, NUM_DIGITS], stddev=0.1))
        bias = tf.Variable(tf.constant(0.1, shape=[NUM_DIGITS]))
        rows = tf.reshape(x, [-1, ROWS, ROWS])
        cell = tf1.nn.rnn_cell.BasicLSTMCell(units, forget_bias=forget_bias)
        _, final_state = tf1.nn.dynamic_rnn(cell, rows, dtype=tf.float32)
        logits = tf.matmul(final_state[1], weight) + bias
    elif graph == "C2":
        x = tf1.placeholder(tf.float32, [None, ROWS, ROWS])
        out_weights = tf.Variable(tf1.random_normal([units, NUM_DIGITS]))
        out_bias = tf.Variable(tf1.random_normal([NUM_DIGITS]))
        inputs = tf.unstack(x, ROWS, 1)
        lstm_layer = tf1.nn.rnn_cell.BasicLSTMCell(units, forget_bias=forget_bias)
        outputs, _ = tf1.nn.static_rnn(lstm_layer, inputs, dtype="float32")
        logits = tf.matmul(outputs[-1], out_weights) + out_bias
    else:
        x = tf1.placeholder(tf.float32, [None, ROWS, ROWS])
        weights = {
            "in": tf.Variable(tf1.random_normal([ROWS, units])),
            "out": tf.Variable(tf1.random_normal([units, NUM_DIGITS])),
        }
        biases = {
            "in": tf.Variable(tf.constant(0.1, shape=[units])),
            "out": tf.Variable(tf.constant(0.1, shape=[NUM_DIGITS])),
        }
        x_in = tf.matmul(tf.reshape(x, [-1, ROWS]), weights["in"]) + biases["in"]
        x_in = tf.reshape(x_in, [-1, ROWS, units])
        cell = tf1.nn.rnn_cell.BasicLSTMCell(units, forget_bias=forget_bias, state_is_tuple=True)
        init_state = cell.zero_state(batch_size, dtype=tf.float32)
        _, final_state = tf1.nn.dynamic_rnn(cell, x_in, initial_state=init_state, time_major=False)
        logits = tf.matmul(final_state[1], weights["out"]) + biases["out"]
    loss = tf.reduce_mean(tf.nn.softmax_cross_entropy_with_logits(labels=y, logits=logits))
    train_step = tf1.train.AdamOptimizer(learning_rate).minimize(loss)
    correct = tf.equal(tf.argmax(logits, 1), tf.argmax(y, 1))
    return Graph(
        x=x,
        y=y,
        logits=logits,
        loss=loss,
        train_step=train_step,
        accuracy=tf.reduce_mean(tf.cast(correct, tf.float32)),
        flat_input=graph == "C1",
        # C3's zero_state fixes its batch: it is fed exactly batch_size images at a time.
        fixed_batch=batch_size if graph == "C3" else None,
    )


def _feed_images(net, images):
    return images.reshape(len(images), -1) if net.flat_input else images.reshape(-1, ROWS, ROWS)


def _read_idx(data_dir: str, name: str) -> np.ndarray:
    path = os.path.join(data_dir, name + ".gz")
    opener = gzip.open if os.path.exists(path) else open
    with opener(path if os.path.exists(path) else os.path.join(data_dir, name), "rb") as handle:
        content = handle.read()
    dims = content[3]
    shape = struct.unpack(f">{dims}i", content[4 : 4 + 4 * dims])
    return np.frombuffer(content, np.uint8, offset=4 + 4 * dims).reshape(shape)


class DataSet:
    """``input_data``'s DataSet: float images in [0, 1], one-hot labels, and ``next_batch``,
    which shuffles before the first epoch and again at every epoch's end, where the last
    partial batch is completed from the start of the new order."""

    def __init__(self, images, labels, rng: np.random.RandomState):
        self.images = images.reshape(len(images), -1).astype(np.float32) / 255.0
        self.labels = np.eye(NUM_DIGITS, dtype=np.float32)[labels]
        self.num_examples = len(images)
        self._rng, self._index, self._epochs = rng, 0, 0

    def _shuffle(self):
        order = self._rng.permutation(self.num_examples)
        self.images, self.labels = self.images[order], self.labels[order]

    def next_batch(self, batch_size: int):
        start = self._index
        if self._epochs == 0 and start == 0:
            self._shuffle()
        if start + batch_size <= self.num_examples:
            self._index += batch_size
            return self.images[start : self._index], self.labels[start : self._index]
        self._epochs += 1
        rest_images, rest_labels = self.images[start:], self.labels[start:]
        self._shuffle()
        self._index = batch_size - len(rest_images)
        return (
            np.concatenate([rest_images, self.images[: self._index]]),
            np.concatenate([rest_labels, self.labels[: self._index]]),
        )


def read_data_sets(data_dir: str, seed: int, validation_size: int = 5000):
    """(train, validation, test) as ``input_data.read_data_sets(one_hot=True)`` made them:
    the FIRST ``validation_size`` training images are the validation set."""
    rng = np.random.RandomState(seed)
    train_images = _read_idx(data_dir, "train-images-idx3-ubyte")
    train_labels = _read_idx(data_dir, "train-labels-idx1-ubyte")
    test = DataSet(
        _read_idx(data_dir, "t10k-images-idx3-ubyte"),
        _read_idx(data_dir, "t10k-labels-idx1-ubyte"),
        rng,
    )
    validation = DataSet(train_images[:validation_size], train_labels[:validation_size], rng)
    train = DataSet(train_images[validation_size:], train_labels[validation_size:], rng)
    return train, validation, test


def _accuracy(session, net, data: DataSet, count: int) -> float:
    """Accuracy on the first ``count`` images; in batches of exactly the graph's fixed batch
    (the last one padded, the padding not counted) when it has one, else at once."""
    images, labels = data.images[:count], data.labels[:count]
    batch_size = net.fixed_batch
    if batch_size is None:
        return float(session.run(net.accuracy, {net.x: _feed_images(net, images), net.y: labels}))
    correct = 0
    for start in range(0, count, batch_size):
        batch = images[start : start + batch_size]
        padded = np.concatenate([batch, np.zeros((batch_size - len(batch), batch.shape[1]))])
        logits = session.run(net.logits, {net.x: _feed_images(net, padded)})
        predicted = np.argmax(logits[: len(batch)], 1)
        correct += int(np.sum(predicted == np.argmax(labels[start : start + batch_size], 1)))
    return correct / count


# The tutorials' settings: (units, batch, Adam rate, training steps or None for epochs).
MNIST_RUNS = {
    "C1": (100, 100, 1e-4, None),
    "C2": (128, 128, 1e-3, 800),
    "C3": (128, 128, 1e-3, 1000),
}
C1_EPOCHS = 11


def run_mnist(args) -> None:
    """Trains like the tutorial and reports test accuracy (C1 after every epoch)."""
    units, batch_size, learning_rate, steps = MNIST_RUNS[args.graph]
    tf1.set_random_seed(args.seed)
    train, _, test = read_data_sets(args.data_dir, args.seed)
    net = mnist_graph(args.graph, units, learning_rate, batch_size)
    steps_per_epoch = train.num_examples // batch_size
    total = steps or C1_EPOCHS * steps_per_epoch
    record = {"graph": args.graph, "steps": total, "epochs": []}
    start = time.perf_counter()
    with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        for step in range(1, total + 1):
            images, labels = train.next_batch(batch_size)
            session.run(net.train_step, {net.x: _feed_images(net, images), net.y: labels})
            if args.graph == "C1" and step % steps_per_epoch == 0:
                accuracy = _accuracy(session, net, test, test.num_examples)
                record["epochs"].append(accuracy)
                print(f"epoch {step // steps_per_epoch}: test accuracy {100 * accuracy:.2f}%")
        record["train_seconds"] = round(time.perf_counter() - start, 1)
        record["test_accuracy"] = _accuracy(session, net, test, test.num_examples)
        record["test_accuracy_first_128"] = _accuracy(session, net, test, 128)
        _save(session, args.out)
    print(json.dumps(record))
    _write_json(args.out, "summary.json", record)


def run_mnist_epochs(args) -> None:
    """The TF1 side of ``make bench`` (:mod:`tfrnn.bench.suite`): ``--epochs`` whole epochs
    of the tutorial's graph, batch and optimiser, each ending with one pass over the test
    images as the tutorial made it (all at once; C3 in padded batches of its fixed size), as
    each epoch of tfrnn's loop ends with one. Prints one JSON line: each epoch's seconds,
    test pass included."""
    units, batch_size, learning_rate, _ = MNIST_RUNS[args.graph]
    tf1.set_random_seed(args.seed)
    train, _, test = read_data_sets(args.data_dir, args.seed)
    net = mnist_graph(args.graph, units, learning_rate, batch_size)
    steps_per_epoch = train.num_examples // batch_size
    epoch_seconds, accuracies = [], []
    with tf1.Session() as session:
        session.run(tf1.global_variables_initializer())
        for _ in range(args.epochs):
            start = time.perf_counter()
            for _ in range(steps_per_epoch):
                images, labels = train.next_batch(batch_size)
                session.run(net.train_step, {net.x: _feed_images(net, images), net.y: labels})
            accuracies.append(_accuracy(session, net, test, test.num_examples))
            epoch_seconds.append(time.perf_counter() - start)
    record = {
        "graph": args.graph,
        "batch_size": batch_size,
        "steps_per_epoch": steps_per_epoch,
        "epoch_seconds": epoch_seconds,
        "test_accuracy": accuracies,
    }
    print(json.dumps(record))


# --- Lockstep: the TF1 side of tests/test_convert_lockstep.py ----------------------------


def _lockstep_job(job: dict, directory: str) -> None:
    """One graph: save its initial checkpoint, train it on the given batches, save again.

    ``job``: ``name``, ``graph``, sizes (``state_size``, or ``units``), ``learning_rate``
    (MNIST; echo uses the tutorial's 0.1), optionally ``forget_bias``, ``seed``, and ``data``:
    an .npz with ``train_inputs`` and ``train_targets`` (steps, batch, ...) and
    ``eval_inputs`` (batch, ...), the batch the same (C3 and the echo graphs have a fixed
    one). Writes ``DIR/<name>/initial`` and ``final`` checkpoints, and ``results.npz`` with
    each step's loss and the eval logits before and after training.
    """
    data = np.load(os.path.join(directory, job["data"]))
    inputs, targets, eval_inputs = data["train_inputs"], data["train_targets"], data["eval_inputs"]
    echo = job["graph"] in ECHO_GRAPHS
    with tf.Graph().as_default():
        tf1.set_random_seed(job["seed"])
        if echo:
            state_size = job["state_size"]
            net = echo_graph(job["graph"], inputs.shape[1], inputs.shape[2], state_size)
        else:
            net = mnist_graph(
                job["graph"],
                job["units"],
                job["learning_rate"],
                inputs.shape[1],
                job.get("forget_bias", 1.0),
            )
        saver = tf1.train.Saver()
        out = os.path.join(directory, job["name"])
        os.makedirs(out, exist_ok=True)
        with tf1.Session() as session:
            session.run(tf1.global_variables_initializer())
            saver.save(session, os.path.join(out, "initial"), write_meta_graph=False)
            logits_initial = session.run(net.logits, _eval_feed(net, eval_inputs, echo))
            losses = []
            state = np.zeros((inputs.shape[1], job.get("state_size", 0)), np.float32)
            for step_inputs, step_targets in zip(inputs, targets, strict=True):
                if echo:  # the previous window's final state is this one's initial state
                    feed = {net.x: step_inputs, net.y: step_targets, net.init_state: state}
                    loss, state, _ = session.run([net.loss, net.final_state, net.train_step], feed)
                else:
                    labels = np.eye(NUM_DIGITS, dtype=np.float32)[step_targets]
                    feed = {net.x: _feed_images(net, step_inputs), net.y: labels}
                    loss, _ = session.run([net.loss, net.train_step], feed)
                losses.append(loss)
            saver.save(session, os.path.join(out, "final"), write_meta_graph=False)
            logits_final = session.run(net.logits, _eval_feed(net, eval_inputs, echo))
    np.savez(
        os.path.join(out, "results.npz"),
        losses=np.array(losses),
        logits_initial=logits_initial,
        logits_final=logits_final,
    )


def _eval_feed(net, eval_inputs, echo: bool) -> dict:
    # Echo: from the zero state (init_state's own value when not fed).
    return {net.x: eval_inputs} if echo else {net.x: _feed_images(net, eval_inputs)}


def run_lockstep(args) -> None:
    """Runs every job of ``DIR/jobs.json`` (a list of jobs, see :func:`_lockstep_job`)."""
    with open(os.path.join(args.directory, "jobs.json")) as handle:
        jobs = json.load(handle)
    for job in jobs:
        _lockstep_job(job, args.directory)


# --- Command line -------------------------------------------------------------------------


def _save(session, out: str | None) -> None:
    if out:
        os.makedirs(out, exist_ok=True)
        tf1.train.Saver().save(session, os.path.join(out, "model.ckpt"), write_meta_graph=False)


def _write_json(out: str | None, name: str, content) -> None:
    if out:
        with open(os.path.join(out, name), "w") as handle:
            json.dump(content, handle, indent=1)


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    echo = commands.add_parser("echo", help="tutorial A, as the tutorial trained it")
    echo.add_argument("--graph", choices=ECHO_GRAPHS, default="handbuilt")
    echo.add_argument("--num_steps", type=int, default=5)
    echo.add_argument("--state_size", type=int, default=4)
    echo.add_argument("--epochs", type=int, default=1)
    echo.add_argument("--batch_size", type=int, default=200)
    echo.add_argument("--size", type=int, default=1_000_000, help="steps of each epoch's series")
    mnist = commands.add_parser("mnist", help="tutorial C1, C2 or C3, as the tutorial trained it")
    mnist.add_argument("--graph", choices=MNIST_GRAPHS, required=True)
    mnist.add_argument("--data_dir", required=True, help="folder of the four MNIST IDX files")
    for command in (echo, mnist):
        command.add_argument("--out", help="folder for the final checkpoint and summary.json")
    epochs = commands.add_parser(
        "mnist-epochs", help="C1, C2 or C3 for whole epochs, timed: make bench's TF1 side"
    )
    epochs.add_argument("--graph", choices=MNIST_GRAPHS, required=True)
    epochs.add_argument("--data_dir", required=True, help="folder of the four MNIST IDX files")
    epochs.add_argument("--epochs", type=_positive, default=2)
    for command in (echo, mnist, epochs):
        command.add_argument("--seed", type=int, default=0)
    lockstep = commands.add_parser("lockstep", help="the TF1 side of the lockstep tests")
    lockstep.add_argument("directory")
    args = parser.parse_args(argv)
    tf1.disable_v2_behavior()
    tf1.logging.set_verbosity(tf1.logging.ERROR)
    # The legacy cells warn that they are deprecated: they are what the tutorials used.
    warnings.filterwarnings("ignore", message=".*is deprecated", category=UserWarning)
    run_command = {
        "echo": run_echo,
        "mnist": run_mnist,
        "mnist-epochs": run_mnist_epochs,
        "lockstep": run_lockstep,
    }
    run_command[args.command](args)


if __name__ == "__main__":
    main(sys.argv[1:])
