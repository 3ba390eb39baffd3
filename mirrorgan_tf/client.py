"""python -m mirrorgan_tf.client --server HOST:PORT --caption "a small red circle" [--caption ...]
       [--out DIR] [--model-name mirrorgan] [--signature serving_default] [--seed N] [--timeout S]

Asks a model server for one image per caption through TensorFlow Serving's gRPC API and writes
them as PNG files (index and caption in the name), printing their paths. It uses only the stubs
of tensorflow-serving-api, so it works the same against our server and the stock
tensorflow_model_server. With `--signature generate` the noise comes from --seed (its size from
the model's metadata), so the same command gives the same images. The words the model ignored
as unknown (its `ignored_words` output) and the known words its length limit cut (`cut_words`)
are printed on stderr, per caption.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from mirrorgan_tf.errors import MirrorganError, run_cli

MAX_MESSAGE_BYTES = 256 * 2**20


class ClientError(MirrorganError):
    """The server cannot be reached, or answers with an error or something that is not images."""


def slug(caption: str, limit: int = 48) -> str:
    words = re.findall(r"\w+", caption.lower())
    return "-".join(words)[:limit].rstrip("-") or "caption"


def _call(server: str, method, request, timeout: float):
    import grpc

    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as e:
        code, details = e.code(), e.details()
        if code == grpc.StatusCode.UNAVAILABLE:
            raise ClientError(f"cannot reach the model server at {server}: {details}") from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise ClientError(f"the model server at {server} did not answer within {timeout:g} s") from None
        raise ClientError(f"the model server at {server} answered {code.name}: {details}") from None


def _noise_size(server: str, stub, model_name: str, signature: str, timeout: float) -> dict[str, int]:
    """Inputs other than captions: the float noise vectors the signature takes, and their size."""
    from tensorflow_serving.apis import get_model_metadata_pb2

    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = model_name
    response = _call(server, stub.GetModelMetadata, request, timeout)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    if signature not in signatures.signature_def:
        raise ClientError(f"the model server at {server} has no signature '{signature}' for model '{model_name}'; "
                          f"it has: {', '.join(sorted(n for n in signatures.signature_def if not n.startswith('__')))}")
    sizes = {}
    for name, info in signatures.signature_def[signature].inputs.items():
        if name == "captions":
            continue
        dims = [d.size for d in info.tensor_shape.dim]
        if len(dims) != 2 or dims[1] <= 0:
            raise ClientError(f"signature '{signature}' takes input '{name}' of shape {dims}, which this client "
                              "cannot fill (it sends captions and [N, size] noise)")
        sizes[name] = dims[1]
    return sizes


def predict(server: str, captions: list[str], model_name: str = "mirrorgan", signature: str = "serving_default",
            seed: int = 0, timeout: float = 60.0, noise=None):
    """Every output of one Predict call for the captions: ({name: NumPy array}, model version).

    Inputs other than `captions` are the signature's [N, size] noise vectors (sizes read from the
    model's metadata), filled by `noise(n, size)` -> float32 [n, size], by default standard normal
    draws of a NumPy generator seeded with `seed`. Raises ClientError naming the server when it
    cannot be reached, does not answer within `timeout` seconds, or answers with an error."""
    import grpc
    import numpy as np
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    if noise is None:
        rng = np.random.default_rng(seed)

        def noise(n, size):
            return rng.standard_normal((n, size)).astype(np.float32)

    options = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
               ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
    with grpc.insecure_channel(server, options=options) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_pb2.PredictRequest()
        request.model_spec.name = model_name
        request.model_spec.signature_name = signature
        request.inputs["captions"].CopyFrom(tf.make_tensor_proto(captions, dtype=tf.string))
        if signature != "serving_default":
            for name, size in _noise_size(server, stub, model_name, signature, timeout).items():
                request.inputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(noise(len(captions), size), np.float32)))
        response = _call(server, stub.Predict, request, timeout)
    return {name: tf.make_ndarray(t) for name, t in response.outputs.items()}, response.model_spec.version.value


def images_of(outputs: dict, server: str, count: int):
    """The `images` output of an answer, checked: uint8 [count, H, W, 3]. Raises ClientError
    naming the server otherwise."""
    import numpy as np

    if "images" not in outputs:
        raise ClientError(f"the answer of {server} has no 'images' output (it has {sorted(outputs)})")
    images = outputs["images"]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != count or images.shape[-1] != 3:
        raise ClientError(f"the answer of {server} is not {count} RGB uint8 images: "
                          f"{images.dtype} {list(images.shape)}")
    return images


def word_lists(outputs: dict, name: str, server: str, count: int):
    """Per caption, the list of words in the string output `name` (one string per caption, words
    joined by spaces), or None when the model has no such output (an export made before it
    existed). Raises ClientError when it is not `count` strings."""
    import numpy as np

    if name not in outputs:
        return None
    value = np.asarray(outputs[name])
    if value.shape != (count,) or value.dtype != object:
        raise ClientError(f"the answer of {server} has '{name}' of {value.dtype} {list(value.shape)}, "
                          f"not {count} strings")
    return [(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)).split() for v in value]


def ignored_words(outputs: dict, server: str, count: int):
    """Per caption, the list of its words the model ignored as unknown (the `ignored_words`
    output), or None when the model does not report them; see `word_lists`."""
    return word_lists(outputs, "ignored_words", server, count)


def cut_words(outputs: dict, server: str, count: int):
    """Per caption, the list of its known words the model cut by its length limit (the
    `cut_words` output: the words past data.words_num), or None when the model does not report
    them; see `word_lists`."""
    return word_lists(outputs, "cut_words", server, count)


def generate(server: str, captions: list[str], model_name: str = "mirrorgan", signature: str = "serving_default",
             seed: int = 0, timeout: float = 60.0, noise=None):
    """(images uint8 [N, H, W, 3] for the captions, model version) from the server; see `predict`.
    Raises ClientError when the answer is not N RGB images."""
    outputs, version = predict(server, captions, model_name, signature, seed, timeout, noise)
    return images_of(outputs, server, len(captions)), version


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirrorgan_tf.client", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--server", required=True, help="HOST:PORT of the gRPC endpoint")
    p.add_argument("--caption", action="append", required=True, help="repeat for several images")
    p.add_argument("--out", default=".", help="folder for the PNG files")
    p.add_argument("--model-name", default="mirrorgan")
    p.add_argument("--signature", default="serving_default")
    p.add_argument("--seed", type=int, default=0, help="noise seed for signatures that take noise")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer")
    a = p.parse_args(argv)
    if not re.fullmatch(r"(\[[0-9a-fA-F:]+\]|[\w.-]+):\d+", a.server):
        p.error(f"--server must be HOST:PORT, got {a.server!r}")

    def body() -> int:
        outputs, version = predict(a.server, a.caption, a.model_name, a.signature, a.seed, a.timeout)
        images = images_of(outputs, a.server, len(a.caption))
        ignored = ignored_words(outputs, a.server, len(a.caption))
        cut = cut_words(outputs, a.server, len(a.caption))
        from PIL import Image

        os.makedirs(a.out, exist_ok=True)
        for i, (caption, image) in enumerate(zip(a.caption, images)):
            path = os.path.join(a.out, f"{i:02d}-{slug(caption)}.png")
            Image.fromarray(image).save(path)
            print(path)
            if ignored and ignored[i]:  # the server dropped them, as the original does: say which
                print(f"ignored as unknown in {caption!r}: {' '.join(ignored[i])}", file=sys.stderr)
            if cut and cut[i]:
                print(f"cut by the length limit in {caption!r}: {' '.join(cut[i])}", file=sys.stderr)
        print(f"{len(images)} image(s) from {a.server}, model '{a.model_name}' version {version}", file=sys.stderr)
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
