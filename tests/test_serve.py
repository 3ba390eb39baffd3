"""The model server on the smoke export, as a real subprocess, through TensorFlow Serving's
official gRPC stubs and its REST API: predictions, metadata, every malformed request, a new
version picked up live, the client command and a clean shutdown. The tests run in file order
against one server: those that expect version 1 come before the live pickup of version 2."""

import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow_serving.apis import (classification_pb2, get_model_metadata_pb2, predict_pb2,
                                     prediction_service_pb2_grpc)

from tests.conftest import REPO

MAX_BATCH = 8
MAX_MESSAGE_MB = 1
Z_DIM = 8
SIZE = 64
CAPTIONS = ["a small red circle on the left", "a huge blue block at the top", "a green triangle"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
INVALID, NOT_FOUND = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND


@dataclasses.dataclass
class Server:
    proc: subprocess.Popen
    base: Path
    log: Path
    grpc_address: str
    rest_url: str
    stub: prediction_service_pb2_grpc.PredictionServiceStub

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    run_dir, _ = trained_run
    export = json.loads((run_dir / "stages.json").read_text())["export"]["path"]
    root = tmp_path_factory.mktemp("serve")
    base = root / "mirrorgan"
    shutil.copytree(export, base / "1")
    log = root / "server.log"
    cmd = [sys.executable, "-m", "mirrorgan_tf.serve", "--model-base-path", str(base), "--port", "0",
           "--rest-port", "0", "--max-batch", str(MAX_BATCH), "--max-message-mb", str(MAX_MESSAGE_MB),
           "--poll-seconds", "0.3", "--workers", "4"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=ENV)
    try:
        deadline = time.time() + 120
        while not (ready := re.search(r"gRPC (\S+), REST (http://\S+)", log.read_text())):
            if proc.poll() is not None or time.time() > deadline:
                pytest.fail(f"the server did not start (exit code {proc.poll()}):\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        channel = grpc.insecure_channel(ready[1], options=[("grpc.enable_http_proxy", 0)])
        yield Server(proc, base, log, ready[1], ready[2], prediction_service_pb2_grpc.PredictionServiceStub(channel))
        channel.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def predict_request(captions=None, noise=None, signature="", name="mirrorgan", version=None, label="",
                    output_filter=(), captions_dtype=tf.string, **extra):
    request = predict_pb2.PredictRequest(output_filter=list(output_filter))
    request.model_spec.name = name
    request.model_spec.signature_name = signature
    request.model_spec.version_label = label
    if version is not None:
        request.model_spec.version.value = version
    if captions is not None:
        request.inputs["captions"].CopyFrom(tf.make_tensor_proto(captions, dtype=captions_dtype))
    if noise is not None:
        request.inputs["noise"].CopyFrom(tf.make_tensor_proto(noise))
    for key, value in extra.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))
    return request


def images_of(response) -> np.ndarray:
    return tf.make_ndarray(response.outputs["images"])


def fixed_noise(n, seed=0):
    return np.random.default_rng(seed).standard_normal((n, Z_DIM)).astype(np.float32)


def rest(server, method, path, body=None):
    data = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(server.rest_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_grpc_predict_serving_default(server):
    response = server.stub.Predict(predict_request(CAPTIONS), timeout=60)
    assert response.model_spec.name == "mirrorgan" and response.model_spec.version.value == 1
    assert response.model_spec.signature_name == "serving_default"
    images = images_of(response)
    assert images.dtype == np.uint8 and images.shape == (3, SIZE, SIZE, 3)
    assert images.std() > 0
    again = images_of(server.stub.Predict(predict_request(CAPTIONS, output_filter=["images"]), timeout=60))
    assert (again != images).any()  # fresh noise per call


def test_concurrent_grpc_requests_each_get_their_own_batch(server):
    sizes = [1, 2, 3, 4, 5, 6, 7, 8] * 2

    def call(n):
        return images_of(server.stub.Predict(predict_request([CAPTIONS[n % 3]] * n), timeout=60)).shape

    with futures.ThreadPoolExecutor(8) as pool:
        shapes = list(pool.map(call, sizes))
    assert shapes == [(n, SIZE, SIZE, 3) for n in sizes]


def test_generate_is_deterministic_for_fixed_noise_and_rest_returns_the_same_pixels(server):
    noise = fixed_noise(2)
    request = predict_request(CAPTIONS[:2], noise, signature="generate")
    a, b = (images_of(server.stub.Predict(request, timeout=60)) for _ in range(2))
    assert a.shape == (2, SIZE, SIZE, 3) and (a == b).all()
    c = images_of(server.stub.Predict(predict_request(CAPTIONS[:2], noise + 1.0, signature="generate"), timeout=60))
    assert (a != c).any()
    status, body = rest(server, "POST", "/v1/models/mirrorgan:predict",
                        {"signature_name": "generate", "inputs": {"captions": CAPTIONS[:2], "noise": noise.tolist()}})
    assert status == 200 and np.array_equal(np.array(body["outputs"]["images"], np.uint8), a)
    assert body["outputs"]["ignored_words"] == ["", ""]  # every word of CAPTIONS is known
    assert body["outputs"]["cut_words"] == ["", ""]  # and none is past data.words_num
    status, body = rest(server, "POST", "/v1/models/mirrorgan/versions/1:predict",
                        {"signature_name": "generate",
                         "instances": [{"captions": c, "noise": z} for c, z in zip(CAPTIONS[:2], noise.tolist())]})
    assert status == 200 and np.array_equal(np.array([p["images"] for p in body["predictions"]], np.uint8), a)
    assert [p["ignored_words"] for p in body["predictions"]] == ["", ""]
    assert [p["cut_words"] for p in body["predictions"]] == ["", ""]


def test_grpc_metadata_lists_both_signatures(server):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = "mirrorgan"
    response = server.stub.GetModelMetadata(request, timeout=60)
    assert response.model_spec.name == "mirrorgan" and response.model_spec.version.value == 1
    signatures = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signatures)
    defs = signatures.signature_def
    assert {"serving_default", "generate"} <= set(defs)

    def spec(info):
        return tf.as_dtype(info.dtype).name, [d.size for d in info.tensor_shape.dim]

    assert {k: spec(v) for k, v in defs["serving_default"].inputs.items()} == {"captions": ("string", [-1])}
    assert {k: spec(v) for k, v in defs["generate"].inputs.items()} == {"captions": ("string", [-1]),
                                                                        "noise": ("float32", [-1, Z_DIM])}
    for name in ("serving_default", "generate"):
        assert {k: spec(v) for k, v in defs[name].outputs.items()} == {"images": ("uint8", [-1, SIZE, SIZE, 3]),
                                                                       "ignored_words": ("string", [-1]),
                                                                       "cut_words": ("string", [-1])}
        assert defs[name].method_name == "tensorflow/serving/predict"


def test_rest_predict_row_and_columnar(server):
    status, body = rest(server, "POST", "/v1/models/mirrorgan:predict", {"instances": CAPTIONS[:2]})
    # three outputs (images, ignored_words, cut_words): one object per instance naming them, as TF Serving does
    assert status == 200 and set(body) == {"predictions"}
    assert [set(p) for p in body["predictions"]] == [{"images", "ignored_words", "cut_words"}] * 2
    rows = np.array([p["images"] for p in body["predictions"]])
    assert rows.shape == (2, SIZE, SIZE, 3) and rows.min() >= 0 and rows.max() <= 255
    assert all(isinstance(v, int) for v in body["predictions"][0]["images"][0][0])
    for inputs in ({"captions": CAPTIONS}, CAPTIONS):
        status, body = rest(server, "POST", "/v1/models/mirrorgan:predict",
                            {"signature_name": "serving_default", "inputs": inputs})
        assert status == 200 and np.array(body["outputs"]["images"]).shape == (3, SIZE, SIZE, 3)
        assert body["outputs"]["ignored_words"] == ["", "", ""]
    status, body = rest(server, "POST", "/v1/models/mirrorgan:predict", {"instances": [{"captions": CAPTIONS[0]}]})
    assert status == 200 and np.array([p["images"] for p in body["predictions"]]).shape == (1, SIZE, SIZE, 3)


def test_rest_status_and_metadata(server):
    expected = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                          "status": {"error_code": "OK", "error_message": ""}}]}
    assert rest(server, "GET", "/v1/models/mirrorgan") == (200, expected)
    assert rest(server, "GET", "/v1/models/mirrorgan/versions/1") == (200, expected)
    status, body = rest(server, "GET", "/v1/models/mirrorgan/metadata")
    assert status == 200 and body["model_spec"] == {"name": "mirrorgan", "signature_name": "", "version": "1"}
    defs = body["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "generate"} <= set(defs)
    noise = defs["generate"]["inputs"]["noise"]
    assert noise["dtype"] == "DT_FLOAT" and [d["size"] for d in noise["tensor_shape"]["dim"]] == ["-1", str(Z_DIM)]
    assert defs["serving_default"]["outputs"]["images"]["dtype"] == "DT_UINT8"
    assert rest(server, "GET", "/v1/models/mirrorgan/versions/1/metadata")[0] == 200


def _without_dtype():
    request = predict_request(["a red circle"])
    request.inputs["captions"].ClearField("dtype")
    return request


def _truncated_noise():
    request = predict_request(["a red circle"] * 2, fixed_noise(2), "generate")
    request.inputs["noise"].tensor_content = request.inputs["noise"].tensor_content[:-4]  # 15 floats for [2, 8]
    return request


GRPC_MALFORMED = {
    "missing input": (lambda: predict_request(["a red circle"], signature="generate"), INVALID, ["missing input 'noise'"]),
    "no input at all": (lambda: predict_request(), INVALID, ["missing input 'captions'"]),
    "extra input": (lambda: predict_request(["a red circle"], noise=fixed_noise(1)), INVALID, ["unknown input 'noise'"]),
    "wrong dtype": (lambda: predict_request(np.ones(2, np.float32), captions_dtype=None), INVALID,
                    ["'captions'", "DT_STRING", "DT_FLOAT"]),
    "wrong rank": (lambda: predict_request([["a red circle"]]), INVALID, ["'captions'", "rank 1", "rank 2"]),
    "empty batch": (lambda: predict_request(np.array([], dtype=object)), INVALID, ["empty batch", "'captions'"]),
    "too many captions": (lambda: predict_request(["a red circle"] * (MAX_BATCH + 1)), INVALID,
                          [f"has {MAX_BATCH + 1}", f"at most {MAX_BATCH}", "--max-batch"]),
    "unknown model": (lambda: predict_request(["a red circle"], name="nosuchmodel"), NOT_FOUND,
                      ["'nosuchmodel'", "'mirrorgan'"]),
    "missing model name": (lambda: predict_request(["a red circle"], name=""), INVALID, ["model name"]),
    "unknown version": (lambda: predict_request(["a red circle"], version=7), NOT_FOUND, ["version 7", "version is 1"]),
    "version label": (lambda: predict_request(["a red circle"], label="stable"), NOT_FOUND, ["label 'stable'"]),
    "unknown signature": (lambda: predict_request(["a red circle"], signature="nosuchsig"), INVALID,
                          ["'nosuchsig'", "generate, serving_default"]),
    "no known word": (lambda: predict_request(["a red circle", "zzz qqq"]), INVALID,
                      ['no word of these captions is in the vocabulary: element 1 "zzz qqq"']),
    "noise of the wrong size": (lambda: predict_request(["a red circle"], np.zeros((1, 5), np.float32), "generate"),
                                INVALID, ["'noise'", f"[?, {Z_DIM}]", "[1, 5]"]),
    "noise for another batch": (lambda: predict_request(["a red circle"], fixed_noise(2), "generate"), INVALID,
                                ["batch size", "'captions' has 1", "'noise' has 2"]),
    "noise of the wrong dtype": (lambda: predict_request(["a red circle"], np.zeros((1, Z_DIM)), "generate"),
                                 INVALID, ["'noise'", "DT_FLOAT", "DT_DOUBLE"]),
    "unknown output": (lambda: predict_request(["a red circle"], output_filter=["masks"]), INVALID, ["'masks'", "images"]),
    "truncated tensor": (_truncated_noise, INVALID, ["'noise'", "not a valid TensorProto"]),
    "tensor without dtype": (_without_dtype, INVALID, ["'captions'", "no valid dtype"]),
    "message over the cap": (lambda: predict_request(["red " * (MAX_MESSAGE_MB * 2**18 + 10)]),
                             grpc.StatusCode.RESOURCE_EXHAUSTED, ["larger than max"]),
    # bytes that are not UTF-8: a caption with no word the tokenizer can read used to fail inside
    # the graph's error message (INTERNAL), one with known words was served from the rest
    "caption not UTF-8": (lambda: predict_request(["a red circle", b"\xff\xfe"]), INVALID,
                          ["input 'captions' element 1", "not UTF-8", "byte 0xff at offset 0"]),
    "caption with a surrogate in UTF-8": (lambda: predict_request([b"a red \xed\xa0\xbd circle"]), INVALID,
                                          ["element 0", "byte 0xed at offset 6"]),
}


@pytest.mark.parametrize("case", list(GRPC_MALFORMED))
def test_grpc_malformed_request(server, case):
    make, code, fragments = GRPC_MALFORMED[case]
    with pytest.raises(grpc.RpcError) as error:
        server.stub.Predict(make(), timeout=60)
    assert error.value.code() == code, error.value.details()
    for fragment in fragments:
        assert fragment in error.value.details()


def test_grpc_malformed_metadata_and_unimplemented_calls(server):
    def metadata(fields, name="mirrorgan"):
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
        request.model_spec.name = name
        return request

    for request, code, fragment in [(metadata([]), INVALID, "metadata_field"),
                                    (metadata(["signature_def", "tags"]), INVALID, "'tags'"),
                                    (metadata(["signature_def"], "nosuchmodel"), NOT_FOUND, "'nosuchmodel'")]:
        with pytest.raises(grpc.RpcError) as error:
            server.stub.GetModelMetadata(request, timeout=60)
        assert error.value.code() == code and fragment in error.value.details(), error.value.details()
    with pytest.raises(grpc.RpcError) as error:
        server.stub.Classify(classification_pb2.ClassificationRequest(), timeout=60)
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED and "use Predict" in error.value.details()


PREDICT = "/v1/models/mirrorgan:predict"
REST_MALFORMED = {
    "not JSON": ("POST", PREDICT, b"{captions: red", 400, ["not valid JSON"]),
    "neither instances nor inputs": ("POST", PREDICT, {"captions": ["a red circle"]}, 400, ["'instances'", "'inputs'"]),
    "both instances and inputs": ("POST", PREDICT, {"instances": ["a"], "inputs": ["a"]}, 400, ["exactly one"]),
    "unknown model": ("POST", "/v1/models/nosuchmodel:predict", {"instances": ["a red circle"]}, 404, ["'nosuchmodel'"]),
    "unknown version": ("POST", "/v1/models/mirrorgan/versions/7:predict", {"instances": ["a red circle"]}, 404,
                        ["version 7"]),
    "version label": ("POST", "/v1/models/mirrorgan/labels/stable:predict", {"instances": ["a"]}, 404, ["'stable'"]),
    "unknown signature": ("POST", PREDICT, {"signature_name": "nosuchsig", "instances": ["a"]}, 400, ["'nosuchsig'"]),
    "numbers for captions": ("POST", PREDICT, {"instances": [1, 2]}, 400, ["'captions'", "DT_STRING"]),
    "wrong rank": ("POST", PREDICT, {"inputs": {"captions": [["a red circle"]]}}, 400, ["'captions'", "rank 1"]),
    "empty batch": ("POST", PREDICT, {"instances": []}, 400, ["empty batch"]),
    "too many captions": ("POST", PREDICT, {"instances": ["a red circle"] * (MAX_BATCH + 1)}, 400,
                          [f"at most {MAX_BATCH}"]),
    "extra input": ("POST", PREDICT, {"inputs": {"captions": ["a red circle"], "mood": ["calm"]}}, 400,
                    ["unknown input 'mood'"]),
    "missing input": ("POST", PREDICT, {"signature_name": "generate", "inputs": {"captions": ["a red circle"]}}, 400,
                      ["missing input 'noise'"]),
    "plain instances for two inputs": ("POST", PREDICT, {"signature_name": "generate", "instances": ["a red circle"]},
                                       400, ["naming the inputs", "captions, noise"]),
    "ragged noise": ("POST", PREDICT, {"signature_name": "generate",
                                       "inputs": {"captions": ["a", "b"], "noise": [[0.0] * Z_DIM, [0.0] * 3]}}, 400,
                     ["'noise'", "rectangular"]),
    "strings for noise": ("POST", PREDICT, {"signature_name": "generate",
                                            "inputs": {"captions": ["a red circle"], "noise": [["x"] * Z_DIM]}}, 400,
                          ["'noise'", "numbers"]),
    "no known word": ("POST", PREDICT, {"instances": ["a red circle", ""]}, 400,
                      ['no word of these captions is in the vocabulary: element 1 ""']),
    "lone surrogate": ("POST", PREDICT, b'{"instances": ["a red circle", "a red \\ud83d circle"]}', 400,
                       ["input 'captions' element 1", "lone UTF-16 surrogate U+D83D"]),
    "lone surrogate in columnar inputs": ("POST", PREDICT, b'{"inputs": {"captions": ["a", "\\udc00 red"]}}', 400,
                                          ["input 'captions' element 1", "U+DC00"]),
    "b64 caption not UTF-8": ("POST", PREDICT, {"instances": [{"b64": "/2EgcmVk"}]}, 400,
                              ["element 0", "not UTF-8", "byte 0xff"]),
    "body not UTF-8": ("POST", PREDICT, '{"instances": ["a red c\xedrcle"]}'.encode("latin-1"), 400,
                       ["not UTF-8", "byte 0xed at offset 23"]),
    "body in UTF-16": ("POST", PREDICT, '{"instances": ["a red circle"]}'.encode("utf-16"), 400, ["not UTF-8"]),
    "body nested too deeply": ("POST", PREDICT, b'{"instances": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400,
                               ["too deeply"]),
    "caption nested 900 deep": ("POST", PREDICT, b'{"instances": ' + b"[" * 900 + b'"a"' + b"]" * 900 + b"}", 400,
                                ["'captions'", "more than 32 deep"]),
    "noise of 5000 digits": ("POST", PREDICT, b'{"signature_name": "generate", "inputs": {"captions": ["a"], '
                             b'"noise": [[' + b"9" * 5000 + b"]]}}", 400, ["not valid JSON", "4300 digits"]),
    "noise beyond float32": ("POST", PREDICT, {"signature_name": "generate", "inputs": {
        "captions": ["a red circle"], "noise": [[0.0] * (Z_DIM - 1) + [10 ** 400]]}}, 400,
        ["'noise' element [0, 7]", "beyond the range of DT_FLOAT"]),
    "classify": ("POST", "/v1/models/mirrorgan:classify", {"instances": ["a"]}, 501, ["use :predict"]),
    "unknown path": ("GET", "/v2/everything", None, 404, ["/v2/everything"]),
    "status of an unknown model": ("GET", "/v1/models/nosuchmodel", None, 404, ["'nosuchmodel'"]),
    "metadata of an unknown version": ("GET", "/v1/models/mirrorgan/versions/7/metadata", None, 404, ["version 7"]),
}


@pytest.mark.parametrize("case", list(REST_MALFORMED))
def test_rest_malformed_request(server, case):
    method, path, body, expected_status, fragments = REST_MALFORMED[case]
    status, answer = rest(server, method, path, body)
    assert status == expected_status, answer
    for fragment in fragments:
        assert fragment in answer["error"]


def test_grpc_request_that_is_not_a_valid_message(server):
    """Bytes that do not parse as a PredictRequest (a model name that is not UTF-8, a corrupt
    wire format) get INVALID_ARGUMENT naming the type, not gRPC's INTERNAL with a traceback."""
    channel = grpc.insecure_channel(server.grpc_address, options=[("grpc.enable_http_proxy", 0)])
    predict = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                  request_serializer=lambda raw: raw, response_deserializer=lambda raw: raw)
    bad_name = predict_request(["a red circle"]).SerializeToString().replace(b"mirrorgan", b"mirr\xffgan")
    for raw, fragment in [(bad_name, "bad UTF-8"), (b"\xff\xff\xff", "corrupt")]:
        with pytest.raises(grpc.RpcError) as error:
            predict(raw, timeout=60)
        assert error.value.code() == INVALID, error.value.details()
        assert "not a valid tensorflow.serving.PredictRequest" in error.value.details()
        assert fragment in error.value.details()
    channel.close()


def test_rest_body_over_the_cap_is_refused_unread(server):
    host, port = server.rest_url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.putrequest("POST", PREDICT)
    connection.putheader("Content-Length", str(MAX_MESSAGE_MB * 2**20 + 1))
    connection.endheaders()  # the body never comes: the answer must not wait for it
    response = connection.getresponse()
    assert response.status == 413 and "cap" in json.loads(response.read())["error"]
    connection.close()


def test_server_still_answers_after_the_malformed_requests(server):
    assert server.proc.poll() is None
    images = images_of(server.stub.Predict(predict_request(CAPTIONS), timeout=60))
    assert images.shape == (3, SIZE, SIZE, 3)
    assert rest(server, "GET", "/v1/models/mirrorgan")[1]["model_version_status"][0]["state"] == "AVAILABLE"
    assert "Traceback" not in server.log_text()


def _served_version(server) -> int:
    return server.stub.Predict(predict_request(["a red circle"]), timeout=60).model_spec.version.value


def _wait_for(condition, what, timeout=60):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.2)


def test_new_versions_are_picked_up_live_and_a_broken_one_is_not(server):
    staging = server.base / ".incomplete-2-0a1b"  # how the export stages a version
    shutil.copytree(server.base / "1", staging)
    time.sleep(1.0)  # several polls: a hidden folder is not a version
    assert _served_version(server) == 1
    os.rename(staging, server.base / "2")
    _wait_for(lambda: _served_version(server) == 2, "serving version 2")
    with pytest.raises(grpc.RpcError) as error:  # only the latest version is served
        server.stub.Predict(predict_request(["a red circle"], version=1), timeout=60)
    assert error.value.code() == NOT_FOUND

    broken = server.base / ".incomplete-3"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    os.rename(broken, server.base / "3")

    def three_failed():
        rows = rest(server, "GET", "/v1/models/mirrorgan")[1]["model_version_status"]
        return any(r["version"] == "3" for r in rows)

    _wait_for(three_failed, "the failure of version 3 showing in the status")
    rows = {r["version"]: r for r in rest(server, "GET", "/v1/models/mirrorgan")[1]["model_version_status"]}
    assert rows["2"]["state"] == "AVAILABLE"
    assert rows["3"]["state"] == "END" and rows["3"]["status"]["error_code"] != "OK"
    assert rows["3"]["status"]["error_message"]
    assert _served_version(server) == 2
    assert "version 3 of mirrorgan failed to load, still serving version 2" in server.log_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_writes_one_png_per_caption(server, tmp_path):
    cmd = [sys.executable, "-m", "mirrorgan_tf.client", "--server", server.grpc_address, "--out", str(tmp_path),
           "--caption", CAPTIONS[0], "--caption", "A huge BLUE block, at the top!"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 0, r.stderr[-2000:]
    paths = r.stdout.split()
    assert [Path(p).name for p in paths] == ["00-a-small-red-circle-on-the-left.png", "01-a-huge-blue-block-at-the-top.png"]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG" and image.mode == "RGB" and image.size == (SIZE, SIZE)

    address = f"127.0.0.1:{_free_port()}"
    r = subprocess.run(cmd[:4] + [address, "--caption", "a red circle", "--timeout", "10"], cwd=REPO,
                       capture_output=True, text=True, timeout=120, env=ENV)
    assert r.returncode == 2 and f"cannot reach the model server at {address}" in r.stderr


def test_client_library_generate_and_its_errors(server):
    from mirrorgan_tf.client import ClientError, generate

    a, version = generate(server.grpc_address, CAPTIONS[:2], signature="generate", seed=5)
    b, _ = generate(server.grpc_address, CAPTIONS[:2], signature="generate", seed=5)
    assert a.shape == (2, SIZE, SIZE, 3) and (a == b).all() and version == 2
    with pytest.raises(ClientError, match=f"model server at {re.escape(server.grpc_address)} answered "
                                          "INVALID_ARGUMENT: .*zzz qqq"):
        generate(server.grpc_address, ["zzz qqq"])


def test_the_server_refuses_a_missing_base_path(tmp_path):
    from mirrorgan_tf.serving.server import ModelServer, ServerConfig

    with pytest.raises(FileNotFoundError, match="nowhere"):
        ModelServer(ServerConfig(base_path=str(tmp_path / "nowhere")))


def test_sigterm_shuts_the_server_down_cleanly(server):
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) == 0
    log = server.log_text()
    assert "shutting down" in log and "stopped" in log.splitlines()
