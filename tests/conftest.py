"""Set-up shared by the whole test session: the CPU split into two logical devices, and a
compilation cache of the session's own.

The distribution tests mirror over ``/cpu:0`` and ``/cpu:1``, and TensorFlow accepts a
device split only before it initialises its devices, which happens once per process; so it
is done here, at import, before any test runs. Ops that name no device still run on
``/cpu:0``, so the other tests see no difference.

TensorFlow's start-up lines (oneDNN, no CUDA drivers, ``failed call to cuInit``), written
while it is imported and counts its devices here, would otherwise be held by pytest's
capture of what no test wrote and printed after the summary, where an ``E0000 … cuInit``
reads like a failure; they are dropped, and any other line of the import is kept.
"""

import contextlib
import os
import re
import sys
import tempfile

import pytest
from absl import flags

# TensorFlow's lines when it starts on a machine without CUDA: INFO and WARNING lines of its
# C++ log, the CPU-instructions note, and the two CUDA errors that only say there is no GPU.
START_UP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called|[IW]\d{4} |"
    r"To enable the following instructions:|"
    r"E\d{4} .*(failed call to cuInit|Unable to register cu\w+ factory))"
)


@contextlib.contextmanager
def tensorflow_start_up_lines_dropped():
    """The block's writes to the process's stderr, less :data:`START_UP_NOISE`'s lines,
    reach stderr when it ends (the C++ log writes to file descriptor 2 directly)."""
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            sys.stderr.writelines(line for line in captured if not START_UP_NOISE.match(line))


CPU_REPLICAS = 2
with tensorflow_start_up_lines_dropped():
    import tensorflow as tf

    from tfrnn.data import mnist as mnist_data
    from tfrnn.engine import distribute

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
