"""A model server that speaks TensorFlow Serving's APIs, for local use and tests.

    gRPC  tensorflow.serving.PredictionService: Predict, GetModelMetadata (the official protos
          and stubs of tensorflow-serving-api); Classify, Regress, MultiInference: UNIMPLEMENTED
    REST  POST /v1/models/NAME[/versions/N]:predict   {"instances": [...]} or {"inputs": ...}
          GET  /v1/models/NAME[/versions/N]           model status
          GET  /v1/models/NAME[/versions/N]/metadata  signature defs

Clients written for the stock tensorflow_model_server work unchanged. Like the stock server with
its default version policy, it serves the highest numeric version under the base path and only
that one, and loads a newly exported version without a restart.

Layers, bottom up: ModelRegistry (the loaded version, the watcher thread), RequestValidator
(model spec, signature, inputs against the signature, before the model runs), Predictor (runs a
signature, bounded concurrency), then the thin gRPC servicer and HTTP handler.
"""

from __future__ import annotations

import base64
import dataclasses
import gc
import http.server
import json
import logging
import re
import socket
import threading
import urllib.parse
from concurrent import futures
from typing import Any, Callable

import grpc
import numpy as np
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer's ops before any SavedModel loads)
from google.protobuf import json_format
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, predict_pb2,
                                     prediction_service_pb2_grpc, status_pb2)

log = logging.getLogger("mirrorgan_tf.serve")

DEFAULT_SIGNATURE = "serving_default"
SIGNATURE_DEF_FIELD = "signature_def"
VERSION_NAME = re.compile(r"\d+")

# TF Serving's own mapping of status codes to HTTP statuses, for the codes this server uses.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
}


class ServingError(Exception):
    """A request that cannot be answered; becomes a gRPC status or an HTTP error."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status or HTTP_STATUS.get(code, 500)


def invalid(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def dtype_name(dtype: tf.DType) -> str:
    return types_pb2.DataType.Name(dtype.as_datatype_enum)


def shape_text(shape) -> str:
    dims = shape.as_list() if isinstance(shape, tf.TensorShape) else list(shape)
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


# --------------------------------------------------------------------------------------------
# Loaded versions


@dataclasses.dataclass(frozen=True)
class Signature:
    name: str
    function: Callable
    inputs: dict[str, tf.TensorSpec]
    outputs: dict[str, tf.TensorSpec]


@dataclasses.dataclass(frozen=True)
class LoadedVersion:
    version: int
    path: str
    signatures: dict[str, Signature]
    signature_defs: dict[str, Any]  # name -> SignatureDef proto, as saved_model.pb has them
    module: Any  # keeps the loaded variables and functions alive


def load_version(path: str, version: int) -> LoadedVersion:
    module = tf.saved_model.load(path)
    saved_model = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(tf.io.gfile.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    if len(saved_model.meta_graphs) != 1:
        raise ValueError(f"{path}: expected one MetaGraph, found {len(saved_model.meta_graphs)}")
    signature_defs = dict(saved_model.meta_graphs[0].signature_def)
    signatures = {}
    for name, function in module.signatures.items():
        args, kwargs = function.structured_input_signature
        if args:
            raise ValueError(f"{path}: signature '{name}' takes positional inputs")
        signatures[name] = Signature(name, function, dict(kwargs), dict(function.structured_outputs))
    if not signatures:
        raise ValueError(f"{path}: the SavedModel has no signatures")
    return LoadedVersion(version, path, signatures, signature_defs, module)


def _tree_stamp(path: str) -> tuple:
    """Changes whenever a file under path is added, removed or rewritten."""
    entries = []
    for root, _, files in tf.io.gfile.walk(path):
        for name in files:
            st = tf.io.gfile.stat(tf.io.gfile.join(root, name))
            entries.append((root, name, st.length, st.mtime_nsec))
    return tuple(sorted(entries))


class ModelRegistry:
    """The servable versions of one model under a base path.

    Serves the highest numeric version folder holding a saved_model.pb; hidden folders and
    `.incomplete-*` ones are not versions. A background thread polls the base path: a higher
    version is loaded beside the current one and swapped in when ready; in-flight requests finish
    on the version they started with. A version that fails to load is logged, kept in the status
    with its error, and retried only when its files change; the current one keeps serving.
    """

    def __init__(self, name: str, base_path: str, poll_seconds: float = 2.0,
                 loader: Callable[[str, int], LoadedVersion] = load_version):
        self.name = name
        self.base_path = base_path
        self.poll_seconds = poll_seconds
        self._loader = loader
        self._lock = threading.Lock()
        self._current: LoadedVersion | None = None
        self._failed: dict[int, tuple[tuple, str]] = {}  # version -> (files stamp, error)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._warned_empty = False

    def scan(self) -> dict[int, str]:
        if not tf.io.gfile.isdir(self.base_path):
            return {}
        versions = {}
        for entry in tf.io.gfile.listdir(self.base_path):
            entry = entry.rstrip("/")
            path = tf.io.gfile.join(self.base_path, entry)
            if VERSION_NAME.fullmatch(entry) and tf.io.gfile.exists(tf.io.gfile.join(path, "saved_model.pb")):
                versions[int(entry)] = path
        return versions

    def refresh(self) -> None:
        """One poll: load the highest version found if it is not the one served."""
        found = self.scan()
        with self._lock:
            current = self._current
            self._failed = {v: f for v, f in self._failed.items() if v in found}
        if not found:
            if not self._warned_empty:
                log.warning("no version under %s yet (a numeric folder with saved_model.pb)%s", self.base_path,
                            f"; still serving version {current.version}" if current else "")
                self._warned_empty = True
            return
        self._warned_empty = False
        if current is not None and current.version in found:
            candidates = [v for v in found if v > current.version]
        else:  # nothing served yet, or the served version's folder was removed
            candidates = list(found)
        for version in sorted(candidates, reverse=True):
            if self._try_load(version, found[version], current.version if current else None):
                del current
                gc.collect()  # loaded modules hold reference cycles: free the old version's memory now
                return

    def _try_load(self, version: int, path: str, current: int | None) -> bool:
        try:
            stamp = _tree_stamp(path)
        except tf.errors.OpError:  # removed while we looked
            return False
        with self._lock:
            failed = self._failed.get(version)
        if failed and failed[0] == stamp:
            return False
        log.info("loading %s version %d from %s", self.name, version, path)
        try:
            loaded = self._loader(path, version)
        except Exception as e:  # noqa: BLE001  (any failure leaves the current version serving)
            message = f"{type(e).__name__}: {e}".strip()
            log.error("version %d of %s failed to load, %s: %s", version, self.name,
                      f"still serving version {current}" if current else "nothing to serve", message)
            with self._lock:
                self._failed[version] = (stamp, message)
            return False
        with self._lock:
            self._current = loaded
            self._failed.pop(version, None)
        log.info("serving %s version %d%s", self.name, version, f" (was version {current})" if current else "")
        return True

    def get(self, version: int | None = None) -> LoadedVersion:
        with self._lock:
            current = self._current
        if current is None:
            raise ServingError(grpc.StatusCode.UNAVAILABLE,
                               f"model '{self.name}' has no loaded version yet (base path {self.base_path})")
        if version is not None and version != current.version:
            raise not_found(f"version {version} of model '{self.name}' is not served; the served version is "
                            f"{current.version} (only the latest version is served)")
        return current

    def status(self, version: int | None = None) -> get_model_status_pb2.GetModelStatusResponse:
        """TF Serving's model status: the served version AVAILABLE, failed ones END with their error."""
        with self._lock:
            current, failed = self._current, dict(self._failed)
        rows = {}
        if current is not None:
            rows[current.version] = ("AVAILABLE", "OK", "")
        for v, (_, message) in failed.items():
            rows.setdefault(v, ("END", "UNKNOWN", message))
        if version is not None:
            if version not in rows:
                raise not_found(f"version {version} of model '{self.name}' is not known to this server")
            rows = {version: rows[version]}
        if not rows:
            raise not_found(f"model '{self.name}' has no version yet under {self.base_path}")
        response = get_model_status_pb2.GetModelStatusResponse()
        for v in sorted(rows, reverse=True):
            state, code, message = rows[v]
            response.model_version_status.add(
                version=v, state=state, status=status_pb2.StatusProto(error_code=code, error_message=message))
        return response

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="version-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001  (a poll that fails must not end the watching)
                log.exception("polling %s failed", self.base_path)


def signature_def_map(loaded: LoadedVersion) -> get_model_metadata_pb2.SignatureDefMap:
    return get_model_metadata_pb2.SignatureDefMap(signature_def=loaded.signature_defs)


# --------------------------------------------------------------------------------------------
# Validation and prediction


class RequestValidator:
    """Checks a request against the served model and the signature's input specs, before any
    tensor is materialised or the model runs, so that malformed requests get a message naming
    what is wrong instead of a graph error."""

    def __init__(self, registry: ModelRegistry, max_batch: int):
        self.registry = registry
        self.max_batch = max_batch

    def model(self, name: str, version: int | None = None, label: str = "") -> LoadedVersion:
        if not name:
            raise invalid("missing model name (model_spec.name)")
        if name != self.registry.name:
            raise not_found(f"model '{name}' is not served here; this server serves '{self.registry.name}'")
        if label:
            if version is not None:
                raise invalid(f"give a version ({version}) or a version label ('{label}'), not both")
            raise not_found(f"version label '{label}' is unknown: this server defines no version labels; "
                            "ask for a version number or for none (the latest)")
        return self.registry.get(version)

    def signature(self, loaded: LoadedVersion, name: str) -> Signature:
        name = name or DEFAULT_SIGNATURE
        if name not in loaded.signatures:
            raise invalid(f"signature '{name}' not found in model '{self.registry.name}' version {loaded.version}; "
                          f"it has: {', '.join(sorted(loaded.signatures))}")
        return loaded.signatures[name]

    def input_names(self, signature: Signature, names) -> None:
        expected, given = set(signature.inputs), set(names)
        problems = []
        if expected - given:
            problems.append("missing input " + ", ".join(f"'{n}'" for n in sorted(expected - given)))
        if given - expected:
            problems.append("unknown input " + ", ".join(f"'{n}'" for n in sorted(given - expected)))
        if problems:
            raise invalid(f"{'; '.join(problems)}: signature '{signature.name}' takes "
                          f"{', '.join(sorted(expected))}")

    def inputs(self, signature: Signature, given: dict[str, tuple[tf.DType, tuple]]) -> None:
        """given: input name -> (dtype, shape) as the request declares them."""
        self.input_names(signature, given)
        batch = {}
        for name, spec in sorted(signature.inputs.items()):
            dtype, shape = given[name]
            if dtype != spec.dtype:
                raise invalid(f"input '{name}' must be {dtype_name(spec.dtype)}, got {dtype_name(dtype)}")
            if any(d < 0 for d in shape):
                raise invalid(f"input '{name}' has a negative dimension: {shape_text(shape)}")
            if spec.shape.rank is not None and len(shape) != spec.shape.rank:
                raise invalid(f"input '{name}' must have rank {spec.shape.rank} (shape {shape_text(spec.shape)}), "
                              f"got rank {len(shape)} (shape {shape_text(shape)})")
            if not spec.shape.is_compatible_with(shape):
                raise invalid(f"input '{name}' must have shape {shape_text(spec.shape)}, got {shape_text(shape)}")
            if spec.shape.rank and spec.shape[0] is None:
                batch[name] = shape[0]
        if not batch:
            return
        if len(set(batch.values())) > 1:
            raise invalid("inputs disagree on the batch size (first dimension): "
                          + ", ".join(f"'{n}' has {b}" for n, b in sorted(batch.items())))
        name, size = sorted(batch.items())[0]
        if size == 0:
            raise invalid(f"empty batch: input '{name}' has no elements")
        if size > self.max_batch:
            raise invalid(f"batch too large: input '{name}' has {size} elements; this server takes at most "
                          f"{self.max_batch} per request (--max-batch)")

    def outputs(self, signature: Signature, output_filter) -> list[str]:
        names = list(output_filter)
        for name in names:
            if name not in signature.outputs:
                raise invalid(f"output_filter names '{name}', which signature '{signature.name}' does not have; "
                              f"its outputs: {', '.join(sorted(signature.outputs))}")
        if len(set(names)) != len(names):
            raise invalid(f"output_filter names an output twice: {names}")
        return names or sorted(signature.outputs)


def runtime_error_text(message: str) -> str:
    """The part of a TensorFlow runtime error meant for the caller (the failed assertion), without
    the node and function names."""
    kept = []
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith(("Graph execution error", "Detected at node", "<stack traces", "[[{{node")):
            kept.append(line)
    return " ".join(kept) or message


class Predictor:
    """Runs a validated request on a signature. Concurrent calls are safe (a signature is a
    graph function); the semaphore bounds how many run at once, so memory stays bounded however
    many requests the gRPC and HTTP threads accept."""

    def __init__(self, registry: ModelRegistry, max_batch: int, concurrency: int):
        self.registry = registry
        self.validate = RequestValidator(registry, max_batch)
        self._slots = threading.BoundedSemaphore(concurrency)

    def run(self, signature: Signature, inputs: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        tensors = {name: tf.constant(value, dtype=signature.inputs[name].dtype) for name, value in inputs.items()}
        with self._slots:
            try:
                result = signature.function(**tensors)
            except tf.errors.InvalidArgumentError as e:
                raise invalid(runtime_error_text(e.message)) from None
            except tf.errors.OpError as e:
                log.exception("signature %s failed", signature.name)
                raise ServingError(grpc.StatusCode.INTERNAL, f"the model failed: {runtime_error_text(e.message)}") from None
            return {name: result[name].numpy() for name in outputs}


# --------------------------------------------------------------------------------------------
# gRPC


def _proto_dtype(name: str, proto) -> tf.DType:
    try:
        return tf.as_dtype(proto.dtype)
    except TypeError:
        raise invalid(f"input '{name}' has no valid dtype (enum value {proto.dtype})") from None


def _proto_shape(name: str, proto) -> tuple:
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input '{name}' has an unknown rank; send its shape")
    return tuple(d.size for d in proto.tensor_shape.dim)


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService over the Predictor."""

    def __init__(self, predictor: Predictor):
        self.predictor = predictor
        self.validate = predictor.validate

    def Predict(self, request, context):
        return self._answer(context, "Predict", lambda: self._predict(request))

    def GetModelMetadata(self, request, context):
        return self._answer(context, "GetModelMetadata", lambda: self._metadata(request))

    def Classify(self, request, context):
        return self._unimplemented(context, "Classify")

    def Regress(self, request, context):
        return self._unimplemented(context, "Regress")

    def MultiInference(self, request, context):
        return self._unimplemented(context, "MultiInference")

    def _predict(self, request):
        spec = request.model_spec
        loaded = self.validate.model(spec.name, spec.version.value if spec.HasField("version") else None,
                                     spec.version_label)
        signature = self.validate.signature(loaded, spec.signature_name)
        self.validate.inputs(signature, {n: (_proto_dtype(n, p), _proto_shape(n, p)) for n, p in request.inputs.items()})
        outputs = self.validate.outputs(signature, request.output_filter)
        arrays = {}
        for name, proto in request.inputs.items():
            try:
                arrays[name] = tf.make_ndarray(proto)
            except Exception as e:  # noqa: BLE001  (any decoding failure is the request's fault)
                raise invalid(f"input '{name}' is not a valid TensorProto: {e}") from None
        result = self.predictor.run(signature, arrays, outputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.validate.registry.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature.name
        for name, value in result.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        return response

    def _metadata(self, request):
        if not request.HasField("model_spec"):
            raise invalid("missing model_spec")
        if not request.metadata_field:
            raise invalid(f"GetModelMetadataRequest must name at least one metadata_field ('{SIGNATURE_DEF_FIELD}')")
        for field in request.metadata_field:
            if field != SIGNATURE_DEF_FIELD:
                raise invalid(f"metadata_field '{field}' is not supported; this server supports '{SIGNATURE_DEF_FIELD}'")
        spec = request.model_spec
        loaded = self.validate.model(spec.name, spec.version.value if spec.HasField("version") else None,
                                     spec.version_label)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = self.validate.registry.name
        response.model_spec.version.value = loaded.version
        response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_def_map(loaded))
        return response

    @staticmethod
    def _answer(context, rpc: str, handle):
        try:
            return handle()
        except ServingError as e:
            log.info("%s: %s: %s", rpc, e.code.name, e.message)
            context.abort(e.code, e.message)
        except Exception as e:  # noqa: BLE001  (the server must keep serving)
            log.exception("%s failed", rpc)
            context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(e).__name__}: {e}")

    @staticmethod
    def _unimplemented(context, rpc: str):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      f"{rpc} is not implemented: the model has no classification or regression signature; use Predict")


# --------------------------------------------------------------------------------------------
# REST: TF Serving's JSON mapping


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


class RestHandler(http.server.BaseHTTPRequestHandler):
    """TF Serving's REST API over the Predictor. The server object carries `predictor` and
    `max_body`."""

    protocol_version = "HTTP/1.1"
    server_version = "mirrorgan-serve"
    PREDICT = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?:(\w+)", re.IGNORECASE)
    MODEL = re.compile(r"/v1/models/([^/:]+)(?:/versions/(\d+)|/labels/([^/:]+))?(/metadata)?", re.IGNORECASE)

    def do_POST(self):
        self._answer(self._post)

    def do_GET(self):
        self._answer(self._get)

    def log_message(self, format, *args):  # noqa: A002  (the base class's signature)
        log.debug("%s %s", self.address_string(), format % args)

    def _answer(self, handle):
        self._body_read = False
        try:
            status, body = 200, handle()
        except ServingError as e:
            log.info("%s %s: %s: %s", self.command, self.path, e.code.name, e.message)
            status, body = e.http_status, {"error": e.message}
        except Exception as e:  # noqa: BLE001  (the server must keep serving)
            log.exception("%s %s failed", self.command, self.path)
            status, body = 500, {"error": f"internal error: {type(e).__name__}: {e}"}
        if not self._body_read and self.headers.get("Content-Length", "0").strip() != "0":
            self.close_connection = True  # the unread body would be taken for the next request
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _read_json(self):
        if self.headers.get("Transfer-Encoding"):
            raise _http_error(411, "send the request body with a Content-Length, not chunked")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise _http_error(411, "missing or malformed Content-Length")
        if int(length) > self.server.max_body:
            raise _http_error(413, f"the request body has {length} bytes, more than the cap of "
                                   f"{self.server.max_body} (--max-message-mb)")
        raw = self.rfile.read(int(length))
        self._body_read = True
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise invalid(f"the request body is not valid JSON: {e}") from None

    def _post(self):
        path = urllib.parse.urlsplit(self.path).path
        match = self.PREDICT.fullmatch(path)
        if not match:
            raise not_found(f"no endpoint POST {path}; predictions go to POST /v1/models/NAME[/versions/N]:predict")
        name, version, label, method = match.groups()
        body = self._read_json()
        if method.lower() != "predict":
            raise ServingError(grpc.StatusCode.UNIMPLEMENTED,
                               f":{method} is not implemented: the model has no such signature; use :predict")
        validate = self.server.predictor.validate
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
        result = self.server.predictor.run(signature, arrays, sorted(signature.outputs))
        return json_outputs(result, fmt)

    def _get(self):
        path = urllib.parse.urlsplit(self.path).path
        match = self.MODEL.fullmatch(path)
        if not match:
            raise not_found(f"no endpoint GET {path}; try GET /v1/models/NAME[/versions/N][/metadata]")
        name, version, label, metadata = match.groups()
        validate = self.server.predictor.validate
        name, label = urllib.parse.unquote(name), urllib.parse.unquote(label or "")
        version = int(version) if version else None
        if metadata:
            loaded = validate.model(name, version, label)
            return {"model_spec": {"name": name, "signature_name": "", "version": str(loaded.version)},
                    "metadata": {SIGNATURE_DEF_FIELD: _proto_json(signature_def_map(loaded))}}
        if name != validate.registry.name or label:
            validate.model(name, version, label)  # raises the matching NOT_FOUND
        return _proto_json(validate.registry.status(version))


def _http_error(status: int, message: str) -> ServingError:
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message, http_status=status)


class _RestServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, predictor: Predictor, max_body: int):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.predictor = predictor
        self.max_body = max_body
        super().__init__(address, RestHandler)


# --------------------------------------------------------------------------------------------
# The server


@dataclasses.dataclass
class ServerConfig:
    base_path: str
    model_name: str = "mirrorgan"
    host: str = "127.0.0.1"
    port: int = 8500
    rest_port: int = 8501
    max_batch: int = 64
    max_message_mb: float = 32.0
    poll_seconds: float = 2.0
    workers: int = 8


class ModelServer:
    """The registry, the gRPC server and the HTTP server, started and stopped together."""

    def __init__(self, config: ServerConfig):
        for field in ("max_batch", "workers", "max_message_mb", "poll_seconds"):
            if getattr(config, field) <= 0:
                raise ValueError(f"{field.replace('_', '-')} must be positive, got {getattr(config, field)}")
        if not tf.io.gfile.isdir(config.base_path):
            raise FileNotFoundError(f"model base path {config.base_path} is not a directory")
        self.config = config
        self.registry = ModelRegistry(config.model_name, config.base_path, config.poll_seconds)
        self.predictor = Predictor(self.registry, config.max_batch, concurrency=config.workers)
        self.grpc_port = self.rest_port = None
        self._grpc = self._rest = self._rest_thread = None

    def start(self) -> None:
        c = self.config
        self.registry.refresh()  # the first version loads before the ports open, as in TF Serving
        self.registry.start()
        max_bytes = int(c.max_message_mb * 2**20)
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=c.workers, thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes),
                     ("grpc.so_reuseport", 0)])  # a port in use must fail, not be shared
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(self.predictor), self._grpc)
        address = f"[{c.host}]:{c.port}" if ":" in c.host else f"{c.host}:{c.port}"
        try:
            self.grpc_port, reason = self._grpc.add_insecure_port(address), ""
        except RuntimeError as e:  # grpc raises or returns 0, depending on the version
            self.grpc_port, reason = 0, f": {e}"
        if not self.grpc_port:
            self.stop()
            raise OSError(f"cannot listen for gRPC on {address}{reason}")
        try:
            self._rest = _RestServer((c.host, c.rest_port), self.predictor, max_bytes)
        except OSError as e:
            self.stop()
            raise OSError(f"cannot listen for REST on {c.host}:{c.rest_port}: {e}") from None
        self.rest_port = self._rest.server_address[1]
        self._grpc.start()
        self._rest_thread = threading.Thread(target=self._rest.serve_forever, name="rest", daemon=True)
        self._rest_thread.start()

    def stop(self, grace: float = 5.0) -> None:
        if self._rest is not None:
            if self._rest_thread is not None:
                self._rest.shutdown()
            self._rest.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
        self.registry.stop()
