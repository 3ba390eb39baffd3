"""Importing a STREAM captioner of the authors' recipe: PyTorch networks of the released layout,
saved in the legacy format, against the imported Keras networks on real CUB captions and photos."""

import numpy as np
import pytest

import torch  # the `torch` extra, which the README's test command installs

from mirrorgan_tf.models.stream import StreamDecoder  # noqa: E402
from mirrorgan_tf.weights import read_state_dict, stream  # noqa: E402
from mirrorgan_tf.weights.layout import WeightImportError  # noqa: E402
from tests.torch_reference import inputs  # noqa: E402
from tests.torch_reference.stream import Decoder  # noqa: E402

TOL = 1e-4  # of the outputs' largest magnitude, float32


def test_stream_decoder_matches_decoder_rnn(cub_sample, tmp_path):
    _, tokens, vocab = inputs.cub_captions(cub_sample, 4)
    ids, lengths = inputs.caption_ids(tokens, vocab, 18)
    torch.manual_seed(4)
    ref = Decoder(len(vocab), 256, 512).eval()
    path = inputs.save_legacy(ref, tmp_path / "decoder-5-3000.ckpt")
    state = read_state_dict(path)
    sizes = stream.decoder_sizes(state)
    assert sizes == {"vocab_size": len(vocab), "embedding_dim": 256, "hidden_dim": 512}
    decoder = StreamDecoder(sizes["vocab_size"], sizes["embedding_dim"], sizes["hidden_dim"])
    features = np.random.default_rng(0).standard_normal((len(ids), 256)).astype("float32")
    decoder(features, ids)
    stream.load_stream_decoder(decoder, state, path)
    logits = decoder(features, ids, training=False)
    with torch.no_grad():
        expected = ref(torch.from_numpy(features), torch.from_numpy(ids).long()).numpy()
    assert logits.shape == (len(ids), 19, len(vocab))
    err = inputs.max_rel_diff(logits, expected)
    print(f"STREAM decoder logits: {err:.1e} of the largest magnitude")
    assert err < TOL
    # Greedy decoding runs the same cell step by step: its first word is the argmax of step 0.
    np.testing.assert_array_equal(np.asarray(decoder.greedy(features, 3))[:, 0], expected[:, 0].argmax(-1))

    bigger = StreamDecoder(len(vocab) + 1, 256, 512)
    bigger(features, ids)
    with pytest.raises(WeightImportError, match=r"'embed.weight' has shape"):
        stream.load_stream_decoder(bigger, state, path)


def test_stream_encoder_matches_encoder_cnn(cub_sample, tmp_path):
    from mirrorgan_tf.models.stream import StreamEncoder
    from tests.torch_reference.stream import random_encoder

    images = inputs.cub_images(cub_sample, 256, 2)
    ref, x = random_encoder(images, seed=7)
    path = inputs.save_legacy(ref, tmp_path / "encoder-5-3000.ckpt")
    state = read_state_dict(path)
    assert "resnet.0.weight" in state and "resnet.7.2.bn3.running_var" in state and "bn.running_mean" in state
    encoder = StreamEncoder(256, "resnet152", path, 224, imagenet_normalize=False)
    encoder(images)
    stream.load_stream_encoder(encoder, state, path)
    ours = encoder(images, training=False)
    with torch.no_grad():
        expected = ref(x).numpy()
    err = inputs.max_rel_diff(ours, expected)
    print(f"STREAM encoder: {err:.1e} of the largest magnitude")
    assert err < TOL
    state["resnet.9.weight"] = state["linear.weight"]
    with pytest.raises(WeightImportError, match="resnet.9.weight"):
        stream.load_stream_encoder(encoder, state, path)
