"""SavedModels for TensorFlow Serving, from a training workdir.

``python -m tfrnn.export --workdir runs/mnist --export_dir models/mnist`` reads the workdir's
``model.keras`` (and ``metrics.json``, for the record) and writes::

    models/mnist/
      1/                               the SavedModel (tag ``serve``): saved_model.pb, variables/
      1.json                           its signatures (names, dtypes, shapes) and curl commands
      1.serving_default.request.json   a ready REST request body for each signature

TF Serving serves ``<export_dir>/<integer version>/`` and ignores the other files. A new
export takes the next free version (or ``--version N``) and never overwrites one: it is
written to a hidden folder and renamed into place, so a server that watches the folder never
sees half a model. Version folders get the mode of a plain ``mkdir`` (0755 under umask 022),
so a server running as another user can read them. The model is named after its task,
``mnist`` or ``echo``, whatever the folder: the curl commands in ``1.json`` use that name, and
the server must serve the folder under it (``MODEL_NAME=mnist``).

Which export a workdir gets follows from the model's input:

* MNIST, float32 images (batch, 28, 28): signature ``serving_default`` takes ``rows``
  float32 [None, 28, 28], pixels scaled to [0, 1] (pixel / 255, as in training; any
  standardisation is a layer of the model), and returns ``probabilities`` float32 [None, 10]
  and ``classes`` int64 [None].
* Echo, int32 symbols (batch, time): a stateless copy of the model with the same weights (a
  stateful model would share one state among all clients and fix the batch size), with the
  state passed in and out explicitly. ``serving_default`` takes ``symbols`` int32
  [None, None] (0 or 1), starts from a zero state and returns per-step ``probabilities``
  float32 [None, None, 2] and the final state ``h`` (and ``c`` for an LSTM), each float32
  [None, state_size]. ``step`` takes one symbol per stream, ``symbols`` int32 [None], and the
  state ``h`` (and ``c``), and returns ``probabilities`` float32 [None, 2] and the new state:
  a client of a stateless server streams by feeding each answer's state into the next call.

Every signature checks its inputs first (rank and inner shape, empty batch, NaN or infinite
values, value range) and fails with a message that names the input, instead of an error from
deep inside the graph: a server feeds request tensors straight to the graph without checking
them against the signature's shapes. The exported graph is checked for ``CudnnRNN*`` ops,
which a CPU-only server cannot run, and run the way TF Serving runs it
(:func:`run_like_tf_serving`) against the Keras model before the version is put in place.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging
from tensorflow.core.protobuf import saved_model_pb2

from tfrnn.errors import UsageError
from tfrnn.layers.cells import ConcatRNNCell
from tfrnn.tasks.echo.model import NUM_CLASSES, build_echo_model, state_sizes

IMAGE_SIZE = 28
STATE_NAMES = ("h", "c")  # h for every cell; c too for an LSTM
SERVE_TAG = "serve"
DEFAULT_SIGNATURE = "serving_default"
STEP_SIGNATURE = "step"
REST_PORT = 8501
# Sequence of the echo example requests: long enough to show the t-3 and t-8 echoes.
EXAMPLE_SYMBOLS = [1, 0, 0, 1, 1, 0, 1, 0, 0, 0, 1, 1]
# Outputs of the export and of the Keras model must agree this closely.
SELF_CHECK_TOLERANCE = 1e-5


def load_workdir(workdir: str) -> tuple[keras.Model, dict]:
    """The trained model of ``workdir`` (``model.keras``) and its run config (or ``{}``)."""
    model_path = os.path.join(workdir, "model.keras")
    if not os.path.isdir(workdir):
        raise UsageError(f"--workdir {workdir} does not exist")
    if not os.path.isfile(model_path):
        raise UsageError(f"{model_path} does not exist: train the model first")
    try:
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as error:  # a zip, JSON or weights problem: all mean a bad file
        raise UsageError(f"cannot load {model_path}: {error}".splitlines()[0]) from error
    config = {}
    metrics_path = os.path.join(workdir, "metrics.json")
    if os.path.isfile(metrics_path):
        try:
            with open(metrics_path) as handle:
                config = json.load(handle).get("config", {})
        except (ValueError, AttributeError) as error:
            raise UsageError(f"{metrics_path} is not a metrics file: {error}") from error
    return model, config


def task_of(model: keras.Model) -> str:
    """``mnist`` or ``echo``, from the model's input spec."""
    (model_input,) = model.inputs
    shape, dtype = tuple(model_input.shape), model_input.dtype
    if "float" in dtype and shape[1:] == (IMAGE_SIZE, IMAGE_SIZE):
        return "mnist"
    if "int" in dtype and len(shape) == 2:
        return "echo"
    raise UsageError(
        f"the model takes {dtype} {shape}: neither an MNIST model (float32 (batch, 28, 28)) "
        "nor an echo model (int32 (batch, time))"
    )


def _assert_in_order(checks) -> tf.Operation:
    """Assert ops for ``checks``, each computed and run only after the previous one passed.

    ``checks`` are functions that return ``(condition, message data)``. Each is called under
    a control dependency on the previous assert, so that a check may assume what the earlier
    ones established: a reduction over the axes the signature declares must not run on a
    tensor of another rank before the shape check has refused it.
    """
    previous = []
    for check in checks:
        with tf.control_dependencies(previous):
            condition, data = check()
            previous = [tf.debugging.Assert(condition, data, summarize=8)]
    return previous[0]


def _shape_check(tensor, name: str, expected: tuple, described: str):
    """(condition, data) that ``tensor`` has ``expected``'s rank and its non-None sizes."""
    # Raw ops: tf.rank (and tf.shape, where all sizes are known) fold to constants taken from
    # the signature, but a server feeds whatever the request holds: check the real shape.
    actual = tf.raw_ops.Shape(input=tensor)
    rank_ok = tf.equal(tf.raw_ops.Rank(input=tensor), len(expected))
    # Pad with -1 so that indexing is safe whatever the rank.
    padded = tf.concat([actual, tf.fill([len(expected)], -1)], axis=0)
    conditions = [rank_ok] + [
        tf.equal(padded[axis], size) for axis, size in enumerate(expected) if size is not None
    ]
    # The shape as text, "[2, 784]": the Assert would print a one-element shape as a number.
    shape_text = tf.strings.join(
        ["[", tf.strings.reduce_join(tf.strings.as_string(actual), separator=", "), "]"]
    )
    message = f"{name} must have shape {described}; got"
    return tf.reduce_all(tf.stack(conditions)), [message, shape_text]


def _in_range(tensor, name: str, low, high, described: str):
    """(condition, data) that every value of ``tensor`` lies in [low, high]."""
    return (
        tf.reduce_all((tensor >= low) & (tensor <= high)),
        [
            f"{name} must be {described}; got values from",
            tf.reduce_min(tensor),
            "to",
            tf.reduce_max(tensor),
        ],
    )


def _finite(tensor, name: str):
    """(condition, data) that every value of ``tensor`` is a finite number (no NaN, no ±inf)."""
    finite = tf.math.is_finite(tensor)
    bad = tf.size(finite) - tf.math.count_nonzero(finite, dtype=tf.int32)
    return tf.reduce_all(finite), [
        f"{name} must hold finite numbers; got",
        bad,
        "NaN or inf values",
    ]


def _after(checks, *tensors):
    """``tensors`` that depend on the assert ops of ``checks``, so nothing runs before them."""
    with tf.control_dependencies([_assert_in_order(checks)]):
        return [tf.identity(tensor) for tensor in tensors]


def mnist_archive(model: keras.Model) -> keras.export.ExportArchive:
    """The MNIST serving module: ``serving_default`` (rows) -> probabilities, classes."""
    archive = keras.export.ExportArchive()
    # Tracking the model exports its variables: a signature that only closed over them would
    # load in TF2 but not in TF Serving's (TF1 session) loader.
    archive.track(model)

    def serve(rows):
        (rows,) = _after(
            [
                lambda: _shape_check(
                    rows, "rows", (None, IMAGE_SIZE, IMAGE_SIZE), "[batch, 28, 28]"
                ),
                lambda: (tf.size(rows) > 0, ["rows is an empty batch: send at least one image"]),
                lambda: _finite(rows, "rows"),
                lambda: _in_range(rows, "rows", 0.0, 1.0, "pixels scaled to [0, 1] (pixel / 255)"),
            ],
            rows,
        )
        probabilities = tf.nn.softmax(model(rows, training=False), axis=-1)
        return {"probabilities": probabilities, "classes": tf.argmax(probabilities, axis=-1)}

    archive.add_endpoint(
        DEFAULT_SIGNATURE,
        serve,
        input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE], tf.float32, name="rows")],
    )
    return archive


def _cell_kind(cell) -> str:
    for kind, cell_class in (
        ("lstm", keras.layers.LSTMCell),
        ("simple", keras.layers.SimpleRNNCell),
        ("concat", ConcatRNNCell),
    ):
        if isinstance(cell, cell_class):
            return kind
    raise UsageError(f"the echo model's cell is a {type(cell).__name__}, not one of tfrnn's")


def stateless_echo_model(model: keras.Model) -> tuple[keras.Model, str, int]:
    """A stateless copy of a trained echo model that takes and returns its state.

    Returns ``(copy, kind, state_size)``; the copy maps ``[symbols (batch, time), *states
    (batch, state_size)]`` to ``[logits (batch, time, 2), *final states]`` with ``model``'s
    weights, whatever ``model``'s batch size, statefulness or unrolling.
    """
    try:
        rnn = model.get_layer("rnn")
    except ValueError as error:
        raise UsageError("the echo model has no layer named 'rnn'") from error
    kind, state_size = _cell_kind(rnn.cell), rnn.cell.units
    copy = build_echo_model(kind, state_size, explicit_state=True)
    try:
        copy.set_weights(model.get_weights())
    except ValueError as error:
        raise UsageError(f"the echo model's weights do not fit a {kind} model: {error}") from error
    return copy, kind, state_size


def echo_archive(model: keras.Model) -> keras.export.ExportArchive:
    """The echo serving module: ``serving_default`` (whole sequences) and ``step`` (streams)."""
    stream_model, kind, state_size = stateless_echo_model(model)
    names = STATE_NAMES[: len(state_sizes(kind, state_size))]
    archive = keras.export.ExportArchive()
    archive.track(stream_model)

    def symbol_range(symbols):
        return _in_range(symbols, "symbols", 0, NUM_CLASSES - 1, "0 or 1")

    def one_row_per_symbol(state, name, symbols):
        rows, streams = tf.shape(state)[0], tf.shape(symbols)[0]
        message = [f"{name} must have one row per symbol; got", rows, "rows for", streams]
        return tf.equal(rows, streams), [*message, "symbols"]

    def serve(symbols):
        (symbols,) = _after(
            [
                lambda: _shape_check(symbols, "symbols", (None, None), "[batch, time]"),
                lambda: (
                    tf.size(symbols) > 0,
                    ["symbols is empty: send at least one step of one series"],
                ),
                lambda: symbol_range(symbols),
            ],
            symbols,
        )
        zeros = tf.zeros([tf.shape(symbols)[0], state_size])
        logits, *final_states = stream_model([symbols, *[zeros] * len(names)], training=False)
        return {
            "probabilities": tf.nn.softmax(logits, axis=-1),
            **dict(zip(names, final_states, strict=True)),
        }

    def step(symbols, states):
        checks = [
            lambda: _shape_check(symbols, "symbols", (None,), "[batch] (one symbol per stream)"),
            lambda: (tf.size(symbols) > 0, ["symbols is empty: send at least one stream"]),
        ]
        for name, state in zip(names, states, strict=True):
            shape = f"[batch, {state_size}]"
            checks.append(functools.partial(_shape_check, state, name, (None, state_size), shape))
            checks.append(functools.partial(one_row_per_symbol, state, name, symbols))
            checks.append(functools.partial(_finite, state, name))
        checks.append(lambda: symbol_range(symbols))
        symbols, *states = _after(checks, symbols, *states)
        logits, *new_states = stream_model([symbols[:, None], *states], training=False)
        return {
            "probabilities": tf.nn.softmax(logits[:, 0], axis=-1),
            **dict(zip(names, new_states, strict=True)),
        }

    symbols_spec = tf.TensorSpec([None], tf.int32, name="symbols")
    state_specs = [tf.TensorSpec([None, state_size], tf.float32, name=name) for name in names]
    # The signature's input names are the Python argument names, so each state count gets
    # a function with named arguments.
    if len(names) == 1:

        def step_h(symbols, h):
            return step(symbols, [h])

        step_fn = step_h
    else:

        def step_h_c(symbols, h, c):
            return step(symbols, [h, c])

        step_fn = step_h_c
    archive.add_endpoint(
        DEFAULT_SIGNATURE,
        serve,
        input_signature=[tf.TensorSpec([None, None], tf.int32, name="symbols")],
    )
    archive.add_endpoint(STEP_SIGNATURE, step_fn, input_signature=[symbols_spec, *state_specs])
    return archive


def example_inputs(task: str, declared: dict) -> dict[str, dict[str, np.ndarray]]:
    """A small valid request for each signature: {signature: {input name: batch array}}.

    ``declared`` is :func:`signatures` of the export: the echo ``step`` example holds a zero
    state for every state input the signature declares.
    """
    if task == "mnist":
        # A vertical stroke, roughly a handwritten 1.
        image = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
        image[4:24, 13:15] = 1.0
        return {DEFAULT_SIGNATURE: {"rows": image[None]}}
    states = {
        name: np.zeros((1, info["shape"][1]), np.float32)
        for name, info in declared[STEP_SIGNATURE]["inputs"].items()
        if name != "symbols"
    }
    return {
        DEFAULT_SIGNATURE: {"symbols": np.array([EXAMPLE_SYMBOLS], np.int32)},
        STEP_SIGNATURE: {"symbols": np.array([EXAMPLE_SYMBOLS[0]], np.int32), **states},
    }


def keras_reference(task: str, model: keras.Model, signature: str, inputs: dict) -> dict:
    """What the trained Keras model says for ``inputs``: the outputs a signature must match."""
    if task == "mnist":
        probabilities = keras.ops.softmax(model(inputs["rows"], training=False), axis=-1)
        return {"probabilities": np.asarray(probabilities), "classes": np.argmax(probabilities, -1)}
    # Echo: every signature starts from the state given; the reference starts from zeros,
    # so a step is the first step of a one-step sequence.
    symbols = inputs["symbols"] if signature == DEFAULT_SIGNATURE else inputs["symbols"][:, None]
    rnn = model.get_layer("rnn")
    batch = len(symbols)
    if rnn.stateful:
        # A stateful model takes its fixed batch only, and starts from the state it holds.
        fixed_batch = model.inputs[0].shape[0]
        symbols = np.resize(symbols, (fixed_batch, symbols.shape[1]))
        rnn.reset_state()
    logits = model(symbols, training=False)[:batch]
    if rnn.stateful:
        rnn.reset_state()
    probabilities = np.asarray(keras.ops.softmax(logits, axis=-1))
    return {
        "probabilities": probabilities if signature == DEFAULT_SIGNATURE else probabilities[:, 0]
    }


def read_saved_model(version_dir: str) -> saved_model_pb2.SavedModel:
    """The ``saved_model.pb`` of ``version_dir``: what TF Serving reads first."""
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(version_dir, "saved_model.pb"), "rb") as handle:
        proto.ParseFromString(handle.read())
    return proto


def op_types(version_dir: str) -> set[str]:
    """Every op type in the SavedModel: its graphs and the functions in their libraries."""
    types = set()
    for meta_graph in read_saved_model(version_dir).meta_graphs:
        graph = meta_graph.graph_def
        types.update(node.op for node in graph.node)
        for function in graph.library.function:
            types.update(node.op for node in function.node_def)
    return types


def check_portable(version_dir: str) -> None:
    """Raises UsageError if the graph has ``CudnnRNN*`` ops, which need a GPU to run."""
    cudnn = sorted(op for op in op_types(version_dir) if op.startswith("CudnnRNN"))
    if cudnn:
        raise UsageError(
            f"the exported graph contains {', '.join(cudnn)}, which a CPU-only server cannot "
            "run; export on a machine without a GPU (CUDA_VISIBLE_DEVICES='')"
        )


def _tensor_info(info) -> dict:
    shape = [None if dim.size < 0 else dim.size for dim in info.tensor_shape.dim]
    return {"dtype": tf.dtypes.as_dtype(info.dtype).name, "shape": shape}


def _tensor_infos(infos) -> dict:
    # Sorted: a protobuf map has no fixed order, and descriptions should not change between runs.
    return {name: _tensor_info(infos[name]) for name in sorted(infos)}


def signatures(version_dir: str) -> dict:
    """{signature name: {method, inputs, outputs}} as the ``serve`` meta graph declares them.

    Inputs and outputs map a name to ``{"dtype": "float32", "shape": [None, 28, 28]}``.
    """
    for meta_graph in read_saved_model(version_dir).meta_graphs:
        if SERVE_TAG in meta_graph.meta_info_def.tags:
            return {
                name: {
                    "method": signature.method_name,
                    "inputs": _tensor_infos(signature.inputs),
                    "outputs": _tensor_infos(signature.outputs),
                }
                for name, signature in sorted(meta_graph.signature_def.items())
                if not name.startswith("__")  # __saved_model_init_op is no signature
            }
    raise UsageError(f"{version_dir} has no meta graph tagged '{SERVE_TAG}'")


def run_like_tf_serving(version_dir: str, signature: str, inputs: dict) -> dict[str, np.ndarray]:
    """Runs ``signature`` on ``inputs`` (name -> array) the way TF Serving's C++ server does.

    TF1 loader in a graph session, tag ``serve``, feeds and fetches by the signature's tensor
    names. Like the server, it does not check the fed shapes against the signature (each
    input goes through a placeholder of unknown shape), so the signature's own checks are
    what a bad request meets; values are converted to the signature's dtype, as the REST API
    converts JSON numbers.
    """
    declared = signatures(version_dir)[signature]["inputs"]
    unknown = sorted(set(inputs) - set(declared))
    if unknown:
        raise ValueError(f"signature {signature} has no input {', '.join(unknown)}")
    logger = tf.get_logger()
    previous_level = logger.level
    # The TF1 loader warns that it is deprecated in TF2; it is still what the server does.
    logger.setLevel("ERROR")
    try:
        with tf.Graph().as_default() as graph, tf.compat.v1.Session(graph=graph) as session:
            proto = read_saved_model(version_dir)
            (meta_graph,) = [m for m in proto.meta_graphs if SERVE_TAG in m.meta_info_def.tags]
            signature_def = meta_graph.signature_def[signature]
            placeholders = {
                name: tf.compat.v1.placeholder(signature_def.inputs[name].dtype, shape=None)
                for name in declared
            }
            tf.compat.v1.saved_model.loader.load(
                session,
                [SERVE_TAG],
                version_dir,
                input_map={
                    signature_def.inputs[name].name: placeholders[name] for name in declared
                },
            )
            fetches = {name: info.name for name, info in signature_def.outputs.items()}
            return session.run(
                fetches, {placeholders[name]: value for name, value in inputs.items()}
            )
    finally:
        logger.setLevel(previous_level)


def signature_error(error: Exception) -> str:
    """The one line of a failed signature call that says what was wrong with the request."""
    message = getattr(error, "message", str(error))
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for line in lines:
        if line.startswith("assertion failed:"):
            # "assertion failed: [rows must ...; got] [[2, 784]]" -> "rows must ...; got [2, 784]":
            # the Assert prints each of its data items in brackets.
            items = line.removeprefix("assertion failed:").strip()[1:-1].split("] [")
            return " ".join(items)
    skipped = ("Graph execution error", "Detected at node", "<stack traces")
    useful = [line for line in lines if not line.startswith(skipped)]
    return (useful or lines or [type(error).__name__])[0]


def versions(export_dir: str) -> list[int]:
    """The integer version folders in ``export_dir``, in increasing order."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(
        int(name)
        for name in os.listdir(export_dir)
        if name.isdigit() and os.path.isdir(os.path.join(export_dir, name))
    )


def rest_request(signature: str, inputs: dict[str, np.ndarray]) -> dict:
    """The REST API's row ("instances") form of a request for ``inputs``."""
    if len(inputs) == 1:
        ((_, values),) = inputs.items()
        instances = values.tolist()
    else:
        batch = len(next(iter(inputs.values())))
        instances = [
            {name: values[row].tolist() for name, values in inputs.items()} for row in range(batch)
        ]
    body = {"instances": instances}
    if signature != DEFAULT_SIGNATURE:
        body = {"signature_name": signature, **body}
    return body


def _rest_response(outputs: dict[str, np.ndarray]) -> dict:
    """The REST API's answer to a row-form request: one {output: value} per instance."""
    batch = len(next(iter(outputs.values())))
    rounded = {
        name: np.round(values.astype(np.float64), 6) if values.dtype.kind == "f" else values
        for name, values in outputs.items()
    }
    return {
        "predictions": [
            {name: values[row].tolist() for name, values in rounded.items()} for row in range(batch)
        ]
    }


def _folder_mode() -> int:
    """The mode a plain ``mkdir`` gives a new folder: 0o777 less the umask (0o755 for 022)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o777 & ~umask


def _make_readable(folder: str) -> None:
    """Gives ``folder`` and every folder in it the mode of a plain ``mkdir``.

    The staging folder comes from ``mkdtemp`` (mode 0700) and the rename keeps its mode: a
    TF Serving process running as another user could not read a version folder left so.
    """
    mode = _folder_mode()
    for path, _, _ in os.walk(folder):
        os.chmod(path, mode)


def _make_staging(export_dir: str) -> str:
    """A new hidden folder in ``export_dir`` (created if missing); one-line UsageError if not."""
    if os.path.exists(export_dir) and not os.path.isdir(export_dir):
        raise UsageError(f"--export_dir {export_dir} is a file, not a folder")
    try:
        os.makedirs(export_dir, exist_ok=True)
        # Hidden and non-numeric: TF Serving ignores it until it is renamed to a version.
        return tempfile.mkdtemp(prefix=".export-", dir=export_dir)
    except OSError as error:
        raise UsageError(f"cannot write to --export_dir {export_dir}: {error.strerror}") from error


def _write_checked(task: str, model: keras.Model, staging: str) -> tuple[dict, dict, dict]:
    """Writes the SavedModel to ``staging`` and checks it against ``model``.

    Returns ``(signatures, example inputs, answers)``: :func:`signatures`, and per signature
    the example request (:func:`example_inputs`) and the outputs TF Serving's path gives it.
    """
    archive = mnist_archive(model) if task == "mnist" else echo_archive(model)
    archive.write_out(staging, verbose=False)
    check_portable(staging)
    described = signatures(staging)
    examples = example_inputs(task, described)
    answers = {}
    for signature, inputs in examples.items():
        answers[signature] = run_like_tf_serving(staging, signature, inputs)
        expected = keras_reference(task, model, signature, inputs)
        for name, value in expected.items():
            # A mismatch is a bug in this module, not a user error: let it raise.
            np.testing.assert_allclose(
                answers[signature][name],
                value,
                atol=SELF_CHECK_TOLERANCE,
                err_msg=f"export self-check: {signature} output {name} differs from Keras",
            )
    return described, examples, answers


def _rest_description(task: str, export_dir: str, version: int, examples, answers) -> dict:
    """Writes each example request beside the version; returns the ``rest`` part of its json.

    The model is named after its task, whatever the folder: the URLs hold the name TF Serving
    serves it under, ``MODEL_NAME`` (or the name in a model config), which must match.
    """
    url = f"http://localhost:{REST_PORT}/v1/models/{task}/versions/{version}:predict"
    requests = {}
    for signature, inputs in examples.items():
        request_path = os.path.join(export_dir, f"{version}.{signature}.request.json")
        body = rest_request(signature, inputs)
        with open(request_path, "w") as handle:
            json.dump(body, handle)
        requests[signature] = {
            "curl": f"curl -s -X POST {url} -d @{request_path}",
            "request_file": request_path,
            "body": body,
            "response": _rest_response(answers[signature]),
        }
    mount = f"{os.path.abspath(export_dir)}:/models/{task}"
    return {
        "model_name": f"the URLs name the model {task}: serve {export_dir} with "
        f'MODEL_NAME={task} (or name: "{task}" in a model config), or change them to match',
        "serve": f'docker run --rm -p {REST_PORT}:{REST_PORT} -v "{mount}" '
        f"-e MODEL_NAME={task} tensorflow/serving",
        "url": url,
        "requests": requests,
    }


def export_workdir(workdir: str, export_dir: str, version: int | None = None) -> dict:
    """Exports ``workdir``'s model to ``export_dir/<version>/`` and describes it beside it.

    Args:
      workdir: a training workdir with ``model.keras`` (and ``metrics.json``).
      export_dir: the model's base folder, the one TF Serving is pointed at.
      version: the version number; ``None`` for one above the highest there.

    Returns:
      The description written to ``export_dir/<version>.json``: model name (the task),
      version, signatures, REST requests with curl commands and the answers this version
      gives them.
    """
    if version is not None and version <= 0:
        raise UsageError(f"--version must be a positive integer, got {version}")
    model, config = load_workdir(workdir)
    task = task_of(model)
    existing = versions(export_dir)
    version = version if version is not None else (existing[-1] + 1 if existing else 1)
    version_dir = os.path.join(export_dir, str(version))
    if os.path.exists(version_dir):
        raise UsageError(
            f"{version_dir} already exists and exports never overwrite; leave out --version to "
            f"take the next free one ({existing[-1] + 1 if existing else 1})"
        )
    staging = _make_staging(export_dir)
    try:
        described, examples, answers = _write_checked(task, model, staging)
        _make_readable(staging)
        os.rename(staging, version_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    description = {
        "model": task,
        "task": task,
        "version": version,
        "saved_model": version_dir,
        "tag": SERVE_TAG,
        "inputs": _INPUT_NOTES[task],
        "signatures": described,
        "rest": _rest_description(task, export_dir, version, examples, answers),
        "source": {"workdir": workdir, "config": config},
    }
    with open(os.path.join(export_dir, f"{version}.json"), "w") as handle:
        json.dump(description, handle, indent=1)
    return description


_INPUT_NOTES = {
    "mnist": "rows: float32 [batch, 28, 28], one 28x28 grayscale image per row of the batch, "
    "white digit on black, pixels scaled to [0, 1] (pixel / 255) as in training",
    "echo": "symbols: int32, 0 or 1. serving_default takes whole series [batch, time] and "
    "starts from a zero state; step takes one symbol per stream [batch] and the state "
    "(h, and c for an LSTM: float32 [batch, state_size], zeros to start) and returns the "
    "next state to send with the next symbol",
}


def main(argv, flag_values=None):
    """The command: export, then print the signatures, how to serve it and curl commands."""
    del argv  # flags only
    values = flags.FLAGS if flag_values is None else flag_values
    # TensorFlow's SavedModel writer logs every asset and shard at INFO.
    logging.set_verbosity(logging.WARNING)
    # Trace on the CPU: a graph traced on a GPU may hold cuDNN ops a CPU server cannot run.
    tf.config.set_visible_devices([], "GPU")
    description = export_workdir(values.workdir, values.export_dir, values.version)
    print(
        f"exported the {description['task']} model of {values.workdir} to "
        f"{description['saved_model']} (tag serve)"
    )
    for name, signature in description["signatures"].items():
        print(f"  {name}: {_describe(signature['inputs'])} -> {_describe(signature['outputs'])}")
    print(f"description: {os.path.join(values.export_dir, str(description['version']))}.json")
    print(f"serve it as {description['model']}: {description['rest']['serve']}")
    for name, request in description["rest"]["requests"].items():
        print(f"try ({name}): {request['curl']}")


def _describe(tensors: dict) -> str:
    return ", ".join(f"{name} {info['dtype']} {info['shape']}" for name, info in tensors.items())


def define_flags(flag_values=None):
    """Defines the command's flags (in ``flag_values``, or absl's global flags)."""
    flag_values = flags.FLAGS if flag_values is None else flag_values
    flags.DEFINE_string(
        "workdir", None, "training workdir holding model.keras", flag_values=flag_values
    )
    flags.DEFINE_string(
        "export_dir", None, "model base folder, e.g. models/mnist", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "version", None, "version number; default: the next free one", flag_values=flag_values
    )
    flags.mark_flags_as_required(["workdir", "export_dir"], flag_values=flag_values)
