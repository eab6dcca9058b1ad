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


class TFServingSession:
    """A version folder loaded the way TF Serving's C++ server loads it, to run many requests.

    TF1 loader in a graph session, tag ``serve``; every signature's inputs are fed through
    placeholders of unknown shape and its outputs fetched by tensor name. Like the server, it
    does not check the fed shapes against the signature, so the signature's own checks are
    what a bad request meets. Values are converted to the signature's dtype as the REST API
    converts JSON (:func:`to_signature_dtype`). Use as a context manager, or call close().
    """

    def __init__(self, version_dir: str):
        self.declared = signatures(version_dir)
        self._graph = tf.Graph()
        self._session = tf.compat.v1.Session(graph=self._graph)
        self._placeholders, self._fetches, input_map = {}, {}, {}
        logger = tf.get_logger()
        previous_level = logger.level
        # The TF1 loader warns that it is deprecated in TF2; it is still what the server does.
        logger.setLevel("ERROR")
        try:
            with self._graph.as_default():
                proto = read_saved_model(version_dir)
                (meta_graph,) = [m for m in proto.meta_graphs if SERVE_TAG in m.meta_info_def.tags]
                for name in self.declared:
                    signature_def = meta_graph.signature_def[name]
                    for input_name, info in signature_def.inputs.items():
                        placeholder = tf.compat.v1.placeholder(info.dtype, shape=None)
                        self._placeholders[name, input_name] = placeholder
                        input_map[info.name] = placeholder
                    outputs = signature_def.outputs.items()
                    self._fetches[name] = {key: info.name for key, info in outputs}
                tf.compat.v1.saved_model.loader.load(
                    self._session, [SERVE_TAG], version_dir, input_map=input_map
                )
        finally:
            logger.setLevel(previous_level)

    def run(self, signature: str, inputs: dict) -> dict[str, np.ndarray]:
        """The outputs of ``signature`` for ``inputs`` (input name -> array of a batch)."""
        declared = self.declared[signature]["inputs"]
        unknown = sorted(set(inputs) - set(declared))
        if unknown:
            raise ValueError(f"signature {signature} has no input {', '.join(unknown)}")
        feeds = {
            self._placeholders[signature, name]: to_signature_dtype(
                name, value, declared[name]["dtype"]
            )
            for name, value in inputs.items()
        }
        return self._session.run(self._fetches[signature], feeds)

    def close(self) -> None:
        self._session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def to_signature_dtype(name: str, value, dtype: str) -> np.ndarray:
    """``value`` as an array of ``dtype``, or a ValueError naming the input, as TF Serving's
    REST API converts JSON: numbers only, and whole numbers within range for an integer
    input (a fraction, NaN, inf or an out-of-range number is refused, never wrapped)."""
    value = np.asarray(value)
    if value.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold numbers ({dtype}); got {value.dtype}")
    if np.dtype(dtype).kind in "iu":
        limits = np.iinfo(dtype)
        with np.errstate(invalid="ignore", over="ignore"):  # NaN and float16's inf compare False
            whole = np.all(np.mod(value, 1) == 0) if value.dtype.kind == "f" else True
            inside = np.all((value >= limits.min) & (value <= limits.max))
        if not (whole and inside):
            raise ValueError(
                f"{name} must hold whole numbers within {dtype}'s range; got fractions, NaN, "
                "inf or numbers out of range"
            )
    return value.astype(dtype)


def run_like_tf_serving(version_dir: str, signature: str, inputs: dict) -> dict[str, np.ndarray]:
    """Runs ``signature`` on ``inputs`` (name -> array) once, the way TF Serving does
    (:class:`TFServingSession`)."""
    with TFServingSession(version_dir) as session:
        return session.run(signature, inputs)


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
