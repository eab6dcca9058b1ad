"""A SavedModel as TF Serving sees it: its graph's ops, its signatures, and a run of one.

TF Serving's C++ server loads a version folder with the TF1 loader (tag ``serve``) into a
graph session and feeds and fetches a signature's tensors by name. :func:`run_like_tf_serving`
does the same, so that what it answers is what the server answers; :func:`signatures` reads
what the server lists, and :func:`check_portable` refuses ops a CPU-only server cannot run.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tfrnn.errors import UsageError

SERVE_TAG = "serve"
# The signature a request without "signature_name" runs.
DEFAULT_SIGNATURE = "serving_default"


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
