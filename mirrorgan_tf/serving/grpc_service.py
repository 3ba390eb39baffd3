"""TF Serving's gRPC PredictionService over the Predictor: TensorProto inputs in, TensorProto
outputs out, ServingError -> gRPC status."""

from __future__ import annotations

import logging

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, predict_pb2, prediction_service_pb2_grpc

from mirrorgan_tf.serving.errors import ServingError, invalid
from mirrorgan_tf.serving.predict import Predictor
from mirrorgan_tf.serving.registry import SIGNATURE_DEF_FIELD, signature_def_map

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

