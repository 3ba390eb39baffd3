"""The REST JSON codec on plain dicts and bytes: no socket, no model."""

import json

import grpc
import numpy as np
import pytest
import tensorflow as tf

from mirrorgan_tf.serving.errors import ServingError
from mirrorgan_tf.serving.registry import Signature
from mirrorgan_tf.serving.rest import (decode_body, json_array, json_array_bound, json_columns, json_outputs,
                                       json_response_bound)

CAPTIONS_ONLY = Signature("serving_default", None, {"captions": tf.TensorSpec([None], tf.string)},
                          {"images": tf.TensorSpec([None, 4, 4, 3], tf.uint8)})
WITH_NOISE = Signature("generate", None, {"captions": tf.TensorSpec([None], tf.string),
                                          "noise": tf.TensorSpec([None, 2], tf.float32)},
                       {"images": tf.TensorSpec([None, 4, 4, 3], tf.uint8)})


def refused(call, *fragments, status=400):
    with pytest.raises(ServingError) as error:
        call()
    assert error.value.http_status == status, error.value.message
    if status == 400:
        assert error.value.code == grpc.StatusCode.INVALID_ARGUMENT
    for fragment in fragments:
        assert fragment in error.value.message, error.value.message
    return error.value.message


def test_columns_from_row_and_columnar_bodies():
    assert json_columns({"instances": ["a", "b"]}, CAPTIONS_ONLY) == ({"captions": ["a", "b"]}, "row")
    assert json_columns({"inputs": ["a"]}, CAPTIONS_ONLY) == ({"captions": ["a"]}, "columnar")
    assert json_columns({"inputs": {"captions": ["a"]}}, CAPTIONS_ONLY) == ({"captions": ["a"]}, "columnar")
    body = {"instances": [{"captions": "a", "noise": [1, 2]}, {"captions": "b", "noise": [3, 4]}]}
    assert json_columns(body, WITH_NOISE) == ({"captions": ["a", "b"], "noise": [[1, 2], [3, 4]]}, "row")
    assert json_columns({"instances": [{"b64": "YQ=="}]}, CAPTIONS_ONLY) == ({"captions": [{"b64": "YQ=="}]}, "row")
    refused(lambda: json_columns({"instances": ["a"]}, WITH_NOISE), "naming the inputs", "captions, noise")
    refused(lambda: json_columns({"instances": [{"captions": "a"}, "b"]}, CAPTIONS_ONLY), "mixes")


def test_arrays_of_strings_numbers_and_b64():
    strings = json_array(["a red circle", {"b64": "YmzDpQ=="}, "caf\u00e9"], tf.string, "captions")
    assert strings.dtype == object and strings.tolist() == [b"a red circle", "bl\u00e5".encode(), b"caf\xc3\xa9"]
    noise = json_array([[0.5, -1], [2, 3.25]], tf.float32, "noise")
    assert noise.dtype == np.float32 and noise.tolist() == [[0.5, -1.0], [2.0, 3.25]]
    assert json_array([[]], tf.float32, "noise").shape == (1, 0)
    pair = json_array(decode_body(b'["\\ud83d\\ude00 smile"]'), tf.string, "captions")  # a JSON pair: one emoji
    assert pair.tolist() == ["\U0001F600 smile".encode()]


def test_a_lone_surrogate_is_refused_naming_input_and_element():
    body = decode_body(b'{"instances": ["a red circle", "a red \\ud83d circle"]}')
    columns, _ = json_columns(body, CAPTIONS_ONLY)
    message = refused(lambda: json_array(columns["captions"], tf.string, "captions"),
                      "input 'captions' element 1", "lone UTF-16 surrogate U+D83D at character 6")
    assert message.isascii() or "\ud83d" not in message  # the message itself must be encodable
    refused(lambda: json_array([["ok", "\udc00"]], tf.string, "captions"), "input 'captions' element [0, 1]",
            "U+DC00 at character 0")
    refused(lambda: json_array("\ud800", tf.string, "captions"), "input 'captions' (a scalar)")


def test_non_string_values_name_their_element():
    refused(lambda: json_array(["a", None], tf.string, "captions"), "DT_STRING", "found null", "element 1")
    refused(lambda: json_array(["a", ["b"]], tf.string, "captions"), "rectangular")
    refused(lambda: json_array([{"b64": "%%%"}], tf.string, "captions"), "element 0", "not valid base64")
    refused(lambda: json_array([[1, "x"]], tf.float32, "noise"), "'noise'", "numbers", "found a string")


def test_numbers_beyond_the_dtype_are_refused_not_crashed():
    big = 10 ** 400  # Python's JSON reader makes an int of it; float() of it raises OverflowError
    refused(lambda: json_array([[0.0, big]], tf.float32, "noise"), "'noise' element [0, 1]", "beyond the range",
            "(401 digits)")
    refused(lambda: json_array([[1e39, 0.0]], tf.float32, "noise"), "element [0, 0]", "1e+39", "DT_FLOAT")
    refused(lambda: json_array([big], tf.int32, "ids"), "integers in [-2147483648, 2147483647]", "element 0")
    refused(lambda: json_array([1.5], tf.int32, "ids"), "found 1.5")
    nan_inf = json_array([[float("nan"), float("inf")]], tf.float32, "noise")
    assert np.isnan(nan_inf[0, 0]) and np.isposinf(nan_inf[0, 1])
    assert json_array([[3.4e38, -3.4e38]], tf.float32, "noise").tolist() == [[np.float32(3.4e38), np.float32(-3.4e38)]]


def test_deep_lists_are_refused_before_they_are_walked():
    value = "a"
    for _ in range(900):
        value = [value]
    refused(lambda: json_array(value, tf.string, "captions"), "more than 32 deep")


def test_bodies_must_be_utf8_json():
    assert decode_body(b'{"instances": ["caf\xc3\xa9"]}') == {"instances": ["caf\u00e9"]}
    assert decode_body(b'\xef\xbb\xbf{"instances": []}') == {"instances": []}  # a UTF-8 BOM is skipped
    refused(lambda: decode_body('{"instances": ["caf\u00e9"]}'.encode("latin-1")), "not UTF-8",
            "byte 0xe9 at offset 19")
    refused(lambda: decode_body('{"instances": ["a"]}'.encode("utf-16")), "not UTF-8", "byte 0xff at offset 0")
    refused(lambda: decode_body(b"[" * 100_000 + b"]" * 100_000), "too deeply")
    refused(lambda: decode_body(b'{"inputs": [' + b"9" * 5000 + b"]}"), "not valid JSON", "4300 digits")
    refused(lambda: decode_body(b"{captions: red"), "not valid JSON")


def test_outputs_in_row_and_columnar_format():
    images = np.arange(2 * 1 * 1 * 3, dtype=np.uint8).reshape(2, 1, 1, 3)
    assert json_outputs({"images": images}, "row") == {"predictions": [[[[0, 1, 2]]], [[[3, 4, 5]]]]}
    assert json_outputs({"images": images}, "columnar") == {"outputs": [[[[0, 1, 2]]], [[[3, 4, 5]]]]}
    two = {"images": images, "scores": np.array([0.5, 1.0], np.float32)}
    assert json_outputs(two, "row") == {"predictions": [{"images": [[[0, 1, 2]]], "scores": 0.5},
                                                        {"images": [[[3, 4, 5]]], "scores": 1.0}]}
    assert json_outputs(two, "columnar") == {"outputs": {"images": images.tolist(), "scores": [0.5, 1.0]}}
    text = np.array([b"ok", b"\xff\x00"], dtype=object)
    assert json_outputs({"text": text}, "columnar") == {"outputs": ["ok", {"b64": "/wA="}]}


@pytest.mark.parametrize("shape", [[1, 64, 64, 3], [3, 4, 4, 3], [2, 5], [7], [2, 0, 3]])
def test_the_json_bound_is_the_size_of_an_all_255_array(shape):
    assert json_array_bound(shape, 3) == len(json.dumps(np.full(shape, 255, np.uint8).tolist()))


def test_the_response_bound_covers_every_format():
    assert json_array_bound([64, 64, 3], 3) == 69_760  # 5.68 bytes per raw byte of a 64 x 64 image
    images = np.full([5, 4, 4, 3], 255, np.uint8)
    bound = json_response_bound(WITH_NOISE, ["images"], 5)
    for fmt in ("row", "columnar"):
        size = len(json.dumps(json_outputs({"images": images}, fmt)))
        assert size <= bound < size + 5 * 20 + 32
    two = Signature("s", None, {}, {"images": tf.TensorSpec([None, 4, 4, 3], tf.uint8),
                                    "scores": tf.TensorSpec([None], tf.float32)})
    worst = {"images": images, "scores": np.full([5], -1.1754944e-38, np.float32)}
    bound = json_response_bound(two, ["images", "scores"], 5)
    for fmt in ("row", "columnar"):
        assert len(json.dumps(json_outputs(worst, fmt))) <= bound
    strings = Signature("s", None, {}, {"text": tf.TensorSpec([None], tf.string)})
    assert json_response_bound(strings, ["text"], 5) is None
    unknown = Signature("s", None, {}, {"images": tf.TensorSpec([None, None, 4, 3], tf.uint8)})
    assert json_response_bound(unknown, ["images"], 5) is None
