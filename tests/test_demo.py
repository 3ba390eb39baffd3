"""The demo's three sources on the smoke run, without a browser: they draw the same deterministic
pictures for a seed (run directory, its SavedModel export, our model server through the TF
Serving gRPC API), errors become messages, the examples hold the held-out pairs, bad flags stop
the command. The page itself is driven in a browser in test_demo_page.py."""

import json
import shutil
import socket

import numpy as np
import pytest

from mirrorgan_tf import demo

CAPTION = "a huge blue racoon block at the top"
NO_KNOWN_WORD = "racoon detective microscope"


@pytest.fixture(scope="module")
def export_path(trained_run):
    run_dir, _ = trained_run
    return json.loads((run_dir / "stages.json").read_text())["export"]["path"]


@pytest.fixture(scope="module")
def run_source(trained_run):
    return demo.RunSource(str(trained_run[0]))


@pytest.fixture(scope="module")
def saved_model_source(export_path):
    return demo.SavedModelSource(export_path)


@pytest.fixture(scope="module")
def model_server(export_path, tmp_path_factory):
    from mirrorgan_tf.serving.server import ModelServer, ServerConfig

    base = tmp_path_factory.mktemp("demo-serve") / "mirrorgan"
    shutil.copytree(export_path, base / "1")
    server = ModelServer(ServerConfig(str(base), port=0, rest_port=0, poll_seconds=30, workers=2))
    server.start()
    yield f"127.0.0.1:{server.grpc_port}"
    server.stop(grace=1)


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_three_sources_draw_the_same_deterministic_pictures(run_source, saved_model_source, model_server):
    from_run = run_source.generate(CAPTION, 3, 7, deterministic=True)
    from_export = saved_model_source.generate(CAPTION, 3, 7, deterministic=True)
    from_server = demo.ServerSource(model_server).generate(CAPTION, 3, 7, deterministic=True)
    assert from_run.images.shape == from_export.images.shape == from_server.images.shape == (3, 64, 64, 3)
    assert from_run.images.dtype == from_export.images.dtype == np.uint8
    # The export's graph and the run's eager generator round alike except in the last bit.
    assert np.abs(from_run.images.astype(int) - from_export.images.astype(int)).max() <= 1
    np.testing.assert_array_equal(from_export.images, from_server.images)
    assert from_server.notes == ["model version 1"]
    assert from_run.ignored == from_export.ignored == from_server.ignored == ["racoon"]  # the export reports them
    long = "a huge blue block at the top " * 3  # 21 known words, 16 read
    assert (run_source.generate(long, 1, 0, True).cut == saved_model_source.generate(long, 1, 0, True).cut
            == demo.ServerSource(model_server).generate(long, 1, 0, True).cut == ["blue", "block", "at", "the", "top"])
    # Different samples draw different noise; another seed, other pictures.
    assert not np.array_equal(from_export.images[0], from_export.images[1])
    other = saved_model_source.generate(CAPTION, 3, 8, deterministic=True)
    assert not np.array_equal(other.images, from_export.images)


def test_run_source_shows_every_stage_the_attention_and_the_words(run_source):
    result = run_source.generate(CAPTION, 2, 0, deterministic=False)
    assert result.stages.shape == (3 * 64, 2 * 64, 3)  # three stages 16/32/64, two samples
    np.testing.assert_array_equal(result.images[1], result.stages[128:, 64:])
    # sample's attention picture: per attended stage (two) a row of 64 px + a label strip, the
    # image then one tile per read word (7)
    assert result.attention.shape == (2 * (64 + 14), (1 + 7) * 64, 3)
    assert result.kept == ["a", "huge", "blue", "block", "at", "the", "top"]
    assert result.ignored == ["racoon"] and result.notes == []
    long = run_source.generate("a huge blue block at the top " * 3, 1, 0, deterministic=False)  # 21 known words
    assert long.notes == ["only the first 16 of its 21 known words are read"] and len(long.kept) == 16
    assert long.cut == ["blue", "block", "at", "the", "top"] and result.cut == []


def test_the_words_panel_lists_cut_words_only_when_there_are_some():
    image = np.zeros((1, 2, 2, 3), np.uint8)
    fits = demo.Result(image, kept=["a", "red", "circle"], ignored=["racoon"], cut=[])
    assert demo.words_text(fits) == "**Words read:** a red circle  \n**Ignored as unknown:** racoon"
    long = demo.Result(image, ignored=[], cut=["the", "bottom"])
    assert demo.words_text(long) == "**Ignored as unknown:** none  \n**Cut by the length limit:** the bottom"


def test_without_deterministic_a_savedmodel_draws_fresh_noise(saved_model_source):
    a = saved_model_source.generate(CAPTION, 2, 0, deterministic=False).images
    b = saved_model_source.generate(CAPTION, 2, 0, deterministic=False).images
    assert a.shape == (2, 64, 64, 3) and not np.array_equal(a, b)


def test_a_caption_with_no_known_word_is_a_message_from_every_source(run_source, saved_model_source, model_server):
    for source in (run_source, saved_model_source, demo.ServerSource(model_server)):
        result, message = demo.run_request(source, NO_KNOWN_WORD, 2, 0, False)
        assert result is None
        assert message.startswith("**Error:**") and NO_KNOWN_WORD in message
        assert "Traceback" not in message and "node" not in message
    _, message = demo.run_request(run_source, NO_KNOWN_WORD, 2, 0, False)
    assert message == (f"**Error:** no word of {NO_KNOWN_WORD!r} is in the model's vocabulary, so there is "
                       "nothing to draw (ignored as unknown: racoon detective microscope)")


def test_an_unreachable_server_is_a_message():
    address = f"127.0.0.1:{unused_port()}"
    result, message = demo.run_request(demo.ServerSource(address, timeout=10), CAPTION, 1, 0, True)
    assert result is None
    assert message.startswith(f"**Error:** cannot reach the model server at {address}")


@pytest.mark.parametrize("caption, num, seed, expected", [
    ("   ", 3, 0, "type a caption first"),
    (CAPTION, 0, 0, "the number of samples must be between 1 and 16, got 0"),
    (CAPTION, 17, 0, "the number of samples must be between 1 and 16, got 17"),
    (CAPTION, 2, -1, "the seed must be between 0 and 2147483647, got -1"),
    (CAPTION, None, 0, "the number of samples and the seed must be whole numbers, got None and 0"),
    ("x" * 501, 2, 0, "the caption has 501 characters; at most 500 are taken"),
])
def test_bad_requests_are_messages_before_the_model_runs(caption, num, seed, expected):
    class Untouchable:
        def generate(self, *args):
            raise AssertionError("the model must not run")

    assert demo.run_request(Untouchable(), caption, num, seed, False) == (None, f"**Error:** {expected}")


def test_an_unexpected_failure_is_a_message_not_a_traceback(caplog):
    class Broken:
        def generate(self, *args):
            raise RuntimeError("out of memory\nat line 3")

    result, message = demo.run_request(Broken(), CAPTION, 1, 0, False)
    assert result is None
    assert message == ("**Error:** the model failed on this request (RuntimeError: out of memory); "
                       "details are in the demo's console")
    assert "Traceback" in caplog.text  # the console keeps the details


def test_examples_are_test_captions_with_one_for_each_held_out_pair(run_source):
    from mirrorgan_tf.data import attribute_names, load_manifest
    from mirrorgan_tf.evaluation.pairs import load_pairs

    pairs = load_pairs(run_source.cfg, "test")
    manifest = load_manifest(run_source.cfg.data.dir)
    names = attribute_names(manifest)
    colour, shape = names.index("colour"), names.index("shape")
    row = {str(t): k for k, t in reversed(list(enumerate(pairs.text)))}  # a caption's first row
    examples = run_source.examples()
    assert len(examples) == len(set(examples)) == demo.NUM_EXAMPLES
    assert set(examples) <= set(pairs.text)
    drawn = [(manifest["attributes"]["colour"][pairs.attributes[row[e]][colour]],
              manifest["attributes"]["shape"][pairs.attributes[row[e]][shape]]) for e in examples]
    # The smoke test split holds both held-out pairs: one caption each, last; the others are seen pairs.
    assert sorted(drawn[-2:]) == [("orange", "circle"), ("purple", "triangle")]
    assert not {("orange", "circle"), ("purple", "triangle")} & set(drawn[:-2])


@pytest.mark.parametrize("args, message", [
    (["--server", "nowhere"], "error: --server must be HOST:PORT, got 'nowhere'"),
    (["--model-base-path", "/nonexistent/models"], "error: --model-base-path /nonexistent/models: no such folder"),
    (["--run-dir", "/nonexistent/run"], "error: /nonexistent/run/config.yaml: not a run directory (no config.yaml)"),
])
def test_bad_flags_stop_the_command_with_one_line(args, message, capsys):
    assert demo.main(args) == 2
    assert capsys.readouterr().err.strip() == message


def test_an_empty_export_folder_is_named(tmp_path, capsys):
    assert demo.main(["--model-base-path", str(tmp_path)]) == 2
    assert f"--model-base-path {tmp_path}: no saved_model.pb in it" in capsys.readouterr().err


def test_examples_file(tmp_path):
    path = tmp_path / "captions.txt"
    path.write_text("a red circle\n\n  a blue block on the left  \n", encoding="utf-8")
    assert demo.read_examples(str(path)) == ["a red circle", "a blue block on the left"]
    path.write_text("\n \n", encoding="utf-8")
    with pytest.raises(demo.DemoError, match=f"--examples {path}: no captions in it"):
        demo.read_examples(str(path))
    path.write_bytes(b"a red \xff circle\n")
    with pytest.raises(demo.DemoError, match=f"--examples {path}: not UTF-8 text"):
        demo.read_examples(str(path))
    with pytest.raises(FileNotFoundError, match=f"--examples {tmp_path}/none.txt: no such file"):
        demo.read_examples(str(tmp_path / "none.txt"))
