"""MNIST's training entry point: :func:`train_and_evaluate` trains, saves and exports one run."""

from __future__ import annotations

import dataclasses
import os
import shutil

import tensorflow as tf

from tfrnn.data import mnist as mnist_data
from tfrnn.engine import distribute, timing, training
from tfrnn.engine import workdir as workdir_lib
from tfrnn.engine.loop import seed_and_make_deterministic
from tfrnn.engine.reporting import write_json_atomically
from tfrnn.errors import UsageError
from tfrnn.serving import export
from tfrnn.tasks.mnist.config import Config, validate
from tfrnn.tasks.mnist.model import accuracy, build_model, make_optimizer


def train_and_evaluate(
    config: Config,
    workdir: str,
    *,
    strategy: tf.distribute.Strategy | None = None,
    checkpoint_every: int = 200,
    verbose: bool = True,
    title: str = "",
    fresh: bool = False,
) -> training.Result:
    """Trains on ``config``'s data, resuming from ``workdir``, then saves and exports the model.

    The configuration recorded (and compared on resume) is ``config`` and ``data_fingerprint``,
    each IDX file's size and sha256 (:func:`tfrnn.data.mnist.idx_digest`): a resume may read
    the same files from another ``data_dir``, not other data.

    Writes to ``workdir`` what :func:`tfrnn.engine.training.fit` writes, plus ``model.keras``, the
    servable SavedModel ``export/1/`` (:func:`tfrnn.serving.export.export_workdir`: signature
    ``serving_default`` from ``rows`` to ``probabilities`` and ``classes``), and
    ``final.json`` with the final test
    accuracy on all test images and on the first 128 (tutorial C2's measure). Under a
    multi-worker ``strategy`` only the chief writes these (see :mod:`tfrnn.engine.distribute`).
    The chief holds ``workdir``'s lock throughout (:func:`tfrnn.engine.workdir.hold`);
    ``fresh``: start from step 0, discarding the workdir's checkpoints.
    """
    validate(config)
    if config.data_dir:
        # Recorded as an absolute path: where the run read its data, from any directory.
        config = dataclasses.replace(config, data_dir=os.path.abspath(config.data_dir))
    seed_and_make_deterministic(config.seed)
    phases = timing.current()
    with phases.phase("data"):
        data = mnist_data.load(config.dataset, config.data_dir, config.validation_size)
    task = make_task(config, data)
    if verbose:
        print(
            f"data: {data.source}, {data.train.num_examples} train / {data.test.num_examples} "
            f"test images; {task.total_steps} steps of {config.batch_size} "
            f"({task.steps_per_epoch} a full epoch)",
            flush=True,
        )
    chief = distribute.is_chief(strategy or tf.distribute.get_strategy())
    with workdir_lib.hold(workdir, chief=chief):
        result = training.fit(
            task,
            workdir,
            # What the data is, so that a resume may read the same files from another folder.
            {"task": "mnist"} | dataclasses.asdict(config) | {"data_fingerprint": data.fingerprint},
            strategy=strategy,
            checkpoint_every=checkpoint_every,
            jit_compile=config.jit_compile,
            verbose=verbose,
            title=title,
            fresh=fresh,
        )
        if chief:
            with phases.phase("save and export"):
                _save_export_and_evaluate(result, data, workdir, verbose)
    return result  # on other workers: the chief saves, exports and evaluates the same weights


def _last_test_accuracy(result: training.Result, data) -> float:
    """The trained weights' accuracy on the test images: the last epoch's evaluation, which
    ends every run (a resumed one included), or a pass now for a run without epochs."""
    if result.history:
        return result.history[-1]["test_accuracy"]
    return accuracy(result.model, mnist_data.test_batches(data.test, 500))


def make_task(config: Config, data: mnist_data.MnistData) -> training.Task:
    """The training task of ``config`` on ``data``: its model, optimiser and batches, and
    ``config.train_steps`` steps or ``config.epochs`` whole epochs; each epoch ends with
    one pass over the test images in batches of 500."""
    steps_per_epoch = mnist_data.steps_per_epoch(data.train, config.batch_size)
    if steps_per_epoch == 0:
        raise UsageError(
            f"--batch_size {config.batch_size} is larger than the {data.train.num_examples} "
            "training images"
        )
    total_steps = config.train_steps or config.epochs * steps_per_epoch
    return training.Task(
        make_model=lambda: build_model(config),
        make_optimizer=lambda: make_optimizer(config, total_steps),
        per_example_loss=training.sparse_softmax_cross_entropy,
        train_batches=lambda epoch, skip: mnist_data.train_batches(
            data.train, config.batch_size, epoch, config.seed, skip
        ),
        eval_batches=lambda: mnist_data.test_batches(data.test, 500),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        global_batch_size=config.batch_size,
    )


def _save_export_and_evaluate(result: training.Result, data, workdir: str, verbose: bool):
    """Writes model.keras, export/1/ and final.json (the final test accuracies), each whole
    or not at all: the same command after an interruption writes them again. The accuracy on
    all test images is the last epoch's evaluation, of these same weights."""
    model = result.model
    workdir_lib.save_model(model, workdir)
    export_dir = os.path.join(workdir, "export")
    # The workdir's export mirrors its model.keras: a re-run replaces it rather than adding
    # versions (exports meant for a server go to their own folder: python -m tfrnn.export).
    shutil.rmtree(export_dir, ignore_errors=True)
    export.export_workdir(workdir, export_dir, version=1)
    final = {
        "test_accuracy": _last_test_accuracy(result, data),
        "test_accuracy_first_128": accuracy(model, mnist_data.test_batches(data.test, 128, 128)),
        "test_images": data.test.num_examples,
    }
    write_json_atomically(os.path.join(workdir, "final.json"), final)
    if verbose:
        print(
            f"final test accuracy {100 * final['test_accuracy']:.2f}% on "
            f"{final['test_images']} images, {100 * final['test_accuracy_first_128']:.2f}% on "
            f"the first 128; model in {workdir}/model.keras, SavedModel in {export_dir}/1",
            flush=True,
        )
