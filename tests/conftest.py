"""Set-up shared by the whole test session: the CPU split into two logical devices, and a
compilation cache of the session's own.

The distribution tests mirror over ``/cpu:0`` and ``/cpu:1``, and TensorFlow accepts a
device split only before it initialises its devices, which happens once per process; so it
is done here, at import, before any test runs. Ops that name no device still run on
``/cpu:0``, so the other tests see no difference.
"""

import os

import pytest
import tensorflow as tf
from absl import flags

from tfrnn.data import mnist as mnist_data
from tfrnn.engine import distribute

CPU_REPLICAS = 2
distribute.configure_cpu_devices(CPU_REPLICAS)


@pytest.fixture(scope="session", autouse=True)
def compile_cache_of_the_session(tmp_path_factory):
    """The commands the tests run keep their compiled programs (``--compile_cache``'s
    default, under XDG_CACHE_HOME) in a folder of this session, not the user's."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def mirrored():
    """MirroredStrategy over the two CPU devices, one for the session.

    Strategies made in one process number their collective ops from the same start, so the
    all-reduce of a second one over the same devices collides with the first one's ("shape
    mismatch in the collective instance"): every test shares this one.
    """
    return tf.distribute.MirroredStrategy([f"/cpu:{index}" for index in range(CPU_REPLICAS)])


@pytest.fixture
def echo_command():
    """The echo command's module (``python -m tfrnn.experiments.echo_deps``), its flags
    defined once a session and reset to their defaults after the test."""
    from tfrnn.tasks.echo import main as echo_main

    if "suite" not in flags.FLAGS:
        echo_main.define_flags()
    yield echo_main
    flags.FLAGS.unparse_flags()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A folder of tiny MNIST IDX files (.gz): 96 training and 40 test images that a model
    can learn (``write_synthetic_idx``), for the tests that run the MNIST command."""
    folder = tmp_path_factory.mktemp("idx")
    mnist_data.write_synthetic_idx(str(folder), 96, 40, compress=True)
    return str(folder)
