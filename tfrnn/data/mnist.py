"""MNIST (and other 28x28 grayscale sets) as tf.data pipelines, from TFDS or a folder of IDX files.

Two sources give the same thing, a cached ``tf.data.Dataset`` of ``(image, label)`` pairs
with ``image`` uint8 (28, 28) and ``label`` int32 in [0, 10):

* :func:`load` with ``data_dir=None`` reads a tensorflow-datasets set (``mnist`` by default,
  or ``fashion_mnist``, ``kmnist``...), downloading it on a machine that can (a host that
  accepts no connection within :data:`CONNECT_TIMEOUT` seconds is an error at once);
* :func:`load` with ``data_dir=DIR`` reads the four IDX files in ``DIR`` (``.gz`` or not), the
  way TF1's ``input_data.read_data_sets("MNIST_data/")`` read a local folder.

:func:`train_batches` and :func:`test_batches` turn a split into float32 batches scaled to
[0, 1] (pixel / 255), the input contract of the MNIST model and of its serving signature. The
training order of an epoch depends only on ``(seed, epoch)``, and a pipeline can start after
the batches a previous run already trained on: that is what makes resuming exact.

Bad data gives a :class:`tfrnn.errors.UsageError` naming the file and what is wrong.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import socket
import struct
import urllib.parse
import urllib.request
import zlib

import numpy as np
import tensorflow as tf

from tfrnn.errors import UsageError, check_folder

IMAGE_SIZE = 28
NUM_CLASSES = 10
# IDX magic numbers: 0x0000 0803 (uint8, 3 dims) for images, 0x0000 0801 (uint8, 1 dim) for labels.
IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
# The file names of the published MNIST, without ".gz"; TF1's reader looked for the same.
IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# The 28x28 grayscale sets of 10 classes published as these four IDX files: what --dataset
# may name with --data_dir.
IDX_DATASETS = ("mnist", "fashion_mnist", "kmnist")
# Seconds a TFDS download host has to accept a connection before TFDS is asked to download.
CONNECT_TIMEOUT = 3.0


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: ``examples`` yields (uint8 (28, 28), int32 ()) pairs, cached in memory."""

    examples: tf.data.Dataset
    num_examples: int


@dataclasses.dataclass(frozen=True)
class MnistData:
    train: Split
    test: Split
    source: str  # what was read, for logs: "tfds:mnist" or the folder
    # What an IDX folder holds, to tell the same data in another folder: each file's
    # idx_digest by its name without ".gz". None for TFDS (the dataset name says it).
    fingerprint: dict | None = None


def read_idx(path: str, magic: int) -> np.ndarray:
    """Reads one IDX file (gzip-compressed when ``path`` ends in ``.gz``) into a uint8 array.

    IDX: a big-endian int32 magic number (0x0803 for 3-D uint8, 0x0801 for 1-D uint8), one
    big-endian int32 per dimension, then the uint8 data in row-major order.
    """
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                content = handle.read()
        else:
            with open(path, "rb") as handle:
                content = handle.read()
    except EOFError:
        raise UsageError(f"{path}: truncated gzip file") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise UsageError(f"{path}: not a valid gzip file ({error})") from None
    except OSError as error:
        raise UsageError(f"{path}: cannot read ({error.strerror or error})") from None
    if len(content) < 4:
        raise UsageError(f"{path}: truncated: {len(content)} bytes, not even an IDX header")
    (found_magic,) = struct.unpack(">i", content[:4])
    if found_magic != magic:
        raise UsageError(f"{path}: wrong magic number {found_magic}, expected {magic}")
    num_dims = magic & 0xFF
    header_size = 4 + 4 * num_dims
    if len(content) < header_size:
        raise UsageError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{num_dims}i", content[4:header_size])
    expected = int(np.prod(shape))
    found = len(content) - header_size
    if found < expected:
        raise UsageError(
            f"{path}: truncated: header gives shape {shape} ({expected} bytes), file has {found}"
        )
    if found > expected:
        raise UsageError(f"{path}: {found - expected} bytes after the data of shape {shape}")
    return np.frombuffer(content, dtype=np.uint8, offset=header_size).reshape(shape)


def _idx_header(array: np.ndarray) -> bytes:
    return struct.pack(f">i{array.ndim}i", 0x0800 | array.ndim, *array.shape)


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes a uint8 array as an IDX file (gzip-compressed when ``path`` ends in ``.gz``);
    the inverse of :func:`read_idx`, for making subsets and test data."""
    array = np.asarray(array, dtype=np.uint8)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as handle:
        handle.write(_idx_header(array) + array.tobytes())


def write_synthetic_idx(
    folder: str, num_train: int, num_test: int, *, seed: int = 0, compress: bool = False
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Writes the four IDX files of a made-up MNIST-shaped set that a model can learn.

    Each image is dim noise (0-99) with row ``2 * label + 4`` lit at 255, so the rows carry
    the label. For tests and the tutorials' quick mode, which must not download MNIST.
    ``compress`` writes ``.gz`` files. Returns ``{split: (images, labels)}``, uint8 arrays as
    written.
    """
    rng = np.random.default_rng(seed)
    suffix = ".gz" if compress else ""
    arrays = {}
    for split, count in (("train", num_train), ("test", num_test)):
        labels = rng.integers(0, NUM_CLASSES, size=count)
        images = rng.integers(0, 100, size=(count, IMAGE_SIZE, IMAGE_SIZE))
        images[np.arange(count), 2 * labels + 4, :] = 255
        arrays[split] = (images.astype(np.uint8), labels.astype(np.uint8))
        for name, array in zip(IDX_FILES[split], arrays[split], strict=True):
            write_idx(os.path.join(folder, name + suffix), array)
    return arrays


def idx_digest(array: np.ndarray) -> dict:
    """``{"bytes": size, "sha256": hex}`` of the uncompressed IDX file of uint8 ``array``
    (for a file read by :func:`read_idx`, what ``gunzip -c FILE.gz | sha256sum`` gives)."""
    header = _idx_header(array)
    digest = hashlib.sha256(header)
    digest.update(np.ascontiguousarray(array, dtype=np.uint8))
    return {"bytes": len(header) + array.nbytes, "sha256": digest.hexdigest()}


def _find_idx_file(data_dir: str, name: str) -> str | None:
    """The path of IDX file ``name`` in ``data_dir``, gzipped or not; None if neither."""
    for candidate in (name, name + ".gz"):
        path = os.path.join(data_dir, candidate)
        if os.path.isfile(path):
            return path
    return None


def _check_idx_files(data_dir: str, names) -> None:
    """A one-line UsageError naming every IDX file of ``names`` that ``data_dir`` lacks."""
    missing = [f"{name}.gz" for name in names if _find_idx_file(data_dir, name) is None]
    if missing:
        raise UsageError(
            f"{data_dir}: missing {', '.join(missing)} (or the same without .gz; "
            "expected the four MNIST IDX files)"
        )


def read_idx_split(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Images (n, 28, 28) uint8 and labels (n,) int32 of ``split`` ("train" or "test"), and
    the two files' :func:`idx_digest` by name (without ".gz")."""
    images_name, labels_name = IDX_FILES[split]
    _check_idx_files(data_dir, IDX_FILES[split])
    images_path = _find_idx_file(data_dir, images_name)
    labels_path = _find_idx_file(data_dir, labels_name)
    images = read_idx(images_path, IMAGES_MAGIC)
    labels = read_idx(labels_path, LABELS_MAGIC)
    if images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise UsageError(f"{images_path}: images are {images.shape[1:]}, expected (28, 28)")
    if len(images) != len(labels):
        raise UsageError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    if len(labels) and labels.max() >= NUM_CLASSES:
        raise UsageError(f"{labels_path}: label {labels.max()} out of range 0-9")
    digests = {images_name: idx_digest(images), labels_name: idx_digest(labels)}
    return images, labels.astype(np.int32), digests


def _count(dataset: tf.data.Dataset) -> int:
    cardinality = int(dataset.cardinality())
    if cardinality >= 0:
        return cardinality
    return int(dataset.reduce(np.int64(0), lambda count, _: count + 1))


def _cannot_load(name: str, reason: str) -> UsageError:
    return UsageError(
        f"cannot load TFDS dataset {name!r} ({reason}); "
        "pass --data_dir DIR with the four MNIST IDX files to read a local copy"
    )


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _check_download_hosts(name: str, urls) -> None:
    """Raises :func:`_cannot_load` at once when a host of ``urls`` accepts no connection.

    Offline, TFDS retries each download with growing pauses for about 3.5 minutes before it
    gives up. A scheme with a proxy in the environment is left to TFDS: the hosts may be
    reachable through the proxy only.
    """
    proxies = urllib.request.getproxies()
    default_ports = {"http": 80, "https": 443, "ftp": 21}
    addresses = set()
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or default_ports.get(parts.scheme)
        if parts.hostname and port and parts.scheme not in proxies:
            addresses.add((parts.hostname, port))
    for host, port in sorted(addresses):
        try:
            with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT):
                pass
        except OSError as error:
            raise _cannot_load(name, f"cannot reach {host}: {error}") from None


def _prepared_tfds_builder(name: str):
    """The TFDS builder of ``name``, its data downloaded and prepared."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name)
    except tfds.core.DatasetNotFoundError:
        raise UsageError(
            f"--dataset {name!r} is not a TFDS dataset; 28x28 grayscale ones include "
            f"{', '.join(IDX_DATASETS)}"
        ) from None
    except Exception as error:  # noqa: BLE001 - TFDS raises many kinds; the user needs one line
        raise _cannot_load(name, _first_line(error)) from None
    if not builder.data_path.exists():  # what TFDS checks before it downloads
        _check_download_hosts(name, builder.url_infos or ())
    try:
        builder.download_and_prepare()
    except Exception as error:  # noqa: BLE001
        raise _cannot_load(name, _first_line(error)) from None
    return builder


def _tfds_split(builder, split: str) -> tf.data.Dataset:
    dataset = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    image_spec, _ = dataset.element_spec
    if tuple(image_spec.shape) != (IMAGE_SIZE, IMAGE_SIZE, 1) or image_spec.dtype != tf.uint8:
        found = f"{tuple(image_spec.shape)} {image_spec.dtype.name}"
        raise UsageError(
            f"TFDS dataset {builder.name!r} has images {found};"
            f" need 28x28x1 uint8 ({', '.join(IDX_DATASETS)})"
        )
    return dataset.map(
        lambda image, label: (tf.squeeze(image, axis=-1), tf.cast(label, tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


def load(dataset: str = "mnist", data_dir: str | None = None, validation_size: int = 0):
    """Loads the train and test splits.

    Args:
      dataset: a TFDS dataset of 28x28x1 uint8 images with 10 classes; with data_dir, the
        set its files hold (one of :data:`IDX_DATASETS`).
      data_dir: a folder with the four IDX files; None reads ``dataset`` from TFDS.
      validation_size: hold out the FIRST this many training examples, as TF1's
        ``read_data_sets`` held out 5,000 (it kept them as a validation split; here they are
        only left out, so that a preset trains on the same 55,000 images).

    Returns:
      :class:`MnistData`, each split cached in memory.
    """
    if data_dir is not None:
        if dataset not in IDX_DATASETS:
            raise UsageError(
                f"--dataset must name the set in --data_dir's IDX files, one of "
                f"{', '.join(IDX_DATASETS)}, got {dataset!r}"
            )
        check_folder(data_dir, "--data_dir")
        _check_idx_files(data_dir, [name for names in IDX_FILES.values() for name in names])
        splits, fingerprint = {}, {}
        for split in IDX_FILES:
            images, labels, digests = read_idx_split(data_dir, split)
            splits[split] = tf.data.Dataset.from_tensor_slices((images, labels))
            fingerprint.update(digests)
        source = data_dir
    else:
        builder = _prepared_tfds_builder(dataset)
        splits = {split: _tfds_split(builder, split) for split in IDX_FILES}
        source, fingerprint = f"tfds:{dataset}", None
    train = splits["train"].cache()
    num_train = _count(train)
    if not 0 <= validation_size < num_train:
        raise UsageError(f"--validation_size must be in [0, {num_train}), got {validation_size}")
    if validation_size:
        num_train -= validation_size
        train = train.skip(validation_size)
    test = splits["test"].cache()
    return MnistData(Split(train, num_train), Split(test, _count(test)), source, fingerprint)


def epoch_shuffle_seed(seed: int, epoch: int) -> int:
    """The shuffle seed of one epoch: a function of (seed, epoch) only, so a resumed run
    replays the same order."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _to_model_input(images, labels):
    return tf.cast(images, tf.float32) / 255.0, labels


def train_batches(
    split: Split, batch_size: int, epoch: int, seed: int, skip_batches: int = 0
) -> tf.data.Dataset:
    """One epoch of shuffled training batches, from batch ``skip_batches`` on.

    Yields (images float32 (batch_size, 28, 28) in [0, 1], labels int32 (batch_size,)). The
    last incomplete batch is dropped (every step then averages over the same global batch;
    the next epoch's shuffle uses those examples). The shuffle buffer holds the whole split,
    so the order is a uniform permutation that depends on (seed, epoch) only.
    """
    dataset = split.examples.shuffle(
        split.num_examples,
        seed=epoch_shuffle_seed(seed, epoch),
        reshuffle_each_iteration=False,
    )
    dataset = dataset.batch(batch_size, drop_remainder=True).skip(skip_batches)
    return dataset.map(_to_model_input).prefetch(tf.data.AUTOTUNE)


def test_batches(split: Split, batch_size: int, limit: int | None = None) -> tf.data.Dataset:
    """The first ``limit`` (default all) examples in file order, in batches, the last one
    possibly smaller; same element format as :func:`train_batches`."""
    dataset = split.examples if limit is None else split.examples.take(limit)
    return dataset.batch(batch_size).map(_to_model_input).prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(split: Split, batch_size: int) -> int:
    return split.num_examples // batch_size
