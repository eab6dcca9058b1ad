"""Tests of tfrnn.export with an MNIST-shaped model: what TF Serving loads and answers."""

import json
import os
import re
import resource
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from export_testing import mnist_model, random_images, rest_to_tensors, save_workdir

from tfrnn.errors import UsageError
from tfrnn.layers.serving_rnn import FUSED_MAX_ROWS
from tfrnn.serving import export, tf_serving
from tfrnn.serving.spec import serving_tasks

VENV_BIN = os.path.dirname(sys.executable)
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}


@pytest.fixture(scope="module")
def mnist(tmp_path_factory):
    """(Keras model, workdir, export_dir, description of version 1)."""
    root = tmp_path_factory.mktemp("mnist")
    model = mnist_model()
    workdir = save_workdir(root / "run", model, {"task": "mnist", "cell": "lstm", "units": 8})
    export_dir = str(root / "models" / "mnist")
    description = export.export_workdir(workdir, export_dir)
    return model, workdir, export_dir, description


def _keras_probabilities(model, images):
    return np.asarray(keras.ops.softmax(model(images, training=False), axis=-1))


def test_signature_has_named_inputs_and_outputs(mnist):
    _, _, export_dir, description = mnist
    expected = {
        "serving_default": {
            "method": "tensorflow/serving/predict",
            "inputs": {"rows": {"dtype": "float32", "shape": [None, 28, 28]}},
            "outputs": {
                "probabilities": {"dtype": "float32", "shape": [None, 10]},
                "classes": {"dtype": "int64", "shape": [None]},
            },
        }
    }
    assert tf_serving.signatures(os.path.join(export_dir, "1")) == expected
    assert description["signatures"] == expected
    assert description["version"] == 1 and description["task"] == "mnist"


@pytest.mark.parametrize("batch", [6, FUSED_MAX_ROWS + 1])  # the fused LSTM op, the steps
def test_tf_serving_path_matches_keras(mnist, batch):
    model, _, export_dir, _ = mnist
    images = random_images(batch)
    outputs = tf_serving.run_like_tf_serving(
        os.path.join(export_dir, "1"), "serving_default", {"rows": images}
    )
    expected = _keras_probabilities(model, images)
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)
    np.testing.assert_array_equal(outputs["classes"], np.argmax(expected, axis=-1))
    assert outputs["classes"].dtype == np.int64
    assert len(set(outputs["classes"])) > 1  # the images are told apart: a real comparison


def test_graph_has_no_cudnn_ops_and_the_check_catches_them(mnist, tmp_path):
    _, _, export_dir, _ = mnist
    types = tf_serving.op_types(os.path.join(export_dir, "1"))
    graph = tf_serving.read_saved_model(os.path.join(export_dir, "1")).meta_graphs[0].graph_def
    # The model's ops live in the function library, which the top-level graph only calls:
    # finding them shows the library was walked. The served copy is unrolled (no time loop),
    # its LSTM also one BlockLSTMV2 op for batches of up to FUSED_MAX_ROWS rows.
    assert {"MatMul", "Sigmoid", "BlockLSTMV2"} <= types - {node.op for node in graph.node}
    assert not types & {"While", "StatelessWhile"}
    assert not [op for op in types if op.startswith("CudnnRNN")]

    class Cudnn(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([5, 2, 3], tf.float32)])
        def inner(self, inputs):
            state = tf.zeros([1, 2, 4])
            return tf.raw_ops.CudnnRNN(
                input=inputs, input_h=state, input_c=state, params=tf.zeros([100])
            )[0]

        @tf.function(input_signature=[tf.TensorSpec([5, 2, 3], tf.float32)])
        def serve(self, inputs):
            return {"outputs": self.inner(inputs)}

    module = Cudnn()
    tf.saved_model.save(module, str(tmp_path), signatures=module.serve.get_concrete_function())
    # Only nested functions hold the op: a check that read the top-level graph would miss it.
    top_level = {
        node.op for node in tf_serving.read_saved_model(str(tmp_path)).meta_graphs[0].graph_def.node
    }
    assert "CudnnRNN" not in top_level and "CudnnRNN" in tf_serving.op_types(str(tmp_path))
    with pytest.raises(UsageError, match="CudnnRNN, which a CPU-only server cannot run"):
        tf_serving.check_portable(str(tmp_path))


def _with_pixel(value):
    """Two blank images (2, 28, 28), one pixel of the second set to ``value``."""
    images = np.zeros((2, 28, 28), np.float32)
    images[1, 5, 7] = value
    return images


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 784), np.float32), r"rows must have shape \[batch, 28, 28\]; got \[2, 784\]"),
        (
            np.zeros((2, 28, 27), np.float32),
            r"rows must have shape \[batch, 28, 28\]; got \[2, 28, 27\]",
        ),
        (np.zeros((2, 28, 28, 1), np.float32), r"rows must have shape .*; got \[2, 28, 28, 1\]"),
        (np.zeros((0, 28, 28), np.float32), r"rows is an empty batch"),
        (
            np.full((1, 28, 28), 255.0, np.float32),
            r"scaled to \[0, 1\] \(pixel / 255\); got values from 255 to 255",
        ),
        (_with_pixel(np.nan), r"rows must hold finite numbers; got 1 NaN or inf values"),
        (_with_pixel(np.inf), r"rows must hold finite numbers; got 1 NaN or inf values"),
        (_with_pixel(-np.inf), r"rows must hold finite numbers; got 1 NaN or inf values"),
    ],
    ids=[
        "rank",
        "inner_shape",
        "extra_axis",
        "empty_batch",
        "unscaled_pixels",
        "nan",
        "inf",
        "-inf",
    ],
)
def test_wrong_inputs_fail_at_the_signature(mnist, images, message):
    _, _, export_dir, _ = mnist
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        tf_serving.run_like_tf_serving(
            os.path.join(export_dir, "1"), "serving_default", {"rows": images}
        )
    # The signature's own assertion stops the request, before any layer sees it.
    assert "assertion failed" in error.value.message
    assert "rnn" not in error.value.message.lower()
    line = tf_serving.signature_error(error.value)
    assert "\n" not in line
    assert re.search(message, line), line


def test_wrong_dtype_fails_at_the_signature(mnist):
    _, _, export_dir, _ = mnist
    signature = tf.saved_model.load(os.path.join(export_dir, "1")).signatures["serving_default"]
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="expected to be a float tensor but is a int32"
    ):
        signature(rows=tf.zeros([1, 28, 28], tf.int32))


def test_rest_bodies_in_both_forms_give_the_described_answer(mnist):
    _, _, export_dir, description = mnist
    request = description["rest"]["requests"]["serving_default"]
    with open(request["request_file"]) as handle:
        body = json.load(handle)
    assert body == request["body"] and list(body) == ["instances"]
    assert request["curl"] == (
        "curl -s -X POST http://localhost:8501/v1/models/mnist/versions/1:predict "
        f"-d @{request['request_file']}"
    )
    signature = tf.saved_model.load(os.path.join(export_dir, "1")).signatures["serving_default"]
    images = random_images(3, seed=1)
    bodies = {
        "described": body,
        "instances": {"instances": images.tolist()},
        "named instances": {"instances": [{"rows": image.tolist()} for image in images]},
        "inputs": {"inputs": images.tolist()},
        "named inputs": {"inputs": {"rows": images.tolist()}},
    }
    answers = {name: signature(**rest_to_tensors(b, signature)) for name, b in bodies.items()}
    (described_row,) = request["response"]["predictions"]
    np.testing.assert_allclose(
        answers["described"]["probabilities"][0], described_row["probabilities"], atol=1e-5
    )
    assert int(answers["described"]["classes"][0]) == described_row["classes"]
    expected = tf_serving.run_like_tf_serving(
        os.path.join(export_dir, "1"), "serving_default", {"rows": images}
    )
    for name in ("instances", "named instances", "inputs", "named inputs"):
        np.testing.assert_allclose(
            answers[name]["probabilities"], expected["probabilities"], atol=1e-6, err_msg=name
        )
        np.testing.assert_array_equal(answers[name]["classes"], expected["classes"], err_msg=name)


def test_saved_model_cli_lists_the_signature_and_runs_an_npy(mnist, tmp_path):
    model, _, export_dir, _ = mnist
    version_dir = os.path.join(export_dir, "1")
    shown = subprocess.run(
        [os.path.join(VENV_BIN, "saved_model_cli"), "show", "--dir", version_dir, "--all"],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    ).stdout
    assert "signature_def['serving_default']" in shown
    for line in (
        "inputs['rows'] tensor_info:",
        "outputs['classes'] tensor_info:",
        "outputs['probabilities'] tensor_info:",
        "DT_INT64",
        "shape: (-1, 28, 28)",
    ):
        assert line in shown
    images = random_images(5, seed=2)
    np.save(tmp_path / "images.npy", images)
    subprocess.run(
        [
            os.path.join(VENV_BIN, "saved_model_cli"),
            "run",
            "--dir",
            version_dir,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"rows={tmp_path / 'images.npy'}",
            "--outdir",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    )
    classes = np.load(tmp_path / "out" / "classes.npy")
    np.testing.assert_array_equal(classes, np.argmax(_keras_probabilities(model, images), axis=-1))


def test_versions_count_up_and_never_overwrite(mnist):
    _, workdir, export_dir, _ = mnist
    first = os.path.join(export_dir, "1", "saved_model.pb")
    before = os.stat(first).st_mtime_ns
    with pytest.raises(UsageError, match=r"1 already exists and exports never overwrite"):
        export.export_workdir(workdir, export_dir, version=1)
    with pytest.raises(UsageError, match="--version must be a positive integer, got 0"):
        export.export_workdir(workdir, export_dir, version=0)
    os.makedirs(os.path.join(export_dir, "7"))  # say, a version copied in by hand
    assert export.export_workdir(workdir, export_dir)["version"] == 8
    assert export.versions(export_dir) == [1, 7, 8]
    assert os.stat(first).st_mtime_ns == before
    # No staging folder is left behind, and each export is described beside its folder.
    assert sorted(os.listdir(export_dir)) == sorted(
        ["1", "1.json", "1.serving_default.request.json"]
        + ["7", "8", "8.json", "8.serving_default.request.json"]
    )


def test_command_exports_and_prints_the_signature(mnist, tmp_path):
    _, workdir, _, _ = mnist
    export_dir = tmp_path / "models" / "digits"
    command = [sys.executable, "-m", "tfrnn.export", f"--workdir={workdir}"]
    result = subprocess.run(
        [*command, f"--export_dir={export_dir}", "--version=3"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    assert f"exported the mnist model of {workdir} to {export_dir}/3 (tag serve)" in result.stdout
    assert (
        "serving_default: rows float32 [None, 28, 28] -> "
        "classes int64 [None], probabilities float32 [None, 10]"
    ) in result.stdout
    # The model is named after its task, not after the folder.
    assert "/v1/models/mnist/versions/3:predict" in result.stdout
    assert f'-v "{export_dir}:/models/mnist" -e MODEL_NAME=mnist' in result.stdout
    assert "digits" not in result.stdout.replace(str(export_dir), "")
    assert export.versions(str(export_dir)) == [3]


def test_the_model_is_named_after_its_task_not_its_folder(mnist):
    # As MNIST training exports into its workdir: runs/mnist/export/1.
    _, workdir, _, _ = mnist
    export_dir = os.path.join(workdir, "export")
    export.export_workdir(workdir, export_dir, version=1)
    with open(os.path.join(export_dir, "1.json")) as handle:
        description = json.load(handle)
    assert description["model"] == "mnist"
    rest = description["rest"]
    assert rest["url"] == "http://localhost:8501/v1/models/mnist/versions/1:predict"
    assert rest["requests"]["serving_default"]["curl"].startswith(f"curl -s -X POST {rest['url']} ")
    assert "MODEL_NAME=mnist" in rest["model_name"] and "MODEL_NAME=mnist" in rest["serve"]
    assert "/models/export" not in json.dumps(rest)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o755), (0o027, 0o750)], ids=["022", "027"])
def test_version_folders_get_the_mode_of_a_plain_mkdir(mnist, tmp_path, umask, mode):
    _, workdir, _, _ = mnist
    previous = os.umask(umask)
    try:
        export.export_workdir(workdir, str(tmp_path / "models"))
    finally:
        os.umask(previous)
    version_dir = tmp_path / "models" / "1"
    folders = [version_dir, *(path for path in version_dir.rglob("*") if path.is_dir())]
    assert {path.name for path in folders} >= {"1", "variables"}
    assert {oct(path.stat().st_mode & 0o777) for path in folders} == {oct(mode)}
    for path in version_dir.rglob("*"):  # files are readable by whoever may enter the folders
        if path.is_file():
            assert path.stat().st_mode & 0o444 & mode == 0o444 & mode, path


def test_unusable_export_dirs_are_one_line_usage_errors(mnist, tmp_path, monkeypatch):
    _, workdir, _, _ = mnist
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(UsageError, match=f"^--export_dir {tmp_path / 'file'} is a file, not a"):
        export.export_workdir(workdir, str(tmp_path / "file"))
    inside_file = str(tmp_path / "file" / "models")
    with pytest.raises(UsageError, match=f"^cannot write to --export_dir {inside_file}: Not a"):
        export.export_workdir(workdir, inside_file)

    # What a folder without write permission gives (root, who runs some tests, ignores modes).
    def refuse(**kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(export.tempfile, "mkdtemp", refuse)
    with pytest.raises(UsageError, match=r": Permission denied$"):
        export.export_workdir(workdir, str(tmp_path / "locked"))


def test_command_refuses_a_file_as_export_dir_in_one_line(mnist, tmp_path):
    _, workdir, _, _ = mnist
    (tmp_path / "file").write_text("not a folder")
    result = subprocess.run(
        [sys.executable, "-m", "tfrnn.export", f"--workdir={workdir}"]
        + [f"--export_dir={tmp_path / 'file'}"],
        capture_output=True,
        text=True,
        env=ENV,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"error: --export_dir {tmp_path / 'file'} is a file, not a folder"
    )
    assert "Traceback" not in result.stderr


def test_command_errors_are_usage_errors(tmp_path):
    # tfrnn.cli.run turns a UsageError into one line and exit 2 (tests/test_cli.py).
    flag_values = flags.FlagValues()
    export.define_flags(flag_values)
    flag_values(["export", f"--workdir={tmp_path / 'nowhere'}", f"--export_dir={tmp_path}"])
    with pytest.raises(UsageError, match=f"^--workdir {tmp_path / 'nowhere'} does not exist$"):
        export.main([], flag_values)


def test_bad_workdirs_are_one_line_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        export.export_workdir(str(tmp_path / "missing"), str(tmp_path / "models"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="model.keras does not exist: train the model first"):
        export.export_workdir(str(tmp_path / "empty"), str(tmp_path / "models"))
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "model.keras").write_text("not a zip")
    (tmp_path / "corrupt" / "config.json").write_text('{"task": "mnist"}')
    with pytest.raises(UsageError, match="cannot load") as error:
        export.export_workdir(str(tmp_path / "corrupt"), str(tmp_path / "models"))
    assert "\n" not in str(error.value)
    features = keras.Input((5,))
    other = keras.Model(features, keras.layers.Dense(2)(features))
    # The recorded task's spec refuses a model that is not the task's, before tracing anything.
    for task, message in (
        ("mnist", r"not an MNIST model \(float32 \(batch, 28, 28\)\)$"),
        ("echo", r"not an echo model \(int32 \(batch, time\)\)$"),
    ):
        save_workdir(tmp_path / task, other, {"task": task})
        with pytest.raises(UsageError, match=r"^the model takes float32 \(None, 5\): " + message):
            export.export_workdir(str(tmp_path / task), str(tmp_path / "models"))
    assert not (tmp_path / "models").exists() or export.versions(str(tmp_path / "models")) == []


def test_the_task_recorded_in_config_json_chooses_the_export(mnist, tmp_path):
    model, _, _, _ = mnist
    assert serving_tasks() == ["echo", "mnist"]
    workdir = save_workdir(tmp_path / "run", model, {"task": "mnist"})
    config_path = os.path.join(workdir, "config.json")
    path = re.escape(config_path)
    # Without the record, an MNIST-shaped model is not exported: the shapes do not say the task.
    os.remove(config_path)
    with pytest.raises(
        UsageError,
        match=f'^{path} does not exist: the workdir records no task \\("task": "echo" or '
        '"mnist"\\)$',
    ):
        export.export_workdir(workdir, str(tmp_path / "models"))
    for config, message in (
        ({"cell": "lstm"}, f'^{path} records no task: it needs "task": "echo" or "mnist"$'),
        ({"task": "speech"}, "^no task 'speech' serves a model; the tasks are echo, mnist$"),
        # The record wins over the shapes: an MNIST model recorded as echo is refused.
        ({"task": "echo"}, r"float32 \(None, 28, 28\): not an echo model"),
    ):
        with open(config_path, "w") as handle:
            json.dump(config, handle)
        with pytest.raises(UsageError, match=message):
            export.export_workdir(workdir, str(tmp_path / "models"))
    with open(config_path, "w") as handle:
        handle.write("{not json")
    with pytest.raises(UsageError, match=f"^{path} is not JSON: "):
        export.export_workdir(workdir, str(tmp_path / "models"))
    assert not (tmp_path / "models").exists()


def test_a_full_disk_while_exporting_is_one_line_and_nothing_half_written(mnist, tmp_path):
    _, workdir, _, _ = mnist
    export_dir = tmp_path / "models"
    export.export_workdir(workdir, str(export_dir))
    before = sorted(str(path.relative_to(export_dir)) for path in export_dir.rglob("*"))
    # Writes past 64 bytes fail with EFBIG, as on a full disk (the kernel's per-process file
    # size limit binds root too, where a read-only folder would not).
    previous_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    previous_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, previous_limit[1]))
    try:
        with pytest.raises(UsageError) as error:
            export.export_workdir(workdir, str(export_dir))
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, previous_limit)
        signal.signal(signal.SIGXFSZ, previous_handler)
    message = str(error.value)
    assert "\n" not in message
    assert (
        message.startswith(f"cannot write version 2 to {export_dir} (") and "too large" in message
    )
    # Version 1 and its files are as they were; no version 2, no staging folder left.
    assert sorted(str(path.relative_to(export_dir)) for path in export_dir.rglob("*")) == before
    assert export.versions(str(export_dir)) == [1]
