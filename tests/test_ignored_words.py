"""Words outside the vocabulary are still dropped, as the original code drops them, but no
longer silently: the export's `ignored_words` output through our model server's gRPC and REST
APIs, and the client command that prints them (sample's and the tokenizer's are tested beside
them, in test_evaluate.py and test_text.py)."""

import json
import shutil
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

CAPTIONS = ["a racoon detective with a huge blue block", "a small red circle", "Racoon: a red circle, racoon"]
IGNORED = ["racoon detective with", "", "racoon racoon"]  # normalised, in caption order; no "with" in shapes
LONG = "a small red circle on the left a huge blue block at the top a small red circle"
NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def server(trained_run, tmp_path_factory):
    from mirrorgan_tf.serving.server import ModelServer, ServerConfig

    run_dir, _ = trained_run
    export = json.loads((run_dir / "stages.json").read_text())["export"]["path"]
    base = tmp_path_factory.mktemp("ignored-serve") / "mirrorgan"
    shutil.copytree(export, base / "1")
    s = ModelServer(ServerConfig(str(base), port=0, rest_port=0, poll_seconds=30, workers=2))
    s.start()
    yield s
    s.stop(grace=1)


def test_grpc_answers_ignored_words_for_both_signatures(server):
    import grpc

    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}", options=[("grpc.enable_http_proxy", 0)]) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        for signature, noise in (("serving_default", None), ("generate", np.zeros((3, 8), np.float32))):
            request = predict_pb2.PredictRequest()
            request.model_spec.name, request.model_spec.signature_name = "mirrorgan", signature
            request.inputs["captions"].CopyFrom(tf.make_tensor_proto(CAPTIONS, dtype=tf.string))
            if noise is not None:
                request.inputs["noise"].CopyFrom(tf.make_tensor_proto(noise))
            response = stub.Predict(request, timeout=60)
            assert sorted(response.outputs) == ["cut_words", "ignored_words", "images"]
            assert [w.decode() for w in tf.make_ndarray(response.outputs["ignored_words"])] == IGNORED
            assert tf.make_ndarray(response.outputs["images"]).shape == (3, 64, 64, 3)


def test_rest_answers_ignored_words_in_both_formats(server):
    url = f"http://127.0.0.1:{server.rest_port}/v1/models/mirrorgan:predict"

    def post(body):
        request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
        with NO_PROXY.open(request, timeout=60) as r:
            return json.loads(r.read())

    columns = post({"inputs": {"captions": CAPTIONS}})["outputs"]
    assert columns["ignored_words"] == IGNORED and np.array(columns["images"]).shape == (3, 64, 64, 3)
    rows = post({"instances": CAPTIONS})["predictions"]  # several outputs: one object per caption
    assert [r["ignored_words"] for r in rows] == IGNORED
    assert [np.array(r["images"]).shape for r in rows] == [(64, 64, 3)] * 3


def test_the_client_prints_the_ignored_words(server, tmp_path, capsys):
    from mirrorgan_tf import client

    args = ["--server", f"127.0.0.1:{server.grpc_port}", "--out", str(tmp_path)]
    assert client.main([*args, *(x for c in CAPTIONS for x in ("--caption", c))]) == 0
    out, err = capsys.readouterr()
    assert out.split() == [str(tmp_path / n) for n in ("00-a-racoon-detective-with-a-huge-blue-block.png",
                                                       "01-a-small-red-circle.png", "02-racoon-a-red-circle-racoon.png")]
    assert [line for line in err.splitlines() if line.startswith("ignored")] == [
        "ignored as unknown in 'a racoon detective with a huge blue block': racoon detective with",
        "ignored as unknown in 'Racoon: a red circle, racoon': racoon racoon"]
    assert not [line for line in err.splitlines() if line.startswith("cut")]  # every caption fits


def test_the_client_prints_the_words_cut_by_the_length_limit(server, tmp_path, capsys):
    from mirrorgan_tf import client

    # 18 known words; the smoke config's data.words_num is 16
    args = ["--server", f"127.0.0.1:{server.grpc_port}", "--out", str(tmp_path), "--caption", LONG]
    assert client.main(args) == 0
    _, err = capsys.readouterr()
    assert [line for line in err.splitlines() if line.startswith(("cut", "ignored"))] == [
        f"cut by the length limit in {LONG!r}: red circle"]


def test_the_client_reads_answers_with_and_without_the_output():
    from mirrorgan_tf import client

    strings = np.array([b"racoon", b"", "caf\u00e9 x".encode()], dtype=object)
    assert client.ignored_words({"ignored_words": strings}, "s:1", 3) == [["racoon"], [], ["caf\u00e9", "x"]]
    assert client.ignored_words({"images": np.zeros((3, 2, 2, 3), np.uint8)}, "s:1", 3) is None  # an older export
    with pytest.raises(client.ClientError, match="the answer of s:1 has 'ignored_words' of object \\[3\\], not 2 strings"):
        client.ignored_words({"ignored_words": strings}, "s:1", 2)
