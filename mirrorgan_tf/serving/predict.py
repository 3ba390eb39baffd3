"""Request validation and prediction, independent of the wire format: a request's model spec,
signature and inputs are checked against the served version before the model runs, then the
signature runs with bounded concurrency."""

from __future__ import annotations

import logging
import threading

import grpc
import numpy as np
import tensorflow as tf

from mirrorgan_tf.serving.errors import ServingError, dtype_name, invalid, not_found, shape_text
from mirrorgan_tf.serving.registry import LoadedVersion, ModelRegistry, Signature

log = logging.getLogger("mirrorgan_tf.serve")

DEFAULT_SIGNATURE = "serving_default"


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

