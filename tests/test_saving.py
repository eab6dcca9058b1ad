"""A tfrnn model loads with Keras alone, in a fresh process outside the checkout
(tfrnn.saving, and tfrnn-keras.pth that installing the package puts in site-packages)."""

import importlib
import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np

from tfrnn import saving
from tfrnn.layers.cells import RNN, ConcatRNNCell, make_rnn
from tfrnn.layers.lstmp_cell import LSTMPCell
from tfrnn.tasks.echo.model import build_echo_model
from tfrnn.tasks.mnist import config as mnist_config
from tfrnn.tasks.mnist.model import build_model

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_keras_classes_lists_every_class_tfrnn_registers():
    for path in (REPO / "tfrnn").rglob("*.py"):  # every module, so every registration
        if "__main__" not in path.name and "torch_peer" not in path.name:
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            importlib.import_module(name.removesuffix(".__init__"))
    registered = {
        name: value
        for name, value in keras.saving.get_custom_objects().items()
        if name.startswith("tfrnn>")
    }
    assert registered.keys() == saving.KERAS_CLASSES.keys()
    for name, value in registered.items():
        assert isinstance(value, type), f"{name} is still a placeholder: {value}"
        assert value.__module__ == saving.KERAS_CLASSES[name], name


def test_a_placeholder_rebuilds_its_class_from_a_config():
    placeholder = saving.Placeholder("tfrnn>ConcatRNNCell", "tfrnn.layers.cells")
    assert placeholder.load() is ConcatRNNCell
    cell = placeholder.from_config(ConcatRNNCell(3).get_config())
    assert isinstance(cell, ConcatRNNCell) and cell.units == 3


def _lstmp_model():
    inputs = keras.Input((5, 2))
    cell = LSTMPCell(4, projection_units=3, use_peepholes=True, cell_clip=2.0)
    return keras.Model(inputs, keras.layers.Dense(2)(RNN(cell)(inputs)))


def test_a_saved_model_loads_in_a_process_that_imports_only_keras(tmp_path):
    rng = np.random.default_rng(0)
    models = {
        "echo": (build_echo_model("concat", 4), rng.integers(0, 2, (2, 7)).astype("int32")),
        "mnist": (
            build_model(mnist_config.Config(units=6)),
            rng.random((2, 28, 28)).astype("float32"),
        ),
        "lstmp": (_lstmp_model(), rng.random((2, 5, 2)).astype("float32")),
        "simple": (keras.Sequential([keras.Input((3, 1)), make_rnn("simple", 2)]), None),
    }
    for name, (model, inputs) in models.items():
        model.save(tmp_path / f"{name}.keras")
        if inputs is not None:
            np.save(tmp_path / f"{name}.inputs.npy", inputs)
            np.save(tmp_path / f"{name}.outputs.npy", model(inputs))
    script = (
        "import json, sys\n"
        "import keras, numpy as np\n"
        "loaded = {}\n"
        f"for name in {list(models)!r}:\n"
        "    model = keras.saving.load_model(name + '.keras')\n"
        "    loaded[name] = sorted({type(layer).__module__ for layer in model.layers})\n"
        "    if name != 'simple':\n"
        "        outputs = np.asarray(model(np.load(name + '.inputs.npy')))\n"
        "        np.save(name + '.loaded.npy', outputs)\n"
        "print(json.dumps(loaded))\n"
    )
    # No PYTHONPATH and a folder outside the checkout: tfrnn is found as installed, or not.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, (
        "tfrnn must be installed in this Python (make: pip install -e .):\n" + result.stderr[-3000:]
    )
    modules = json.loads(result.stdout.splitlines()[-1])
    assert "tfrnn.layers.cells" in modules["echo"] and "tfrnn.tasks.echo.model" in modules["echo"]
    assert "tfrnn.layers.cells" in modules["mnist"] and "tfrnn.layers.cells" in modules["lstmp"]
    for name, (_, inputs) in models.items():
        if inputs is not None:
            np.testing.assert_allclose(
                np.load(tmp_path / f"{name}.loaded.npy"),
                np.load(tmp_path / f"{name}.outputs.npy"),
                rtol=0,
                atol=1e-6,
                err_msg=name,
            )
