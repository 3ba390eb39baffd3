"""Request validation and prediction, independent of the wire format: a request's model spec,
signature and inputs are checked against the served version before the model runs, then the
signature runs with bounded concurrency."""

from __future__ import annotations

import codecs
import logging
import re
import threading
from typing import Callable

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

    def inputs(self, signature: Signature, given: dict[str, tuple[tf.DType, tuple]]) -> int | None:
        """given: input name -> (dtype, shape) as the request declares them. Returns the batch
        size (the inputs' common first dimension), None when no input has a batch dimension."""
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
            return None
        if len(set(batch.values())) > 1:
            raise invalid("inputs disagree on the batch size (first dimension): "
                          + ", ".join(f"'{n}' has {b}" for n, b in sorted(batch.items())))
        name, size = sorted(batch.items())[0]
        if size == 0:
            raise invalid(f"empty batch: input '{name}' has no elements")
        if size > self.max_batch:
            raise invalid(f"batch too large: input '{name}' has {size} elements; this server takes at most "
                          f"{self.max_batch} per request (--max-batch)")
        return size

    def text(self, signature: Signature, arrays: dict[str, np.ndarray]) -> None:
        """Every element of a DT_STRING input must be UTF-8 text: the string inputs of this
        project's models are captions, and the tokenizer would otherwise drop the bytes it cannot
        read without a word (or fail inside the graph). Raises INVALID_ARGUMENT naming the input,
        the element and the first bad byte."""
        for name in sorted(arrays):
            if signature.inputs[name].dtype != tf.string:
                continue
            array = arrays[name]
            for index, value in np.ndenumerate(array):
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise invalid(f"input '{name}' {element_text(index, array.ndim)} is not UTF-8 text: byte "
                                  f"0x{value[e.start]:02x} at offset {e.start} ({e.reason}); captions must be "
                                  "UTF-8") from None

    def response_fits(self, batch: int, size_of: Callable[[int], int | None], cap: int, encoding: str) -> None:
        """Refuses (INVALID_ARGUMENT) a batch whose answer would exceed cap bytes, before the
        model runs. size_of(batch) is an upper bound on the answer's size in bytes (None:
        unknown, nothing is checked); encoding names it in the message, e.g. "as a gRPC message"."""
        size = size_of(batch)
        if size is None or size <= cap:
            return
        fits = largest_batch(size_of, cap, batch)
        raise invalid(f"the answer to {batch} examples would take up to {size} bytes {encoding}, more than "
                      f"the cap of {cap} bytes (--max-message-mb {cap / 2**20:.3g}); send at most {fits} per "
                      "request")

    def outputs(self, signature: Signature, output_filter) -> list[str]:
        names = list(output_filter)
        for name in names:
            if name not in signature.outputs:
                raise invalid(f"output_filter names '{name}', which signature '{signature.name}' does not have; "
                              f"its outputs: {', '.join(sorted(signature.outputs))}")
        if len(set(names)) != len(names):
            raise invalid(f"output_filter names an output twice: {names}")
        return names or sorted(signature.outputs)


def element_text(index: tuple, ndim: int) -> str:
    """How messages name one element of an input: "element 3" (rank 1), "element [1, 2]"."""
    if ndim == 1:
        return f"element {index[0]}"
    return "element [" + ", ".join(str(i) for i in index) + "]" if ndim else "(a scalar)"


def output_bytes(spec: tf.TensorSpec, batch: int) -> int | None:
    """Bytes of one output's values for a batch: batch x the other dimensions x the dtype's
    size (uint8 images [None, 64, 64, 3]: batch x 12288). None when that is not known in
    advance: a string dtype, an unknown rank, or an unknown dimension besides the batch."""
    if spec.dtype == tf.string or spec.shape.rank is None or spec.shape.rank == 0:
        return None
    rest = spec.shape.as_list()[1:]
    if any(d is None for d in rest):
        return None
    return batch * int(np.prod(rest, dtype=np.int64)) * spec.dtype.size


def sized_outputs(signature: Signature, outputs: list[str]) -> list[str]:
    """The outputs among `outputs` whose size output_bytes knows before the model runs (not a
    string such as the export's `ignored_words`). Their bound is a lower bound on the whole
    answer: a batch it refuses cannot fit, and the rest is checked once the answer exists."""
    return [name for name in outputs if output_bytes(signature.outputs[name], 1) is not None]


def largest_batch(size_of: Callable[[int], int | None], cap: int, limit: int) -> int:
    """The largest batch b in [0, limit] with size_of(b) <= cap, for a size_of that grows with
    b (binary search); 0 when not even one example fits."""
    low, high = 0, limit
    while low < high:
        mid = (low + high + 1) // 2
        if (size_of(mid) or 0) <= cap:
            low = mid
        else:
            high = mid - 1
    return low


def runtime_error_text(message: str) -> str:
    """The part of a TensorFlow runtime error meant for the caller (the failed assertion), without
    the node and function names. A failed `tf.debugging.Assert` whose data is one string (as the
    export's) gives that string as it was built: the op writes it C-escaped inside brackets
    (`assertion failed: [element 1 \\"\\"]`), which is what the stock model server passes on."""
    kept = []
    for line in message.splitlines():
        line = line.strip()
        if line and not line.startswith(("Graph execution error", "Detected at node", "<stack traces", "[[{{node")):
            kept.append(_assert_data(line))
    return " ".join(kept) or message


def _assert_data(line: str) -> str:
    """`assertion failed: [<C-escaped text>]` -> the text; any other line as it is."""
    match = re.fullmatch(r"assertion failed: \[(.*)\]", line)
    if not match:
        return line
    try:
        return codecs.escape_decode(match.group(1).encode("utf-8"))[0].decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return line


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

