"""PyTorch peer of tfrnn's training benchmarks: what a user would otherwise write.

Run by ``tfrnn.bench`` with the interpreter named by ``TORCH_PYTHON`` (torch is an optional,
benchmark-only dependency). It imports numpy and torch only, so that interpreter needs nothing
else, and prints one JSON object on stdout. torch is imported inside the workloads, so the
argument parsing and the echo series (numpy) are testable without it.

Workloads, the models, shapes and optimisers that :mod:`tfrnn.bench` times on tfrnn:

* ``mnist``: random (batch, 28, 28) rows -> LSTM(28 -> units) -> last output -> Linear(10),
  cross-entropy, Adam(1e-3), batch 128. Throughput does not depend on the pixel values.
  Reports images/s over ``batches`` steps after a warm-up.
* ``echo``: the echo-dependency series, P(Y_t = 1) = 0.5 + 0.5 X_{t-3} - 0.25 X_{t-8};
  a tanh RNN on one-hot inputs with a per-step Linear(2); Adagrad(0.1); batch 200; the series
  cut into 200 contiguous rows and walked in windows of ``num_steps``, each window's final
  state carried (detached) into the next: TF-style truncated BPTT. Reports the seconds of one
  epoch and the mean loss of its last 100 windows.

Usage: python tfrnn/bench/torch_peer.py mnist --batches 200
       python tfrnn/bench/torch_peer.py echo --num_steps 5 --state_size 4 --length 1000000
"""

import argparse
import json
import time

import numpy as np

# Untimed steps first, so that the one-off costs of the first steps (allocation, thread start)
# stay out of the figure.
MNIST_WARMUP_BATCHES = 20


def mnist_images_per_second(batches: int, batch_size: int = 128, units: int = 128) -> dict:
    import torch

    torch.manual_seed(0)
    warmup = MNIST_WARMUP_BATCHES
    images = torch.rand(batches + warmup, batch_size, 28, 28)
    labels = torch.randint(0, 10, (batches + warmup, batch_size))
    lstm = torch.nn.LSTM(28, units, batch_first=True)
    classifier = torch.nn.Linear(units, 10)
    optimizer = torch.optim.Adam([*lstm.parameters(), *classifier.parameters()], lr=1e-3)
    cross_entropy = torch.nn.CrossEntropyLoss()

    def train_step(index):
        optimizer.zero_grad(set_to_none=True)
        outputs, _ = lstm(images[index])
        loss = cross_entropy(classifier(outputs[:, -1]), labels[index])
        loss.backward()
        optimizer.step()

    for index in range(warmup):
        train_step(index)
    start = time.perf_counter()
    for index in range(warmup, warmup + batches):
        train_step(index)
    seconds = time.perf_counter() - start
    return {"images_per_second": batches * batch_size / seconds, "seconds": seconds}


def echo_rows(length: int, batch_size: int = 200, seed: int = 0):
    """The echo-dependency series drawn from ``seed``, cut into ``batch_size`` contiguous rows.

    Returns (inputs, targets), int64 arrays of shape (batch_size, length // batch_size):
    row i holds steps [i * L, (i + 1) * L) of the series, L = length // batch_size.
    """
    rng = np.random.default_rng(seed)
    inputs = rng.integers(0, 2, size=length)
    # np.roll wraps the first steps around to the end, as the tutorial's indexing does.
    probability = 0.5 + 0.5 * np.roll(inputs, 3) - 0.25 * np.roll(inputs, 8)
    targets = (rng.random(length) < probability).astype(np.int64)
    row_length = length // batch_size
    return (
        inputs[: row_length * batch_size].reshape(batch_size, -1),
        targets[: row_length * batch_size].reshape(batch_size, -1),
    )


def echo_epoch_seconds(num_steps: int, state_size: int, length: int, batch_size: int = 200):
    import torch

    torch.manual_seed(0)
    inputs, targets = echo_rows(length, batch_size)
    row_length = inputs.shape[1]
    rows_in, rows_out = torch.from_numpy(inputs), torch.from_numpy(targets)

    rnn = torch.nn.RNN(2, state_size, nonlinearity="tanh", batch_first=True)
    classifier = torch.nn.Linear(state_size, 2)
    optimizer = torch.optim.Adagrad([*rnn.parameters(), *classifier.parameters()], lr=0.1)
    cross_entropy = torch.nn.CrossEntropyLoss()
    state = torch.zeros(1, batch_size, state_size)
    losses = []
    start = time.perf_counter()
    for window in range(row_length // num_steps):
        columns = slice(window * num_steps, (window + 1) * num_steps)
        one_hot = torch.nn.functional.one_hot(rows_in[:, columns], 2).float()
        optimizer.zero_grad(set_to_none=True)
        outputs, final_state = rnn(one_hot, state)
        loss = cross_entropy(classifier(outputs).reshape(-1, 2), rows_out[:, columns].reshape(-1))
        loss.backward()
        optimizer.step()
        state = final_state.detach()  # carry the state, stop the gradient
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "final_loss": float(np.mean(losses[-100:]))}


def parse_args(argv=None) -> argparse.Namespace:
    """The command line; the defaults are the shapes ``make bench`` times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=["mnist", "echo"])
    parser.add_argument("--batches", type=int, default=200, help="mnist: timed steps")
    parser.add_argument("--batch_size", type=int, default=128, help="mnist: images a step")
    parser.add_argument("--units", type=int, default=128, help="mnist: LSTM units")
    parser.add_argument("--num_steps", type=int, default=5, help="echo: window length")
    parser.add_argument("--state_size", type=int, default=4, help="echo: RNN units")
    parser.add_argument("--length", type=int, default=1_000_000, help="echo: series length")
    args = parser.parse_args(argv)
    for name in ("batches", "batch_size", "units", "num_steps", "state_size", "length"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive, got {getattr(args, name)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    import torch

    if args.workload == "mnist":
        result = mnist_images_per_second(args.batches, args.batch_size, args.units)
    else:
        result = echo_epoch_seconds(args.num_steps, args.state_size, args.length)
    result["threads"] = torch.get_num_threads()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
