"""The server's error type and the names it uses in messages: a request that cannot be answered
carries a gRPC status code, and the HTTP status TF Serving's REST API maps it to."""

from __future__ import annotations

import grpc
import tensorflow as tf
from tensorflow.core.framework import types_pb2

from mirrorgan_tf.errors import MirrorganError

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


class ServerSetupError(MirrorganError, ValueError):
    """The server cannot start as asked: a flag out of range, or caps (`--max-batch`,
    `--max-message-mb`) that contradict each other for the served model. The message names the
    flags and the values that would work."""


class ServingError(Exception):
    """A request that cannot be answered; becomes a gRPC status or an HTTP error."""

    def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status or HTTP_STATUS.get(code, 500)


def invalid(message: str) -> ServingError:
    """INVALID_ARGUMENT (HTTP 400): the request itself is wrong; message says how."""
    return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
    """NOT_FOUND (HTTP 404): no such model, version, version label or route."""
    return ServingError(grpc.StatusCode.NOT_FOUND, message)


def dtype_name(dtype: tf.DType) -> str:
    """The DataType enum name messages use, as TF Serving's do: tf.float32 -> "DT_FLOAT"."""
    return types_pb2.DataType.Name(dtype.as_datatype_enum)


def shape_text(shape) -> str:
    """A shape for messages, unknown dimensions as "?": TensorShape([None, 8]) -> "[?, 8]"."""
    dims = shape.as_list() if isinstance(shape, tf.TensorShape) else list(shape)
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


