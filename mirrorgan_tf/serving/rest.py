"""TF Serving's REST API without the sockets: the JSON codec (request bodies -> arrays by input
name, outputs -> response bodies) and the routes (RestApi), which take a path and the body's
bytes and return the answer as a dict or raise ServingError. http_server.py puts them on HTTP."""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from typing import Any, Callable

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format

from mirrorgan_tf.serving.errors import ServingError, dtype_name, invalid, not_found
from mirrorgan_tf.serving.predict import Predictor
from mirrorgan_tf.serving.registry import SIGNATURE_DEF_FIELD, Signature, signature_def_map


def _json_kind(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", dict: "an object", list: "a list"}.get(type(value), "a number")


def _is_named(value) -> bool:
    """An object naming inputs, as opposed to a value ({"b64": ...} is a binary string value)."""
    return isinstance(value, dict) and set(value) != {"b64"}


def json_array(value, dtype: tf.DType, name: str) -> np.ndarray:
    """A JSON (nested list) value -> an array of dtype; the lists must be rectangular."""
    shape, node = [], value
    while isinstance(node, list):
        shape.append(len(node))
        if not node:
            break
        node = node[0]
    leaves: list = []

    def flatten(node, depth):
        if depth == len(shape):
            if isinstance(node, list):
                raise invalid(f"input '{name}' is not a rectangular array: nested deeper than its first element")
            leaves.append(node)
            return
        if not isinstance(node, list) or len(node) != shape[depth]:
            raise invalid(f"input '{name}' is not a rectangular array: its lists at depth {depth} differ in length")
        for item in node:
            flatten(item, depth + 1)

    flatten(value, 0)
    if dtype == tf.string:
        return np.array([_json_string(v, name) for v in leaves], dtype=object).reshape(shape)
    if dtype.is_bool:
        if any(not isinstance(v, bool) for v in leaves):
            raise invalid(f"input '{name}' must hold booleans ({dtype_name(dtype)})")
    elif dtype.is_integer or dtype.is_floating:
        for v in leaves:
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise invalid(f"input '{name}' must hold numbers ({dtype_name(dtype)}), found {_json_kind(v)}")
            if dtype.is_integer and not (float(v).is_integer() and dtype.min <= v <= dtype.max):
                raise invalid(f"input '{name}' must hold integers in [{dtype.min}, {dtype.max}], found {v}")
    else:
        raise invalid(f"input '{name}': {dtype_name(dtype)} cannot be sent as JSON")
    return np.array(leaves, dtype=dtype.as_numpy_dtype).reshape(shape)


def _json_string(value, name: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise invalid(f"input '{name}': the \"b64\" value is not valid base64") from None
    raise invalid(f"input '{name}' must hold strings (DT_STRING), found {_json_kind(value)}")


def json_columns(body, signature: Signature) -> tuple[dict[str, Any], str]:
    """TF Serving's request body -> JSON values by input name, and the format, "row" or "columnar"."""
    if not isinstance(body, dict):
        raise invalid("the request body must be a JSON object with 'instances' or 'inputs'")
    if ("instances" in body) == ("inputs" in body):
        raise invalid("the request body must have exactly one of 'instances' (row format) or 'inputs' (columnar format)")
    only = next(iter(signature.inputs)) if len(signature.inputs) == 1 else None
    takes = ", ".join(sorted(signature.inputs))
    if "inputs" in body:
        inputs = body["inputs"]
        if _is_named(inputs):
            return inputs, "columnar"
        if only is None:
            raise invalid(f"'inputs' must be an object naming the inputs of signature '{signature.name}': {takes}")
        return {only: inputs}, "columnar"
    instances = body["instances"]
    if not isinstance(instances, list):
        raise invalid("'instances' must be a list with one element per example")
    if not instances:
        raise invalid("empty batch: 'instances' is an empty list")
    named = [_is_named(i) for i in instances]
    if all(named):
        names = set(instances[0])
        for i, instance in enumerate(instances):
            if set(instance) != names:
                raise invalid(f"instance {i} names the inputs {sorted(instance)}, instance 0 names {sorted(names)}")
        return {n: [instance[n] for instance in instances] for n in names}, "row"
    if any(named):
        raise invalid("'instances' mixes objects naming inputs with plain values")
    if only is None:
        raise invalid(f"each instance must be an object naming the inputs of signature '{signature.name}': {takes}")
    return {only: instances}, "row"


def _json_value(array: np.ndarray):
    if array.dtype != object:
        return array.tolist()

    def text(v):
        if isinstance(v, list):
            return [text(x) for x in v]
        try:
            return v.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(v).decode("ascii")}

    return text(array.tolist())


def json_outputs(outputs: dict[str, np.ndarray], fmt: str) -> dict:
    """Outputs -> TF Serving's response body: a single output is not named."""
    if fmt == "row":
        if len(outputs) == 1:
            return {"predictions": _json_value(next(iter(outputs.values())))}
        batch = len(next(iter(outputs.values())))
        return {"predictions": [{n: _json_value(a[i]) for n, a in outputs.items()} for i in range(batch)]}
    if len(outputs) == 1:
        return {"outputs": _json_value(next(iter(outputs.values())))}
    return {"outputs": {n: _json_value(a) for n, a in outputs.items()}}


def _proto_json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)



def decode_body(raw: bytes):
    """A request body's bytes -> its JSON value."""
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise invalid(f"the request body is not valid JSON: {e}") from None


class RestApi:
    """The REST routes over a Predictor, with no sockets: `post(path, read_body)` and `get(path)`
    return the JSON answer (a dict) or raise ServingError. read_body is called only once the path
    is known to be a route, so a request to an unknown path leaves its body unread."""

    PREDICT = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(\w+)", re.IGNORECASE)
    MODEL = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE)

    def __init__(self, predictor: Predictor):
        self.predictor = predictor

    def post(self, path: str, read_body: Callable[[], bytes]) -> dict:
        path = urllib.parse.urlsplit(path).path
        match = self.PREDICT.fullmatch(path)
        if not match:
            raise not_found(f"no endpoint POST {path}; predictions go to POST /v1/models/NAME[/versions/N]:predict")
        name, version, label, method = match.groups()
        body = decode_body(read_body())
        if method.lower() != "predict":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f":{method} is not implemented: the model has no such signature; use :predict")
        validate = self.predictor.validate
        loaded = validate.model(urllib.parse.unquote(name), int(version) if version else None,
                                urllib.parse.unquote(label or ""))
        signature_name = body.get("signature_name", "") if isinstance(body, dict) else ""
        if not isinstance(signature_name, str):
            raise invalid("'signature_name' must be a string")
        signature = validate.signature(loaded, signature_name)
        columns, fmt = json_columns(body, signature)
        validate.input_names(signature, columns)
        arrays = {n: json_array(v, signature.inputs[n].dtype, n) for n, v in columns.items()}
        validate.inputs(signature, {n: (signature.inputs[n].dtype, a.shape) for n, a in arrays.items()})
        result = self.predictor.run(signature, arrays, sorted(signature.outputs))
        return json_outputs(result, fmt)

    def get(self, path: str) -> dict:
        path = urllib.parse.urlsplit(path).path
        match = self.MODEL.fullmatch(path)
        if not match:
            raise not_found(f"no endpoint GET {path}; try GET /v1/models/NAME[/versions/N][/metadata]")
        name, version, label, metadata = match.groups()
        validate = self.predictor.validate
        name, label = urllib.parse.unquote(name), urllib.parse.unquote(label or "")
        version = int(version) if version else None
        if metadata:
            loaded = validate.model(name, version, label)
            return {"model_spec": {"name": name, "signature_name": "", "version": str(loaded.version)},
                    "metadata": {SIGNATURE_DEF_FIELD: _proto_json(signature_def_map(loaded))}}
        if name != validate.registry.name or label:
            validate.model(name, version, label)  # raises the matching NOT_FOUND
        return _proto_json(validate.registry.status(version))
