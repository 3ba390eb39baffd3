"""Importing AttnGAN's released DAMSM: the PyTorch networks, saved in the legacy format, against
the imported Keras networks on real CUB captions and photos."""

import numpy as np
import pytest

import torch  # the `torch` extra, which the README's test command installs

from mirrorgan_tf.models.stem import STEM  # noqa: E402
from mirrorgan_tf.weights import attngan, read_state_dict  # noqa: E402
from mirrorgan_tf.weights.layout import WeightImportError  # noqa: E402
from tests.torch_reference import inputs  # noqa: E402
from tests.torch_reference.attngan import TextEncoder  # noqa: E402

TOL = 1e-4  # of the outputs' largest magnitude, float32


def _stem_pair(cub_sample, tmp_path, count=4, steps=18):
    captions, tokens, vocab = inputs.cub_captions(cub_sample, count)
    torch.manual_seed(0)
    ref = TextEncoder(len(vocab)).eval()
    path = inputs.save_legacy(ref, tmp_path / "text_encoder200.pth")
    state = read_state_dict(path)
    sizes = attngan.text_encoder_sizes(state)
    stem = STEM(sizes["vocab_size"], sizes["embedding_dim"], sizes["word_embedding_dim"])
    ids, lengths = inputs.caption_ids(tokens, vocab, steps)
    stem(ids, lengths)
    attngan.load_stem(stem, state, path)
    return ref, stem, ids, lengths


def test_stem_matches_rnn_encoder(cub_sample, tmp_path):
    ref, stem, ids, lengths = _stem_pair(cub_sample, tmp_path)
    assert len(set(lengths.tolist())) > 1, "captions of different lengths pin the masking"
    with torch.no_grad():
        ref_words, ref_sentence = ref(torch.from_numpy(ids).long(), torch.from_numpy(lengths).long())
    words, sentence, mask = stem(ids, lengths, training=False)
    words = np.asarray(words)
    longest = int(lengths.max())
    ref_words = ref_words.numpy().transpose(0, 2, 1)  # B, longest, D
    err_words = inputs.max_rel_diff(words[:, :longest], ref_words)
    err_sentence = inputs.max_rel_diff(sentence, ref_sentence.numpy())
    print(f"STEM: words {err_words:.1e}, sentence {err_sentence:.1e} of the largest magnitude")
    assert err_words < TOL and err_sentence < TOL
    assert np.all(words[:, longest:] == 0)
    # The layout trap: the sentence is [forward final state, backward final state], and the
    # backward half of word 0 equals the backward final state.
    np.testing.assert_allclose(words[:, 0, 128:], np.asarray(sentence)[:, 128:], atol=1e-6)


def test_stem_rejects_another_network(cub_sample, tmp_path):
    ref, stem, ids, lengths = _stem_pair(cub_sample, tmp_path)
    state = read_state_dict(inputs.save_legacy(ref, tmp_path / "t.pth"))
    state["decoder.weight"] = np.zeros((3, 3), "float32")
    with pytest.raises(WeightImportError, match="decoder.weight"):
        attngan.load_stem(stem, state, "t.pth")
    state.pop("decoder.weight")
    state["rnn.weight_hh_l0"] = state["rnn.weight_hh_l0"][:, :64]
    with pytest.raises(WeightImportError, match=r"rnn.weight_hh_l0.*\(512, 64\)"):
        attngan.load_stem(stem, state, "t.pth")


def test_captions_pickle_gives_the_weights_ids(cub_sample, tmp_path):
    _, tokens, vocab = inputs.cub_captions(cub_sample, 4)
    # As AttnGAN's build_dictionary leaves it: '<end>' a Python 2 byte string, words unicode.
    ixtoword = {0: b"<end>", **{i: w for i, w in enumerate(vocab) if i}}
    wordtoix = {b"<end>": 0, **{w: i for i, w in enumerate(vocab) if i}}
    train = [[wordtoix[t] for t in toks] for toks in tokens]
    path = tmp_path / "captions.pickle"
    path.write_bytes(inputs.py2_pickle([train, train[:1], ixtoword, wordtoix]))
    words = attngan.read_captions_pickle(str(path))
    assert words == vocab and words[0] == "<end>" and "<unk>" not in words
    out = tmp_path / "vocab.txt"
    attngan.write_vocabulary_file(words, str(out))
    assert out.read_text().split("\n")[:-1] == vocab

    wordtoix[vocab[3]] = 7  # no longer the inverse
    path.write_bytes(inputs.py2_pickle([train, train, ixtoword, wordtoix]))
    with pytest.raises(WeightImportError, match="captions.pickle: wordtoix is not the inverse"):
        attngan.read_captions_pickle(str(path))


def test_damsm_image_encoder_matches_cnn_encoder(cub_sample, tmp_path):
    from mirrorgan_tf.models.damsm import DamsmImageEncoder
    from tests.torch_reference import inception, init
    from tests.torch_reference.attngan import ImageEncoder

    images = inputs.cub_images(cub_sample, 256, 2)  # the generator's largest stage, as MirrorGAN feeds it
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    calibration = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True)
    torch.manual_seed(6)
    ref = ImageEncoder(init.randomize(inception.Inception3(), calibration, seed=6)).eval()
    path = inputs.save_legacy(ref, tmp_path / "image_encoder200.pth")
    state = read_state_dict(path)
    assert not any(k.startswith(("AuxLogits", "fc.")) for k in state)  # CNN_ENCODER's keys only
    encoder = DamsmImageEncoder(256, "inception_v3", path, 299, align_corners=True)
    encoder(images)
    attngan.load_damsm_image_encoder(encoder, state, path)
    regions, code = encoder(images, training=False)
    with torch.no_grad():
        ref_regions, ref_code = ref(x)
    err_regions = inputs.max_rel_diff(regions, ref_regions.numpy().transpose(0, 2, 3, 1))
    err_code = inputs.max_rel_diff(code, ref_code.numpy())
    print(f"DAMSM image encoder: regions {err_regions:.1e}, code {err_code:.1e} of the largest magnitude")
    assert err_regions < TOL and err_code < TOL
    # The resize convention is pinned: half-pixel centres give other features.
    encoder.align_corners = False
    assert inputs.max_rel_diff(encoder(images, training=False)[1], ref_code.numpy()) > 10 * TOL
