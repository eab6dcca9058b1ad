"""Tests of tfrnn.data.mnist: IDX reading and its errors, TFDS via mock data, epoch order."""

import contextlib
import gzip
import hashlib
import os
import shutil
import socket

import numpy as np
import pytest
import tensorflow_datasets as tfds

from tfrnn.data import mnist as mnist_data
from tfrnn.errors import UsageError


def _as_arrays(dataset):
    images, labels = zip(*[(image.numpy(), label.numpy()) for image, label in dataset], strict=True)
    return np.concatenate(images), np.concatenate(labels)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_folder_round_trip(tmp_path, compress):
    arrays = mnist_data.write_synthetic_idx(tmp_path, 40, 12, compress=compress)
    data = mnist_data.load(data_dir=str(tmp_path))
    assert (data.train.num_examples, data.test.num_examples) == (40, 12)
    images, labels = _as_arrays(mnist_data.test_batches(data.test, 5))
    assert images.dtype == np.float32 and images.shape == (12, 28, 28)
    np.testing.assert_allclose(images, arrays["test"][0] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(labels, arrays["test"][1])
    first_three, _ = _as_arrays(mnist_data.test_batches(data.test, 2, limit=3))
    np.testing.assert_array_equal(first_three, images[:3])


def test_synthetic_set_lights_the_row_of_each_label(tmp_path):
    arrays = mnist_data.write_synthetic_idx(tmp_path, 30, 10, seed=3)
    assert sorted(os.listdir(tmp_path)) == sorted(sum(mnist_data.IDX_FILES.values(), ()))
    for split, count in (("train", 30), ("test", 10)):
        images, labels = arrays[split]
        assert images.shape == (count, 28, 28) and labels.shape == (count,)
        rows = 2 * labels.astype(int) + 4
        assert (images[np.arange(count), rows] == 255).all()
        assert (images.sum(axis=2).argmax(axis=1) == rows).all()  # the brightest row
    (tmp_path / "again").mkdir()
    again = mnist_data.write_synthetic_idx(tmp_path / "again", 30, 10, seed=3)
    np.testing.assert_array_equal(again["train"][0], arrays["train"][0])  # the seed decides


@pytest.mark.parametrize("compress", [True, False])
def test_fingerprint_is_each_uncompressed_files_size_and_sha256(tmp_path, compress):
    mnist_data.write_synthetic_idx(tmp_path, 40, 12, compress=compress)
    fingerprint = mnist_data.load(data_dir=str(tmp_path)).fingerprint
    assert sorted(fingerprint) == sorted(
        name for names in mnist_data.IDX_FILES.values() for name in names
    )
    opener = gzip.open if compress else open
    for name, digest in fingerprint.items():
        with opener(os.path.join(tmp_path, name + (".gz" if compress else "")), "rb") as handle:
            content = handle.read()
        assert digest == {"bytes": len(content), "sha256": hashlib.sha256(content).hexdigest()}


def test_validation_size_leaves_out_the_first_training_images(tmp_path):
    # TF1's read_data_sets kept the first 5,000 training images as its validation split.
    arrays = mnist_data.write_synthetic_idx(tmp_path, 40, 12, compress=True)
    data = mnist_data.load(data_dir=str(tmp_path), validation_size=15)
    assert data.train.num_examples == 25
    _, labels = _as_arrays(data.train.examples.batch(100))
    np.testing.assert_array_equal(labels, arrays["train"][1][15:])
    with pytest.raises(UsageError, match="validation_size"):
        mnist_data.load(data_dir=str(tmp_path), validation_size=40)


def test_epoch_order_depends_on_seed_and_epoch_and_skip_resumes_it(tmp_path):
    mnist_data.write_synthetic_idx(tmp_path, 40, 12, compress=True)
    split = mnist_data.load(data_dir=str(tmp_path)).train
    assert mnist_data.steps_per_epoch(split, 8) == 5

    def labels_of(epoch, seed=0, skip=0):
        return _as_arrays(mnist_data.train_batches(split, 8, epoch, seed, skip))[1]

    epoch_0 = labels_of(0)
    assert len(epoch_0) == 40  # 5 full batches of 8
    np.testing.assert_array_equal(labels_of(0), epoch_0)
    np.testing.assert_array_equal(labels_of(0, skip=3), epoch_0[24:])
    images_0, _ = _as_arrays(mnist_data.train_batches(split, 8, 0, 0))
    images_1, _ = _as_arrays(mnist_data.train_batches(split, 8, 1, 0))
    images_s, _ = _as_arrays(mnist_data.train_batches(split, 8, 0, 1))
    assert not np.array_equal(images_0, images_1)
    assert not np.array_equal(images_0, images_s)
    # Every epoch is a permutation of the same images.
    np.testing.assert_allclose(
        np.sort(images_0.sum(axis=(1, 2))), np.sort(images_1.sum(axis=(1, 2)))
    )


def test_incomplete_last_batch_is_dropped_in_training_only(tmp_path):
    mnist_data.write_synthetic_idx(tmp_path, 20, 20, compress=True)
    data = mnist_data.load(data_dir=str(tmp_path))
    sizes = [len(labels) for _, labels in mnist_data.train_batches(data.train, 8, 0, 0)]
    assert sizes == [8, 8]
    sizes = [len(labels) for _, labels in mnist_data.test_batches(data.test, 8)]
    assert sizes == [8, 8, 4]


def _replace(folder, name, content: bytes):
    path = os.path.join(folder, name + ".gz")
    with gzip.open(path, "wb") as handle:
        handle.write(content)
    return path


def test_missing_folder_and_missing_file(tmp_path):
    with pytest.raises(UsageError, match=r"^--data_dir .*nowhere does not exist$"):
        mnist_data.load(data_dir=str(tmp_path / "nowhere"))
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match=r"^--data_dir .*file is a file, not a folder$"):
        mnist_data.load(data_dir=str(tmp_path / "file"))
    (tmp_path / "empty").mkdir()  # every missing file named, not only the first
    with pytest.raises(UsageError, match=r"missing train-images-idx3-ubyte\.gz, .*, t10k-"):
        mnist_data.load(data_dir=str(tmp_path / "empty"))
    mnist_data.write_synthetic_idx(tmp_path, 40, 12, compress=True)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(UsageError, match=r"missing t10k-labels-idx1-ubyte\.gz"):
        mnist_data.load(data_dir=str(tmp_path))


def test_wrong_magic_names_the_file(tmp_path):
    mnist_data.write_synthetic_idx(tmp_path, 40, 12, compress=True)
    labels_path = os.path.join(tmp_path, "train-labels-idx1-ubyte.gz")
    images_path = os.path.join(tmp_path, "train-images-idx3-ubyte.gz")
    shutil.copy(labels_path, images_path)  # a labels file where the images should be
    with pytest.raises(UsageError) as error:
        mnist_data.load(data_dir=str(tmp_path))
    assert str(error.value) == f"{images_path}: wrong magic number 2049, expected 2051"


def test_truncated_data_and_truncated_gzip(tmp_path):
    mnist_data.write_synthetic_idx(tmp_path, 40, 12, compress=True)
    name = "t10k-images-idx3-ubyte"
    with gzip.open(os.path.join(tmp_path, name + ".gz"), "rb") as handle:
        content = handle.read()
    path = _replace(tmp_path, name, content[:-100])
    with pytest.raises(UsageError, match=f"{path}: truncated: header gives shape"):
        mnist_data.load(data_dir=str(tmp_path))
    _replace(tmp_path, name, content)
    with open(path, "rb") as handle:
        compressed = handle.read()
    with open(path, "wb") as handle:
        handle.write(compressed[: len(compressed) // 2])
    with pytest.raises(UsageError, match=f"{path}: truncated gzip file"):
        mnist_data.load(data_dir=str(tmp_path))


def test_image_and_label_counts_must_agree(tmp_path):
    mnist_data.write_synthetic_idx(tmp_path, 40, 12, compress=True)
    mnist_data.write_idx(
        os.path.join(tmp_path, "train-labels-idx1-ubyte.gz"), np.zeros(39, np.uint8)
    )
    with pytest.raises(UsageError, match="holds 40 images but .*train-labels.* holds 39 labels"):
        mnist_data.load(data_dir=str(tmp_path))


def _without_proxies(monkeypatch):
    for name in os.environ:
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


@pytest.fixture
def reachable(monkeypatch):
    """Every host accepts a connection, none of them real; no proxy in between."""
    _without_proxies(monkeypatch)
    monkeypatch.setattr(
        socket, "create_connection", lambda *args, **kwargs: contextlib.nullcontext()
    )


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No name resolves, no proxy is set, and TFDS' data folder is empty."""
    _without_proxies(monkeypatch)
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tmp_path / "tfds"))

    def no_resolution(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_resolution)


def test_offline_tfds_is_one_line_error_before_any_download(offline, monkeypatch):
    def download_and_prepare(self, *args, **kwargs):
        pytest.fail("TFDS was asked to download")  # it would retry for minutes

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
    with pytest.raises(UsageError) as error:
        mnist_data.load("mnist")
    assert str(error.value) == (
        "cannot load TFDS dataset 'mnist' (cannot reach storage.googleapis.com: "
        f"[Errno {socket.EAI_NONAME}] Name or service not known); pass --data_dir DIR with the "
        "four MNIST IDX files to read a local copy"
    )


def test_behind_a_proxy_tfds_downloads_through_it(offline, monkeypatch):
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")

    def download_and_prepare(self, *args, **kwargs):
        raise ConnectionError("through the proxy")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)
    with pytest.raises(UsageError, match=r"\(ConnectionError: through the proxy\)"):
        mnist_data.load("mnist")


def test_unknown_dataset_is_one_line_error_with_or_without_data_dir(offline, tmp_path):
    with pytest.raises(UsageError) as error:
        mnist_data.load("nosuchset")
    assert str(error.value) == (
        "--dataset 'nosuchset' is not a TFDS dataset; 28x28 grayscale ones include mnist, "
        "fashion_mnist, kmnist"
    )
    mnist_data.write_synthetic_idx(tmp_path, 40, 12, compress=True)
    with pytest.raises(UsageError) as error:
        mnist_data.load("nosuchset", data_dir=str(tmp_path))
    assert str(error.value) == (
        "--dataset must name the set in --data_dir's IDX files, one of mnist, fashion_mnist, "
        "kmnist, got 'nosuchset'"
    )
    assert mnist_data.load("fashion_mnist", data_dir=str(tmp_path)).train.num_examples == 40


def test_tfds_source_with_mock_data(reachable):
    with tfds.testing.mock_data(num_examples=24):
        data = mnist_data.load("mnist")
        assert data.source == "tfds:mnist"
        assert (data.train.num_examples, data.test.num_examples) == (24, 24)
        images, labels = _as_arrays(mnist_data.train_batches(data.train, 8, 0, 0))
        assert images.shape == (24, 28, 28) and images.dtype == np.float32
        assert 0.0 <= images.min() and images.max() <= 1.0
        assert labels.dtype == np.int32 and set(labels) <= set(range(10))
        with pytest.raises(UsageError, match=r"'cifar10' has images \(32, 32, 3\)"):
            mnist_data.load("cifar10")


def test_tfds_can_locate_the_mnist_builder_code(tmp_path):
    # tfds.load reads the builder's code_path before it downloads anything; in
    # tensorflow-datasets 4.9.10 that needs importlib_resources, an undeclared dependency.
    # mock_data bypasses this path, so check it directly (no download happens here).
    builder = tfds.builder("mnist", data_dir=str(tmp_path))
    assert os.path.basename(str(builder.code_path)) == "mnist.py"
