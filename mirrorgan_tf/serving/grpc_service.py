"""TF Serving's gRPC PredictionService over the Predictor: TensorProto inputs in, TensorProto
outputs out, ServingError -> gRPC status."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

import grpc
import tensorflow as tf
from google.protobuf import message, message_factory
from tensorflow_serving.apis import (get_model_metadata_pb2, predict_pb2, prediction_service_pb2,
                                     prediction_service_pb2_grpc)

from mirrorgan_tf.serving.errors import ServingError, invalid
from mirrorgan_tf.serving.predict import Predictor, output_bytes, sized_outputs
from mirrorgan_tf.serving.registry import SIGNATURE_DEF_FIELD, Signature, signature_def_map

log = logging.getLogger("mirrorgan_tf.serve")


def _proto_dtype(name: str, proto) -> tf.DType:
    try:
        return tf.as_dtype(proto.dtype)
    except TypeError:
        raise invalid(f"input '{name}' has no valid dtype (enum value {proto.dtype})") from None


def _proto_shape(name: str, proto) -> tuple:
    if proto.tensor_shape.unknown_rank:
        raise invalid(f"input '{name}' has an unknown rank; send its shape")
    return tuple(d.size for d in proto.tensor_shape.dim)


@dataclasses.dataclass(frozen=True)
class Undecodable:
    """A request whose bytes are not a valid message of its type (corrupt wire format, a string
    field that is not UTF-8): the servicer answers INVALID_ARGUMENT instead of gRPC's own
    INTERNAL "Exception deserializing request!" and its traceback in the log."""

    type_name: str
    error: str


def _lenient(message_type) -> Callable[[bytes], Any]:
    def parse(data: bytes):
        try:
            return message_type.FromString(data)
        except message.DecodeError as e:
            return Undecodable(message_type.DESCRIPTOR.full_name, str(e))

    return parse


def _decoded(request):
    if isinstance(request, Undecodable):
        raise invalid(f"the request is not a valid {request.type_name}: {request.error}")
    return request


def add_to_server(servicer: "PredictionServicer", server: grpc.Server) -> None:
    """Registers tensorflow.serving.PredictionService, as the generated
    add_PredictionServiceServicer_to_server does, but with request parsers that hand an
    undecodable request to the servicer (see Undecodable)."""
    service = prediction_service_pb2.DESCRIPTOR.services_by_name["PredictionService"]
    handlers = {}
    for method in service.methods:
        request_type = message_factory.GetMessageClass(method.input_type)
        response_type = message_factory.GetMessageClass(method.output_type)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name), request_deserializer=_lenient(request_type),
            response_serializer=response_type.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))


def response_bytes(signature: Signature, outputs: list[str], batch: int, model_name: str, version: int) -> int | None:
    """An upper bound on the serialized size of the PredictResponse for a batch, in bytes (the
    gRPC send cap counts these): the response without the output values, plus each output's
    values (tensor_content) and 16 bytes for its field tag and the three length prefixes that
    grow with it. None when an output's size is not known in advance (see output_bytes)."""
    response = predict_pb2.PredictResponse()
    response.model_spec.name = model_name
    response.model_spec.version.value = version
    response.model_spec.signature_name = signature.name
    values = 0
    for name in outputs:
        spec = signature.outputs[name]
        size = output_bytes(spec, batch)
        if size is None:
            return None
        proto = response.outputs[name]
        proto.dtype = spec.dtype.as_datatype_enum
        for d in [batch] + spec.shape.as_list()[1:]:
            proto.tensor_shape.dim.add(size=d)
        values += size + 16
    return response.ByteSize() + values


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService over the Predictor. max_message: the gRPC send cap
    in bytes; a Predict whose answer would exceed it is refused before the model runs (None:
    not checked)."""

    def __init__(self, predictor: Predictor, max_message: int | None = None):
        self.predictor = predictor
        self.validate = predictor.validate
        self.max_message = max_message

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
        spec = _decoded(request).model_spec
        loaded = self.validate.model(spec.name, spec.version.value if spec.HasField("version") else None,
                                     spec.version_label)
        signature = self.validate.signature(loaded, spec.signature_name)
        batch = self.validate.inputs(signature, {n: (_proto_dtype(n, p), _proto_shape(n, p))
                                                 for n, p in request.inputs.items()})
        outputs = self.validate.outputs(signature, request.output_filter)
        sized = sized_outputs(signature, outputs)
        if batch is not None and self.max_message is not None and sized:
            self.validate.response_fits(
                batch, lambda b: response_bytes(signature, sized, b, self.validate.registry.name, loaded.version),
                self.max_message, "as a gRPC message")
        arrays = {}
        for name, proto in request.inputs.items():
            try:
                arrays[name] = tf.make_ndarray(proto)
            except Exception as e:  # noqa: BLE001  (any decoding failure is the request's fault)
                raise invalid(f"input '{name}' is not a valid TensorProto: {e}") from None
        self.validate.text(signature, arrays)
        result = self.predictor.run(signature, arrays, outputs)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.validate.registry.name
        response.model_spec.version.value = loaded.version
        response.model_spec.signature_name = signature.name
        for name, value in result.items():
            response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
        if len(sized) < len(outputs) and self.max_message is not None:  # its size is known only now
            size = response.ByteSize()
            if size > self.max_message:
                raise invalid(f"the answer takes {size} bytes as a gRPC message, more than the cap of "
                              f"{self.max_message} bytes (--max-message-mb {self.max_message / 2**20:.3g}); "
                              "send fewer examples")
        return response

    def _metadata(self, request):
        request = _decoded(request)
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

