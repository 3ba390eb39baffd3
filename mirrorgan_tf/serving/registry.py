"""The servable versions of one model: loading a SavedModel version, finding versions under the
base path, swapping in a new one, and TF Serving's model status. No gRPC service and no HTTP
here (grpc only lends ServingError its status codes)."""

from __future__ import annotations

import dataclasses
import gc
import logging
import re
import threading
from typing import Any, Callable

import grpc
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the tokenizer's ops before any SavedModel loads)
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, status_pb2

from mirrorgan_tf.serving.errors import ServingError, not_found

log = logging.getLogger("mirrorgan_tf.serve")

SIGNATURE_DEF_FIELD = "signature_def"
VERSION_NAME = re.compile(r"\d+")


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
        # Called with each version once it is served (after the swap); what it raises is logged.
        self.on_loaded: Callable[[LoadedVersion], None] | None = None

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
        if self.on_loaded is not None:
            try:
                self.on_loaded(loaded)
            except Exception:  # noqa: BLE001  (the version is served already; a check must not undo that)
                log.exception("checking version %d of %s failed", version, self.name)
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

