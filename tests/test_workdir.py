"""Tests of tfrnn.engine.workdir's checks before a run and its whole-or-nothing model.keras
(the lock and --fresh are tested with the commands, in tests/test_survive.py)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from command_testing import user_environment

from tfrnn import cli
from tfrnn.engine import workdir
from tfrnn.errors import UsageError


def test_a_new_workdir_is_made_with_the_folders_above_it(tmp_path):
    workdir.prepare(str(tmp_path / "runs" / "mnist"))
    assert (tmp_path / "runs" / "mnist").is_dir()
    workdir.prepare(str(tmp_path / "runs" / "mnist"))  # an existing one is fine


def test_a_workdir_that_cannot_be_a_folder_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    with pytest.raises(UsageError, match=f"^--workdir {tmp_path}/file is a file, not a folder$"):
        workdir.prepare(str(tmp_path / "file"))
    with pytest.raises(
        UsageError,
        match=f"^--workdir {tmp_path}/file/run lies under {tmp_path}/file, which is a file,",
    ):
        workdir.prepare(str(tmp_path / "file" / "run"))

    # What a folder without write permission gives (root, who runs some tests, ignores modes).
    def refuse(path, exist_ok=False):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(workdir.os, "makedirs", refuse)
    with pytest.raises(
        UsageError, match=f"^cannot create --workdir {tmp_path}/new \\(Permission denied\\)$"
    ):
        workdir.prepare(str(tmp_path / "new"))


def test_a_converted_workdir_is_refused_with_the_way_to_keep_it(tmp_path):
    (tmp_path / "conversion.json").write_text("{}")
    with pytest.raises(UsageError) as error:
        workdir.prepare(str(tmp_path))
    assert str(error.value) == (
        f"{tmp_path} holds a model converted from a TF1 checkpoint ({tmp_path}/conversion.json),"
        " which training would replace, with --fresh too: to keep it, train in another --workdir"
    )
    with pytest.raises(UsageError, match="converted from a TF1 checkpoint"):  # and so does the lock
        with workdir.hold(str(tmp_path)):
            pass


def _model(value):
    inputs = keras.Input((2,))
    layer = keras.layers.Dense(1, kernel_initializer=keras.initializers.Constant(value))
    return keras.Model(inputs, layer(inputs))


def test_model_keras_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = workdir.save_model(_model(1.0), str(tmp_path))
    assert path == str(tmp_path / "model.keras")

    def interrupted_save(self, filepath, *args, **kwargs):
        with open(filepath, "wb") as handle:
            handle.write(b"PK half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(keras.Model, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        workdir.save_model(_model(2.0), str(tmp_path))
    assert os.listdir(tmp_path) == ["model.keras"]  # no partial file left beside it
    kernel = keras.saving.load_model(path).layers[-1].kernel.numpy()
    np.testing.assert_array_equal(kernel, np.ones((2, 1)))  # the previous model, intact


def test_the_echo_command_refuses_a_file_as_workdir_before_training(echo_command, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        cli.run(echo_command.main, argv=["echo_deps", f"--workdir={tmp_path / 'file'}"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: --workdir {tmp_path}/file is a file, not a folder\n"
    assert os.listdir(tmp_path) == ["file"]  # nothing trained, nothing written


def test_the_mnist_command_refuses_a_file_as_workdir_before_the_data_loads(tmp_path):
    (tmp_path / "file").write_text("")
    result = subprocess.run(
        [sys.executable, "-m", "tfrnn.experiments.mnist", f"--workdir={tmp_path / 'file'}"]
        + [f"--data_dir={tmp_path / 'no_data_here'}"],
        capture_output=True,
        text=True,
        env=user_environment(),
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: --workdir {tmp_path / 'file'} is a file, not a folder"
    ]
