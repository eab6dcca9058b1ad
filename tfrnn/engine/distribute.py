"""Past one device: which ``tf.distribute`` strategy to train under, and who writes what.

Both experiments take ``--strategy``:

* ``default``: TensorFlow's default strategy, one device (the GPU when there is one).
* ``mirrored``: ``MirroredStrategy`` over all local GPUs, or over ``--cpu_replicas N``
  logical CPU devices (how the tests run it on a machine without a GPU). The CPU is split
  with ``tf.config.set_logical_device_configuration``, which must happen before TensorFlow
  initialises its devices: :func:`make_strategy` is the first thing an entry point does.
* ``multi_worker``: ``MultiWorkerMirroredStrategy``, one process per machine, each with the
  ``TF_CONFIG`` environment variable naming the cluster and its own place in it, e.g. for
  the second of two workers::

      TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                  "task": {"type": "worker", "index": 1}}'

  :func:`make_strategy` checks it first and names what is wrong in one line.

What a strategy compiles. A cross-replica all-reduce (the gradient sum inside
``optimizer.apply_gradients``) cannot live inside an XLA cluster, so under ``mirrored`` and
``multi_worker`` each replica's forward and backward pass is one XLA program and the update
runs outside it. Under ``default`` there is nothing to all-reduce: the echo loop
(:func:`tfrnn.tasks.echo.tbptt.make_window_runner`) then compiles its whole run of windows, updates
included (see :func:`is_default`); MNIST's step
(:class:`tfrnn.engine.training.ClassifierSteps`) compiles the forward and backward pass under
every strategy.

Rows to replicas. With R replicas in sync, a global batch of B rows (the ``--batch_size`` the
user sets) gives each replica B / R rows, and B must divide evenly
(:func:`per_replica_batch_size`). For arrays the loops slice themselves
(:func:`distribute_rows`, the echo windows), replica r (numbered across workers in
``replica_id_in_sync_group`` order) gets rows [r * B / R, (r + 1) * B / R) of every batch.
For truncated BPTT this mapping is fixed for the whole epoch, so row i (stream i) is always
trained, and its state carried, on replica i // (B / R). Datasets (MNIST) go through
:func:`split_batches`: every replica gets B / R rows of each global batch, which ones being
TensorFlow's choice; the summed gradient does not depend on it.

Who writes. Every worker trains and checkpoints (saving is a collective step); only the
chief (:func:`is_chief`) writes summaries, metrics, plots, saved models and exports, and
non-chief workers write their checkpoints to a temporary folder they delete afterwards, as
TensorFlow's multi-worker guide does. All workers restore from the chief's checkpoints, so
on several machines the workdir must be a folder they all see (a shared file system).
"""

from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import tensorflow as tf

from tfrnn.errors import UsageError

STRATEGIES = ("default", "mirrored", "multi_worker")
_DEFAULT_STRATEGY_TYPE = type(tf.distribute.get_strategy())


def define_flags(flags) -> None:
    """Defines ``--strategy`` and ``--cpu_replicas`` on an absl ``flags`` module."""
    flags.DEFINE_string(
        "strategy",
        "default",
        "default (one device), mirrored (all local GPUs, or --cpu_replicas CPU devices) or"
        " multi_worker (one process per machine, cluster from TF_CONFIG).",
    )
    flags.DEFINE_integer(
        "cpu_replicas",
        0,
        "With --strategy mirrored: split the CPU into this many logical devices and mirror"
        " over them instead of GPUs. 0: use the GPUs.",
    )


def make_strategy(name: str, cpu_replicas: int = 0) -> tf.distribute.Strategy:
    """The strategy called ``name`` (one of :data:`STRATEGIES`).

    Raises:
      UsageError: an unknown name, ``cpu_replicas`` where it means nothing or out of range,
        no GPU for ``mirrored``, or a missing or malformed ``TF_CONFIG`` for ``multi_worker``.
    """
    if name not in STRATEGIES:
        raise UsageError(f"--strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
    if cpu_replicas < 0:
        raise UsageError(f"--cpu_replicas must be >= 0, got {cpu_replicas}")
    if cpu_replicas and name != "mirrored":
        raise UsageError(f"--cpu_replicas works with --strategy mirrored only, not {name}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if cpu_replicas:
        return tf.distribute.MirroredStrategy(
            [device.name for device in configure_cpu_devices(cpu_replicas)]
        )
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        raise UsageError(
            "--strategy mirrored found no GPU; pass --cpu_replicas N to mirror over N"
            " logical CPU devices"
        )
    return tf.distribute.MirroredStrategy([device.name for device in gpus])


def configure_cpu_devices(count: int) -> list:
    """Splits the first CPU into ``count`` logical devices; returns them.

    Must run before TensorFlow initialises its devices (the first op or device listing);
    calling it again with the same count is harmless.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
    try:
        tf.config.set_logical_device_configuration(cpu, wanted)
    except RuntimeError as error:  # the runtime is up: fine only if it has what we want
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise RuntimeError(
                f"cannot split the CPU into {count} devices once TensorFlow has started;"
                " call configure_cpu_devices first"
            ) from error
    return tf.config.list_logical_devices("CPU")


def check_tf_config(text: str | None) -> dict:
    """Parses ``TF_CONFIG`` for MultiWorkerMirroredStrategy; a one-line UsageError if wrong.

    Accepts ``{"cluster": {"worker": ["host:port", ...], "chief": ["host:port"]?},
    "task": {"type": "worker" | "chief", "index": i}}``.
    """
    example = (
        'e.g. {"cluster": {"worker": ["10.0.0.1:12345", "10.0.0.2:12345"]},'
        ' "task": {"type": "worker", "index": 0}}'
    )
    if not text:
        raise UsageError(
            f"--strategy multi_worker reads the cluster from TF_CONFIG, unset; {example}"
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise UsageError(f"TF_CONFIG is not valid JSON ({error})") from None

    def require(condition, message):
        if not condition:
            raise UsageError(f"TF_CONFIG: {message}")

    require(isinstance(config, dict), "expected a JSON object")
    cluster, task = config.get("cluster"), config.get("task")
    require(isinstance(cluster, dict), 'no "cluster" object')
    require(isinstance(task, dict), 'no "task" object')
    for job in cluster:
        require(
            job in ("worker", "chief"),
            f"cluster has {job!r}; MultiWorkerMirroredStrategy uses worker and chief",
        )
    require(cluster.get("worker") or cluster.get("chief"), "cluster lists no worker")
    for job, addresses in cluster.items():
        require(
            isinstance(addresses, list) and addresses,
            f'cluster "{job}" must be a list of "host:port"',
        )
        for address in addresses:
            host, _, port = str(address).rpartition(":")
            require(
                isinstance(address, str) and host and port.isdigit() and 0 < int(port) < 65536,
                f'cluster "{job}" address {address!r} is not "host:port"',
            )
    require(len(cluster.get("chief", [])) <= 1, "a cluster has at most one chief")
    task_type, index = task.get("type"), task.get("index")
    require(task_type in cluster, f"task type {task_type!r} is not a job of the cluster")
    require(
        isinstance(index, int) and 0 <= index < len(cluster[task_type]),
        f'task index {index!r} is not in [0, {len(cluster[task_type])}) for "{task_type}"',
    )
    return config


@contextlib.contextmanager
def lost_workers_as_usage_errors():
    """Turns a dead or unreachable worker into a one-line :class:`UsageError` saying what to do.

    MultiWorkerMirroredStrategy does not go on with fewer workers: the survivors' next
    all-reduce fails (within seconds, by missed heartbeats). The remedy is to start every
    worker again with the same command.
    """
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError) as error:
        reason = str(error).split("Collective ops is aborted by: ")[-1].splitlines()[0]
        raise UsageError(
            f"lost a worker of the cluster ({reason}); start every worker again with the same"
            " command: training resumes from the chief's last checkpoint"
        ) from None


def is_default(strategy: tf.distribute.Strategy) -> bool:
    """True for TensorFlow's default (one-device) strategy: nothing to all-reduce."""
    return type(strategy) is _DEFAULT_STRATEGY_TYPE


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """True under ``multi_worker``: one process per worker, whose collectives need them all."""
    return isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def multi_worker_resolver(strategy: tf.distribute.Strategy):
    """The cluster resolver of a ``multi_worker`` strategy (its workers' SIGTERM handling,
    :class:`tfrnn.engine.loop.Controller`), or None under one process."""
    return strategy.cluster_resolver if is_multi_worker(strategy) else None


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True for the worker that writes results: the only one, or the cluster's chief.

    The chief is task ``chief``, or ``worker`` 0 in a cluster without one.
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def per_replica_batch_size(strategy: tf.distribute.Strategy, global_batch_size: int) -> int:
    """``global_batch_size`` / replicas; a UsageError if it does not divide evenly."""
    replicas = strategy.num_replicas_in_sync
    if global_batch_size % replicas:
        raise UsageError(
            f"--batch_size {global_batch_size} does not split evenly over {replicas} replicas;"
            f" use a multiple of {replicas}"
        )
    return global_batch_size // replicas


def split_batches(strategy: tf.distribute.Strategy, dataset: tf.data.Dataset):
    """``dataset``'s global batches, each split over the replicas, for ``strategy.run``.

    Sharding by data (each worker keeps its replicas' rows of every batch) rather than by
    file (each worker reads other files and makes its own batches): every global batch is
    then the same as on one device, whatever the number of workers.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    # No autotuning thread: destroying an epoch's iterator waited for that thread's sleep to
    # end, up to 5 s at some epochs' starts; the steady steps are as fast without it.
    options.autotune.enabled = False
    return strategy.experimental_distribute_dataset(dataset.with_options(options))


def distribute_rows(strategy: tf.distribute.Strategy, array, axis: int = 0):
    """Replica r's share of ``array``: rows [r * B / R, (r + 1) * B / R) along ``axis``.

    Returns a distributed value for ``strategy.run`` (a plain tensor, all rows, under the
    default strategy).
    """
    array = np.asarray(array)
    rows = per_replica_batch_size(strategy, array.shape[axis])

    def replica_share(context):
        first = context.replica_id_in_sync_group * rows
        return tf.constant(np.take(array, np.arange(first, first + rows), axis=axis))

    return strategy.experimental_distribute_values_from_function(replica_share)


def gather_rows(strategy: tf.distribute.Strategy, value, axis: int = 0) -> tf.Tensor:
    """All replicas' rows of a distributed ``value`` in row order (the inverse of
    :func:`distribute_rows`); every worker gets them all."""
    if is_default(strategy):
        return tf.convert_to_tensor(value)
    return strategy.gather(value, axis=axis)


def global_mean_loss(per_example: tf.Tensor, global_batch_size: int) -> tf.Tensor:
    """A replica's share of the mean loss over the GLOBAL batch: sum(per_example) / global.

    ``per_example`` (rows,): the losses of this replica's (or row shard's) examples. The
    shares of every replica (and shard) add up to the mean over the global batch, so the
    gradients the optimiser sums across replicas are those of that mean, as on one device.
    """
    # What tf.nn.compute_average_loss computes (its sum over div_no_nan), without the
    # run-time checks and the no-NaN division, which lengthen every compiled window.
    return tf.reduce_sum(per_example) / tf.cast(global_batch_size, per_example.dtype)
