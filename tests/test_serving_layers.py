"""The server's layers on small real SavedModels (tests/serving_models.py), without the smoke
training run: the registry with no gRPC, the REST routes with no socket, and the message caps
checked before the model runs (in-process servers for the gRPC ones)."""

import json
import re
import logging
import os
import shutil
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import get_model_status_pb2, predict_pb2, prediction_service_pb2_grpc

from mirrorgan_tf.serving.errors import ServingError
from mirrorgan_tf.serving.grpc_service import response_bytes
from mirrorgan_tf.serving.predict import Predictor
from mirrorgan_tf.serving.registry import ModelRegistry
from mirrorgan_tf.serving.rest import RestApi, json_response_bound
from mirrorgan_tf.serving.server import ModelServer, ServerConfig
from tests.conftest import REPO
from tests.serving_models import Z_DIM, PainterExports

KIB = 1024
AVAILABLE, END = get_model_status_pb2.ModelVersionStatus.AVAILABLE, get_model_status_pb2.ModelVersionStatus.END


@pytest.fixture(scope="module")
def painters(tmp_path_factory):
    return PainterExports(tmp_path_factory.mktemp("painters"))


def served(registry):
    return registry.get().version


def test_registry_versions_appear_fail_and_swap(painters, tmp_path, caplog):
    base = tmp_path / "model"
    base.mkdir()
    registry = ModelRegistry("painter", str(base), poll_seconds=3600)
    registry.refresh()
    with pytest.raises(ServingError) as error:
        registry.get()
    assert error.value.code == grpc.StatusCode.UNAVAILABLE and "no loaded version yet" in error.value.message
    with pytest.raises(ServingError, match="has no version yet"):
        registry.status()

    painters.version(base, 1)
    (base / ".incomplete-5").mkdir()  # how the export stages a version: never a version itself
    (base / "7-old").mkdir()
    registry.refresh()
    assert served(registry) == 1 and sorted(registry.scan()) == [1]

    broken = base / "3"
    broken.mkdir()
    (broken / "saved_model.pb").write_bytes(b"not a SavedModel")
    with caplog.at_level(logging.ERROR, "mirrorgan_tf.serve"):
        registry.refresh()
    assert served(registry) == 1
    assert "version 3 of painter failed to load, still serving version 1" in caplog.text
    rows = {s.version: s for s in registry.status().model_version_status}
    assert sorted(rows) == [1, 3]
    assert rows[1].state == AVAILABLE and rows[1].status.error_code == 0 and not rows[1].status.error_message
    assert rows[3].state == END and "Wire format was corrupt" in rows[3].status.error_message
    caplog.clear()
    with caplog.at_level(logging.INFO, "mirrorgan_tf.serve"):
        registry.refresh()  # same files: not retried
    assert "loading painter version 3" not in caplog.text

    painters.version(base, 2)  # lower than the broken 3, higher than the served 1
    registry.refresh()
    assert served(registry) == 2
    with pytest.raises(ServingError) as error:
        registry.get(1)
    assert error.value.code == grpc.StatusCode.NOT_FOUND and "served version is 2" in error.value.message

    old = registry.get()
    for path in broken.iterdir():
        path.unlink()
    broken.rmdir()
    painters.version(base, 3)  # repaired: its files changed, so it is tried again
    registry.refresh()
    assert served(registry) == 3
    assert [s.version for s in registry.status().model_version_status] == [3]
    assert old.signatures["serving_default"].function(captions=tf.constant(["abc"]))["images"].numpy()[0, 0, 0, 0] == 3

    for version in (3, 2):  # the served folder removed: the highest left is served
        shutil.rmtree(base / str(version))
    registry.refresh()
    assert served(registry) == 1


def test_registry_calls_on_loaded_with_each_new_version(painters, tmp_path):
    base = tmp_path / "model"
    painters.version(base, 4)
    registry = ModelRegistry("painter", str(base))
    seen = []
    registry.on_loaded = lambda loaded: seen.append((loaded.version, sorted(loaded.signatures)))
    registry.refresh()
    registry.refresh()
    assert seen == [(4, ["generate", "serving_default"])]


@pytest.fixture
def rest_api(painters, tmp_path):
    """RestApi over a 16 x 16 painter (768 bytes per image), capped at 12 KiB answers."""
    base = tmp_path / "model"
    painters.version(base, 1, size=16)
    registry = ModelRegistry("painter", str(base))
    registry.refresh()
    return RestApi(Predictor(registry, max_batch=16, concurrency=2), max_body=12 * KIB)


def calls(api) -> int:
    return int(api.predictor.registry.get().module.calls.numpy())


def post(api, body, path="/v1/models/painter:predict"):
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return api.post(path, lambda: raw)


def test_rest_routes_without_a_socket(rest_api):
    answer = post(rest_api, {"instances": ["ab", "abcd"]})
    images = np.array(answer["predictions"])
    assert images.shape == (2, 16, 16, 3) and images[0].max() == images[0].min() == 2 and images[1].min() == 4
    answer = post(rest_api, {"signature_name": "generate",
                             "inputs": {"captions": ["ab"], "noise": [[3.0] + [0.0] * (Z_DIM - 1)]}})
    assert np.array(answer["outputs"]).min() == 5
    assert rest_api.get("/v1/models/painter")["model_version_status"][0]["state"] == "AVAILABLE"
    assert set(rest_api.get("/v1/models/painter/metadata")["metadata"]["signature_def"]["signature_def"]) >= \
        {"generate", "serving_default"}
    assert calls(rest_api) == 2

    read = []
    with pytest.raises(ServingError) as error:
        rest_api.post("/v2/nothing", lambda: read.append(1) or b"{}")
    assert error.value.http_status == 404 and read == []  # an unknown route leaves the body unread


def test_rest_bad_text_is_refused_before_the_model(rest_api):
    with pytest.raises(ServingError) as error:
        post(rest_api, b'{"instances": ["a red circle", "a red \\ud83d circle"]}')
    assert error.value.http_status == 400 and "input 'captions' element 1" in error.value.message
    with pytest.raises(ServingError) as error:
        post(rest_api, {"instances": ["ok", {"b64": "/w=="}]})
    assert error.value.http_status == 400 and "element 1 is not UTF-8 text: byte 0xff" in error.value.message
    assert calls(rest_api) == 0


def test_rest_answers_over_the_cap_are_refused_before_the_model(rest_api):
    signature = rest_api.predictor.registry.get().signatures["serving_default"]
    per_image = json_response_bound(signature, ["images"], 2) - json_response_bound(signature, ["images"], 1)
    # a 16 x 16 image: 768 values x 3 + 256 pixel lists x 6 + 16 rows x 32 + 32 = 4384, a separator,
    # 16 for its name in a row-format answer
    assert per_image == 4402
    assert json_response_bound(signature, ["images"], 2) <= 12 * KIB < json_response_bound(signature, ["images"], 3)
    with pytest.raises(ServingError) as error:
        post(rest_api, {"instances": ["ab", "cd", "ef"]})
    assert error.value.http_status == 400
    assert "answer to 3 examples would take up to 13238 bytes as JSON" in error.value.message
    assert "(--max-message-mb 0.0117); send at most 2 per request" in error.value.message
    assert calls(rest_api) == 0
    answer = post(rest_api, {"instances": ["ab", "cd"]})
    assert len(json.dumps(answer)) <= 12 * KIB and calls(rest_api) == 1


def test_grpc_response_bound_covers_the_real_message(painters, tmp_path):
    base = tmp_path / "model"
    painters.version(base, 12, size=16)
    registry = ModelRegistry("painter", str(base))
    registry.refresh()
    loaded = registry.get()
    signature = loaded.signatures["serving_default"]
    for batch in (1, 3, 40):
        images = signature.function(captions=tf.constant(["x" * 255] * batch))["images"].numpy()
        response = predict_pb2.PredictResponse()
        response.model_spec.name = "painter"
        response.model_spec.version.value = 12
        response.model_spec.signature_name = "serving_default"
        response.outputs["images"].CopyFrom(tf.make_tensor_proto(images))
        bound = response_bytes(signature, ["images"], batch, "painter", 12)
        assert response.ByteSize() <= bound <= response.ByteSize() + 16


def server_config(base, **caps):
    return ServerConfig(base_path=str(base), model_name="painter", port=0, rest_port=0, poll_seconds=3600, **caps)


def test_start_up_refuses_max_batch_answers_that_cannot_fit_a_grpc_message(painters, tmp_path):
    base = tmp_path / "model"
    painters.version(base, 1, size=64)  # 12 288 bytes per image
    server = ModelServer(server_config(base, max_batch=32, max_message_mb=0.25))
    with pytest.raises(ValueError) as error:
        server.start()
    message = str(error.value)
    assert "--max-batch 32 and --max-message-mb 0.25 do not fit together" in message
    assert "takes up to 393" in message and "as a gRPC message" in message
    assert "lower --max-batch to 21 or raise --max-message-mb to 0.38" in message
    assert server.grpc_port is None  # nothing was opened

    server = ModelServer(server_config(base, max_batch=2, max_message_mb=0.01))
    with pytest.raises(ValueError, match=r"--max-message-mb 0\.01 do not fit.*not even one example fits: raise --max-message-mb to 0\.03"):
        server.start()


def test_grpc_answers_over_the_cap_are_refused_before_the_model(painters, tmp_path, caplog):
    base = tmp_path / "model"
    painters.version(base, 1, size=16)
    server = ModelServer(server_config(base, max_batch=8, max_message_mb=0.25))
    with caplog.at_level(logging.WARNING, "mirrorgan_tf.serve"):
        server.start()  # 8 x 768 bytes fit; 8 JSON answers (8 x 4378) fit too: no warning
    try:
        assert "do not fit" not in caplog.text
        painters.version(base, 2, size=128)  # 49 152 bytes per image: 5 fit in 0.25 MiB
        with caplog.at_level(logging.WARNING, "mirrorgan_tf.serve"):
            server.registry.refresh()
        assert server.registry.get().version == 2
        assert ("--max-batch 8 and --max-message-mb 0.25 do not fit together: the answer to 8 examples of "
                "signature 'generate' (version 2)") in caplog.text
        assert "lower --max-batch to 5" in caplog.text and "as JSON over REST" in caplog.text

        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=[("grpc.enable_http_proxy", 0)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def request(n):
            r = predict_pb2.PredictRequest()
            r.model_spec.name = "painter"
            r.inputs["captions"].CopyFrom(tf.make_tensor_proto(["abc"] * n, dtype=tf.string))
            return r

        with pytest.raises(grpc.RpcError) as error:
            stub.Predict(request(6), timeout=60)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "answer to 6 examples would take up to" in error.value.details()
        assert "as a gRPC message" in error.value.details() and "send at most 5" in error.value.details()
        assert int(server.registry.get().module.calls.numpy()) == 0  # the model never ran
        images = tf.make_ndarray(stub.Predict(request(5), timeout=60).outputs["images"])
        assert images.shape == (5, 128, 128, 3) and (images == 3).all()
        channel.close()
    finally:
        server.stop()


def test_string_outputs_are_checked_once_the_answer_exists(painters, tmp_path, caplog):
    """A string output (the export's ignored_words) has no size before the model runs: the start-up
    and pre-run checks bound the other outputs (a lower bound), the answer itself is checked after."""
    base = tmp_path / "echo"
    painters.version(base, 1, size=64, echo=True)
    with pytest.raises(ValueError, match="lower --max-batch to 21 or raise --max-message-mb to 0.38"):
        ModelServer(server_config(base, max_batch=32, max_message_mb=0.25)).start()  # as without the strings

    base = tmp_path / "echo-32"
    painters.version(base, 1, size=32, echo=True)  # 3 072 bytes per image
    with caplog.at_level(logging.WARNING, "mirrorgan_tf.serve"):
        server = ModelServer(server_config(base, max_batch=2, max_message_mb=0.01))  # 10 485 bytes
        server.start()
    try:
        channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=[("grpc.enable_http_proxy", 0)])
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)

        def request(captions):
            r = predict_pb2.PredictRequest()
            r.model_spec.name = "painter"
            r.inputs["captions"].CopyFrom(tf.make_tensor_proto(captions, dtype=tf.string))
            return r

        answer = stub.Predict(request(["ab", "abc"]), timeout=60)
        assert [v.decode() for v in tf.make_ndarray(answer.outputs["ignored_words"])] == ["ab", "abc"]
        with pytest.raises(grpc.RpcError) as error:  # two images fit; with 5 000 bytes of strings they do not
            stub.Predict(request(["x" * 2500] * 2), timeout=60)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert re.fullmatch(r"the answer takes 1\d{4} bytes as a gRPC message, more than the cap of 10485 bytes "
                            r"\(--max-message-mb 0.01\); send fewer examples", error.value.details())
        channel.close()
    finally:
        server.stop()

    registry = ModelRegistry("painter", str(base))
    registry.refresh()
    api = RestApi(Predictor(registry, max_batch=4, concurrency=1), max_body=40 * KIB)
    rows = post(api, {"instances": ["ab", "abc"]})["predictions"]  # one object per caption, strings as text
    assert [r["ignored_words"] for r in rows] == ["ab", "abc"] and np.array(rows[0]["images"]).shape == (32, 32, 3)
    with pytest.raises(ServingError) as error:  # the images alone exceed the cap: refused before the model
        post(api, {"instances": ["ab"] * 3})
    assert "answer to 3 examples would take up to" in error.value.message and calls(api) == 1
    with pytest.raises(ServingError) as error:  # the images fit, the strings do not: refused after it
        post(api, {"instances": ["x" * 4000] * 2})
    assert re.fullmatch(r"the answer takes 4\d{4} bytes as JSON, more than the cap of 40960 bytes "
                        r"\(--max-message-mb 0.0391\); send fewer examples", error.value.message)


def test_the_serve_command_refuses_flags_that_do_not_fit(painters, tmp_path):
    base = tmp_path / "model"
    painters.version(base, 1, size=64)
    cmd = [sys.executable, "-m", "mirrorgan_tf.serve", "--model-base-path", str(base), "--port", "0",
           "--rest-port", "0", "--max-batch", "32", "--max-message-mb", "0.25"]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert r.returncode == 2, r.stderr[-2000:]
    assert "--max-batch 32 and --max-message-mb 0.25 do not fit together" in r.stderr
    assert "serving model" not in r.stdout


@pytest.fixture(scope="module")
def word_painter(tmp_path_factory):
    """A registry serving a WordPainter (the export's caption handling, data.words_num 8)."""
    from tests.serving_models import save_word_painter

    base = tmp_path_factory.mktemp("word-painter") / "painter"
    base.mkdir()
    save_word_painter(base / "1", words_num=8)
    registry = ModelRegistry("painter", str(base), poll_seconds=3600)
    registry.refresh()
    return registry


# the caption: past 8 known words, "the top right of the image" and "the bottom" are cut
LONG = "a small red circle on the left, not at the top right of the image: the bottom"
WORD_CAPTIONS = [LONG, "a small red racoon", "a red square"]
CUT = ["top right of the image the bottom", "", ""]
IGNORED = ["not at", "racoon", ""]


def grpc_predict(registry, captions):
    from mirrorgan_tf.serving.grpc_service import PredictionServicer

    request = predict_pb2.PredictRequest()
    request.model_spec.name = "painter"
    request.inputs["captions"].CopyFrom(tf.make_tensor_proto(captions, dtype=tf.string))
    servicer = PredictionServicer(Predictor(registry, max_batch=8, concurrency=1))
    return {n: tf.make_ndarray(t) for n, t in servicer._predict(request).outputs.items()}


def test_answers_carry_the_words_cut_by_the_length_limit(word_painter):
    answer = grpc_predict(word_painter, WORD_CAPTIONS)
    assert sorted(answer) == ["cut_words", "ignored_words", "images"]
    assert [w.decode() for w in answer["cut_words"]] == CUT
    assert [w.decode() for w in answer["ignored_words"]] == IGNORED
    assert answer["images"][:, 0, 0, 0].tolist() == [8, 3, 3]  # the ids kept: at most words_num
    api = RestApi(Predictor(word_painter, max_batch=8, concurrency=1), max_body=64 * KIB)
    rows = post(api, {"instances": WORD_CAPTIONS})["predictions"]
    assert [r["cut_words"] for r in rows] == CUT and [r["ignored_words"] for r in rows] == IGNORED
    columns = post(api, {"inputs": {"captions": WORD_CAPTIONS}})["outputs"]
    assert columns["cut_words"] == CUT and columns["ignored_words"] == IGNORED

    from mirrorgan_tf import client

    assert client.cut_words(answer, "s:1", 3) == [CUT[0].split(), [], []]
    assert client.cut_words({"images": answer["images"]}, "s:1", 3) is None  # an export made before the output


NO_WORD = ["a red circle", "", 'zebra "quokka"', "caf\u00e9 \\o/"]
NO_WORD_MESSAGE = ('no word of these captions is in the vocabulary: element 1 ""; element 2 "zebra "quokka""; '
                   'element 3 "caf\u00e9 \\o/"')


def test_a_caption_with_no_known_word_is_named_by_index_and_text(word_painter):
    with pytest.raises(ServingError) as error:
        grpc_predict(word_painter, NO_WORD)
    assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT and error.value.message == NO_WORD_MESSAGE
    api = RestApi(Predictor(word_painter, max_batch=8, concurrency=1), max_body=64 * KIB)
    for body in ({"instances": NO_WORD}, {"inputs": {"captions": NO_WORD}}):
        with pytest.raises(ServingError) as error:
            post(api, body)
        assert error.value.http_status == 400 and error.value.message == NO_WORD_MESSAGE
    with pytest.raises(ServingError) as error:
        post(api, {"instances": [""]})
    assert error.value.message == 'no word of these captions is in the vocabulary: element 0 ""'


def test_the_stock_model_server_passes_on_the_same_message(word_painter):
    """What TF Serving answers is the graph's error as it stands: the failed assertion, its text
    C-escaped by the Assert op (quotes and backslashes; UTF-8 kept)."""
    signature = word_painter.get().signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        signature.function(captions=tf.constant(NO_WORD))
    assert ('assertion failed: [no word of these captions is in the vocabulary: element 1 \\"\\"; '
            'element 2 \\"zebra \\"quokka\\"\\"; element 3 \\"caf\u00e9 \\\\o/\\"]') in error.value.message
