"""TF Serving's REST API without the sockets: the JSON codec (request bodies -> arrays by input
name, outputs -> response bodies) and the routes (RestApi), which take a path and the body's
bytes and return the answer as a dict or raise ServingError. http_server.py puts them on HTTP."""

from __future__ import annotations

import base64
import json
import math
import re
import urllib.parse
from typing import Any, Callable

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format

from mirrorgan_tf.serving.errors import ServingError, dtype_name, invalid, not_found
from mirrorgan_tf.serving.predict import Predictor, element_text, output_bytes
from mirrorgan_tf.serving.registry import SIGNATURE_DEF_FIELD, Signature, signature_def_map


def _json_kind(value) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", str: "a string", dict: "an object", list: "a list"}.get(type(value), "a number")


def _is_named(value) -> bool:
    """An object naming inputs, as opposed to a value ({"b64": ...} is a binary string value)."""
    return isinstance(value, dict) and set(value) != {"b64"}


# Deeper lists than this are refused before they are walked (numpy arrays have at most 64
# dimensions; no signature of ours takes more than 2).
MAX_JSON_RANK = 32


def json_array(value, dtype: tf.DType, name: str) -> np.ndarray:
    """A JSON (nested list) value -> an array of dtype; the lists must be rectangular and at most
    MAX_JSON_RANK deep. Strings become UTF-8 bytes ({"b64": ...} is decoded); numbers must fit
    the dtype's range (NaN and Infinity, which Python's JSON reader accepts, pass for floats).
    Raises INVALID_ARGUMENT naming the input and, for a bad value, its element."""
    shape, node = [], value
    while isinstance(node, list):
        shape.append(len(node))
        if len(shape) > MAX_JSON_RANK:
            raise invalid(f"input '{name}' nests lists more than {MAX_JSON_RANK} deep")
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

    def where(i: int) -> str:
        return element_text(tuple(int(j) for j in np.unravel_index(i, shape)), len(shape))

    if dtype == tf.string:
        return np.array([_json_string(v, name, where, i) for i, v in enumerate(leaves)], dtype=object).reshape(shape)
    if dtype.is_bool:
        if any(not isinstance(v, bool) for v in leaves):
            raise invalid(f"input '{name}' must hold booleans ({dtype_name(dtype)})")
    elif dtype.is_integer or dtype.is_floating:
        for i, v in enumerate(leaves):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise invalid(f"input '{name}' must hold numbers ({dtype_name(dtype)}), found {_json_kind(v)}")
            # Python ints are unbounded: compare them exactly, never through float() (OverflowError)
            if dtype.is_integer and not ((isinstance(v, int) or v.is_integer()) and int(dtype.min) <= v <= int(dtype.max)):
                raise invalid(f"input '{name}' must hold integers in [{dtype.min}, {dtype.max}], found "
                              f"{_number_text(v)} ({where(i)})")
            if dtype.is_floating and (isinstance(v, int) or math.isfinite(v)) and abs(v) > float(dtype.max):
                raise invalid(f"input '{name}' {where(i)}: {_number_text(v)} is beyond the range of "
                              f"{dtype_name(dtype)} (magnitude at most {dtype.max:g})")
    else:
        raise invalid(f"input '{name}': {dtype_name(dtype)} cannot be sent as JSON")
    return np.array(leaves, dtype=dtype.as_numpy_dtype).reshape(shape)


def _number_text(v) -> str:
    text = str(v)
    return text if len(text) <= 40 else f"{text[:12]}...{text[-4:]} ({len(text)} digits)"


def _json_string(value, name: str, where: Callable[[int], str], i: int) -> bytes:
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError as e:
            # JSON's \ud83d escapes can leave half of a UTF-16 surrogate pair, e.g. after a
            # JavaScript slice through an emoji: such a string has no UTF-8 form.
            raise invalid(f"input '{name}' {where(i)} is not valid text: it holds a lone UTF-16 surrogate "
                          f"U+{ord(value[e.start]):04X} at character {e.start} (half of a pair, as a JavaScript "
                          "slice through an emoji leaves); send whole characters") from None
    if isinstance(value, dict) and set(value) == {"b64"} and isinstance(value["b64"], str):
        try:
            return base64.b64decode(value["b64"], validate=True)
        except ValueError:
            raise invalid(f"input '{name}' {where(i)}: the \"b64\" value is not valid base64") from None
    raise invalid(f"input '{name}' must hold strings (DT_STRING), found {_json_kind(value)} ({where(i)})")


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
        # a[i] of a string output is a bytes scalar: keep it an array so _json_value decodes it
        return {"predictions": [{n: _json_value(np.asarray(a[i], a.dtype)) for n, a in outputs.items()}
                                for i in range(batch)]}
    if len(outputs) == 1:
        return {"outputs": _json_value(next(iter(outputs.values())))}
    return {"outputs": {n: _json_value(a) for n, a in outputs.items()}}


def _proto_json(message) -> dict:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)



def decode_body(raw: bytes):
    """A request body's bytes -> its JSON value. JSON travels as UTF-8 (RFC 8259; TF Serving
    reads nothing else): other encodings, broken UTF-8, invalid JSON and nesting deeper than
    the parser's recursion limit (about 1000 levels) are INVALID_ARGUMENT. A leading UTF-8 byte
    order mark is skipped, as the RFC allows."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise invalid(f"the request body is not UTF-8 text: byte 0x{raw[e.start]:02x} at offset {e.start} "
                      f"({e.reason}); send JSON as UTF-8") from None
    try:
        return json.loads(text.removeprefix("\ufeff"))
    except RecursionError:
        raise invalid("the request body nests arrays or objects too deeply to parse") from None
    except ValueError as e:  # JSONDecodeError, and integers of more than 4300 digits
        raise invalid(f"the request body is not valid JSON: {e}") from None


# The most characters json.dumps writes for one value of a dtype ("255", "-2147483648", "false",
# a float's shortest repr such as "-1.1754943508222875e-38"); strings have no bound.
JSON_VALUE_CHARS = {tf.uint8: 3, tf.int8: 4, tf.uint16: 5, tf.int16: 6, tf.uint32: 10, tf.int32: 11,
                    tf.uint64: 20, tf.int64: 20, tf.bool: 5, tf.float16: 24, tf.bfloat16: 24, tf.float32: 24,
                    tf.float64: 24}


def json_array_bound(shape: list[int], value_chars: int) -> int:
    """The most bytes json.dumps (default separators ", ") writes for an array of this shape whose
    values take at most value_chars characters: every value, plus per list its two brackets and
    2 bytes per separator. For a uint8 image [64, 64, 3]: 12288 values x 3 + 4096 pixel lists x 6 +
    64 rows x 128 + 128 = 69 760 bytes, 5.68 per raw byte (images of the smoke export measure
    5.37-5.68, uniform noise 5.25: most values have three digits)."""
    total, lists = int(np.prod(shape, dtype=np.int64)) * value_chars, 1
    for d in shape:
        total += lists * (2 + 2 * max(d - 1, 0))
        lists *= d
    return total


def json_response_bound(signature: Signature, outputs: list[str], batch: int) -> int | None:
    """An upper bound on the bytes of json_outputs(...) for a batch, row or columnar format:
    each output's array bound, its name once per example (the row format with several outputs
    repeats it) and 32 bytes for the envelope. None when an output's size is not known in
    advance (a string dtype, an unknown dimension besides the batch)."""
    total = 32
    for name in outputs:
        spec = signature.outputs[name]
        if output_bytes(spec, batch) is None or spec.dtype not in JSON_VALUE_CHARS:
            return None
        shape = [batch] + spec.shape.as_list()[1:]
        total += json_array_bound(shape, JSON_VALUE_CHARS[spec.dtype]) + batch * (len(json.dumps(name)) + 8)
    return total


class RestApi:
    """The REST routes over a Predictor, with no sockets: `post(path, read_body)` and `get(path)`
    return the JSON answer (a dict) or raise ServingError. read_body is called only once the path
    is known to be a route, so a request to an unknown path leaves its body unread. max_body:
    the cap in bytes on answers (as on request bodies); a prediction whose JSON answer could
    exceed it is refused before the model runs (None: not checked)."""

    PREDICT = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(\w+)", re.IGNORECASE)
    MODEL = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE)

    def __init__(self, predictor: Predictor, max_body: int | None = None):
        self.predictor = predictor
        self.max_body = max_body

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
        batch = validate.inputs(signature, {n: (signature.inputs[n].dtype, a.shape) for n, a in arrays.items()})
        validate.text(signature, arrays)
        outputs = sorted(signature.outputs)
        sized = [n for n in outputs if json_response_bound(signature, [n], 1) is not None]
        bounded = batch is not None and len(sized) == len(outputs)
        if batch is not None and sized and self.max_body is not None:  # all of the answer, or a lower bound
            validate.response_fits(batch, lambda b: json_response_bound(signature, sized, b), self.max_body,
                                   "as JSON")
        answer = json_outputs(self.predictor.run(signature, arrays, outputs), fmt)
        if not bounded and self.max_body is not None:  # its size is known only now
            size = len(json.dumps(answer))
            if size > self.max_body:
                raise invalid(f"the answer takes {size} bytes as JSON, more than the cap of {self.max_body} bytes "
                              f"(--max-message-mb {self.max_body / 2**20:.3g}); send fewer examples")
        return answer

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
