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
import threading
from concurrent import futures

import grpc
import tensorflow as tf
from tensorflow_serving.apis import prediction_service_pb2_grpc

from mirrorgan_tf.serving.grpc_service import PredictionServicer
from mirrorgan_tf.serving.http_server import RestServer
from mirrorgan_tf.serving.predict import Predictor
from mirrorgan_tf.serving.registry import ModelRegistry
from mirrorgan_tf.serving.rest import RestApi


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
            self._rest = RestServer((c.host, c.rest_port), RestApi(self.predictor), max_bytes)
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
