"""TF Serving's REST API for an export: request bodies, the answers, and curl lines.

The REST API takes a request in row form, ``{"instances": [...]}`` (each row the value of the
only input, or a {input name: value} dict), with ``"signature_name"`` for any signature but
``serving_default``, and answers ``{"predictions": [...]}``, one {output: value} per row.
"""

from __future__ import annotations

import json
import os

import numpy as np

from tfrnn.serving.tf_serving import DEFAULT_SIGNATURE

REST_PORT = 8501


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


def rest_response(outputs: dict[str, np.ndarray]) -> dict:
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


def rest_description(model_name: str, export_dir: str, version: int, examples, answers) -> dict:
    """Writes each example request beside the version; returns the ``rest`` part of its json.

    Args:
      model_name: the name TF Serving serves the model under, ``MODEL_NAME`` (or the name in a
        model config), whatever the folder: the URLs hold it, so the two must match.
      export_dir: the model's base folder; each request goes to
        ``<version>.<signature>.request.json`` in it.
      version: the version the URLs name.
      examples: {signature: {input name: batch array}}, one request per signature.
      answers: {signature: {output name: batch array}}, what the version answers them.

    Returns:
      ``{"model_name", "serve", "url", "requests"}``: how to serve the folder, the predict URL,
      and per signature its curl line, request file, body and response.
    """
    url = f"http://localhost:{REST_PORT}/v1/models/{model_name}/versions/{version}:predict"
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
            "response": rest_response(answers[signature]),
        }
    mount = f"{os.path.abspath(export_dir)}:/models/{model_name}"
    return {
        "model_name": f"the URLs name the model {model_name}: serve {export_dir} with "
        f'MODEL_NAME={model_name} (or name: "{model_name}" in a model config), '
        "or change them to match",
        "serve": f'docker run --rm -p {REST_PORT}:{REST_PORT} -v "{mount}" '
        f"-e MODEL_NAME={model_name} tensorflow/serving",
        "url": url,
        "requests": requests,
    }
