"""A model server that speaks TensorFlow Serving's APIs, for local use and tests.

    gRPC  tensorflow.serving.PredictionService: Predict, GetModelMetadata (the official protos
          and stubs of tensorflow-serving-api); Classify, Regress, MultiInference: UNIMPLEMENTED
    REST  POST /v1/models/NAME[/versions/N]:predict   {"instances": [...]} or {"inputs": ...}
          GET  /v1/models/NAME[/versions/N]           model status
          GET  /v1/models/NAME[/versions/N]/metadata  signature defs

Clients written for the stock tensorflow_model_server work unchanged. Like the stock server with
its default version policy, it serves the highest numeric version under the base path and only
that one, and loads a newly exported version without a restart.

Layers, bottom up, one module each:
    errors.py        ServingError (a gRPC status code and its HTTP status)
    registry.py      ModelRegistry: the loaded version, the watcher thread, the model status
    predict.py       RequestValidator (model spec, signature, inputs against the signature, before
                     the model runs) and Predictor (runs a signature, bounded concurrency)
    grpc_service.py  PredictionServicer: TensorProtos <-> the Predictor
    rest.py          the REST JSON codec and RestApi, the routes, with no sockets
    http_server.py   RestServer: HTTP framing for RestApi
    server.py        ServerConfig and ModelServer: the above, started and stopped together
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
from concurrent import futures

import grpc
import tensorflow as tf

from mirrorgan_tf.serving.errors import ServerSetupError, ServingError
from mirrorgan_tf.serving.grpc_service import PredictionServicer, add_to_server, response_bytes
from mirrorgan_tf.serving.http_server import RestServer
from mirrorgan_tf.serving.predict import Predictor, largest_batch
from mirrorgan_tf.serving.registry import LoadedVersion, ModelRegistry
from mirrorgan_tf.serving.rest import RestApi, json_response_bound

log = logging.getLogger("mirrorgan_tf.serve")


def message_cap_problems(loaded: LoadedVersion, model_name: str, max_batch: int,
                         max_bytes: int) -> tuple[str | None, str | None]:
    """Whether --max-batch examples' answers fit the --max-message-mb cap (max_bytes) for this
    version: (gRPC problem, REST problem), each None when it fits, else a message naming both
    flags, the signature with the largest answer and the values that would fit. gRPC sizes are
    the PredictResponse bound (response_bytes), REST ones the JSON bound (json_response_bound)."""
    mb = f"{max_bytes / 2**20:.3g}"

    def worst(size_of):
        rows = []
        for name, signature in sorted(loaded.signatures.items()):
            # outputs of unknown size (strings) are checked per answer; the rest can be checked now
            outputs = [n for n in sorted(signature.outputs) if size_of(signature, [n], 1) is not None]
            size = size_of(signature, outputs, max_batch) if outputs else None
            if size is not None and size > max_bytes:
                fits = largest_batch(lambda b: size_of(signature, outputs, b), max_bytes, max_batch)
                rows.append((fits, name, size))
        return min(rows) if rows else None

    problems = []
    grpc_worst = worst(lambda s, o, b: response_bytes(s, o, b, model_name, loaded.version))
    rest_worst = worst(json_response_bound)
    for found, encoding in ((grpc_worst, "as a gRPC message"), (rest_worst, "as JSON over REST")):
        if found is None:
            problems.append(None)
            continue
        fits, name, size = found
        need = math.ceil(size / 2**20 * 100) / 100
        remedy = (f"lower --max-batch to {fits} or raise --max-message-mb to {need:g}" if fits else
                  f"not even one example fits: raise --max-message-mb to {need:g}")
        problems.append(f"--max-batch {max_batch} and --max-message-mb {mb} do not fit together: the answer to "
                        f"{max_batch} examples of signature '{name}' (version {loaded.version}) takes up to {size} "
                        f"bytes {encoding}, more than the cap of {max_bytes}; {remedy}")
    return problems[0], problems[1]


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
                raise ServerSetupError(f"{field.replace('_', '-')} must be positive, got {getattr(config, field)}")
        if not tf.io.gfile.isdir(config.base_path):
            raise FileNotFoundError(f"model base path {config.base_path} is not a directory")
        self.config = config
        self.registry = ModelRegistry(config.model_name, config.base_path, config.poll_seconds)
        self.predictor = Predictor(self.registry, config.max_batch, concurrency=config.workers)
        self.grpc_port = self.rest_port = None
        self._grpc = self._rest = self._rest_thread = None

    def start(self) -> None:
        c = self.config
        max_bytes = int(c.max_message_mb * 2**20)
        self.registry.refresh()  # the first version loads before the ports open, as in TF Serving
        try:
            first = self.registry.get()
        except ServingError:  # nothing to serve yet: the watcher checks the caps when it loads
            first = None
        if first is not None:
            grpc_problem, rest_problem = message_cap_problems(first, c.model_name, c.max_batch, max_bytes)
            if grpc_problem:  # the flags contradict each other for the main API: refuse to start
                raise ServerSetupError(grpc_problem)
            if rest_problem:  # JSON is up to 5.7x the raw bytes: REST may take fewer than gRPC
                log.warning("%s; until then larger REST batches are refused", rest_problem)
        self.registry.on_loaded = lambda loaded: self._warn_caps(loaded, max_bytes)
        self.registry.start()
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=c.workers, thread_name_prefix="grpc"),
            options=[("grpc.max_receive_message_length", max_bytes), ("grpc.max_send_message_length", max_bytes),
                     ("grpc.so_reuseport", 0)])  # a port in use must fail, not be shared
        add_to_server(PredictionServicer(self.predictor, max_bytes), self._grpc)
        address = f"[{c.host}]:{c.port}" if ":" in c.host else f"{c.host}:{c.port}"
        try:
            self.grpc_port, reason = self._grpc.add_insecure_port(address), ""
        except RuntimeError as e:  # grpc raises or returns 0, depending on the version
            self.grpc_port, reason = 0, f": {e}"
        if not self.grpc_port:
            self.stop()
            raise OSError(f"cannot listen for gRPC on {address}{reason}")
        try:
            self._rest = RestServer((c.host, c.rest_port), RestApi(self.predictor, max_bytes), max_bytes)
        except OSError as e:
            self.stop()
            raise OSError(f"cannot listen for REST on {c.host}:{c.rest_port}: {e}") from None
        self.rest_port = self._rest.server_address[1]
        self._grpc.start()
        self._rest_thread = threading.Thread(target=self._rest.serve_forever, name="rest", daemon=True)
        self._rest_thread.start()

    def _warn_caps(self, loaded: LoadedVersion, max_bytes: int) -> None:
        """A version picked up live whose answers do not fit the caps is served all the same (the
        server is running already); requests over the caps are refused one by one."""
        for problem in message_cap_problems(loaded, self.config.model_name, self.config.max_batch, max_bytes):
            if problem:
                log.warning("%s; until then larger batches are refused", problem)

    def stop(self, grace: float = 5.0) -> None:
        if self._rest is not None:
            if self._rest_thread is not None:
                self._rest.shutdown()
            self._rest.server_close()
        if self._grpc is not None:
            self._grpc.stop(grace).wait()
        self.registry.stop()
