"""Importing a generator and discriminators trained with the original MirrorGAN code, at the
published CUB sizes: PyTorch networks of the released layout, saved in the legacy format, against
the imported Keras networks on the same noise, real CUB captions and photos."""

import numpy as np
import pytest

import torch  # the `torch` extra, which the README's test command installs

from mirrorgan_tf.models.discriminators import Discriminator  # noqa: E402
from mirrorgan_tf.models.glam import GLAM  # noqa: E402
from mirrorgan_tf.weights import mirrorgan, read_state_dict  # noqa: E402
from mirrorgan_tf.weights.layout import WeightImportError  # noqa: E402
from tests.torch_reference import inputs  # noqa: E402
from tests.torch_reference.attngan import TextEncoder  # noqa: E402
from tests.torch_reference.mirrorgan import Discriminator as TorchD  # noqa: E402
from tests.torch_reference.mirrorgan import Generator  # noqa: E402

TOL = 1e-4  # of the outputs' largest magnitude, float32
IMAGE_TOL = 1e-3  # images in [-1, 1]


def _text(cub_sample, steps=18):
    _, tokens, vocab = inputs.cub_captions(cub_sample, 4)
    ids, lengths = inputs.caption_ids(tokens, vocab, steps)
    # Two captions of different lengths, so that padding and masking matter.
    other = int(np.flatnonzero(lengths != lengths[0])[0])
    ids, lengths = ids[[0, other]], lengths[[0, other]]
    torch.manual_seed(1)
    enc = TextEncoder(len(vocab)).eval()
    with torch.no_grad():
        words, sentence = enc(torch.from_numpy(ids).long(), torch.from_numpy(lengths).long())
    # words: [B, D, longest]; pad to `steps` as STEM does
    words = torch.nn.functional.pad(words, (0, steps - words.shape[2]))
    return words, sentence, lengths, steps


def test_glam_matches_g_net(cub_sample, tmp_path):
    words, sentence, lengths, steps = _text(cub_sample)
    assert lengths[0] != lengths[1]
    torch.manual_seed(2)
    ref = Generator().eval()
    inputs.randomize_batch_norm(ref, seed=3)
    path = inputs.save_legacy(ref, tmp_path / "netG_epoch_600.pth")
    state = read_state_dict(path)
    sizes = mirrorgan.generator_sizes(state)
    assert sizes == {"stages": 3, "base_size": 64, "gf_dim": 32, "z_dim": 100, "condition_dim": 100,
                     "embedding_dim": 256, "r_num": 2}
    glam = GLAM(sizes["stages"], sizes["base_size"], sizes["gf_dim"], sizes["z_dim"], sizes["condition_dim"],
                sizes["r_num"], global_attention_softmax="channels", global_attention_input="condition",
                text_norm="none")
    b = 2
    rng = np.random.default_rng(0)
    z = rng.standard_normal((b, 100)).astype("float32")
    mask = np.arange(steps)[None, :] < lengths[:, None]
    w = words.numpy().transpose(0, 2, 1)
    glam(z, sentence.numpy(), w, mask)
    mirrorgan.load_glam(glam, state, path)
    eps = np.zeros((b, 100), "float32")  # conditioning augmentation at its mean
    out = glam(z, sentence.numpy(), w, mask, eps=eps, training=False)
    with torch.no_grad():
        expected = ref(torch.from_numpy(z), sentence, words, torch.from_numpy(~mask), torch.from_numpy(eps))
    for ours, theirs, size in zip(out["images"], expected, (64, 128, 256)):
        theirs = theirs.numpy().transpose(0, 2, 3, 1)
        assert ours.shape == (b, size, size, 3)
        # Not saturated: the comparison sees the whole network, not tanh's flat ends.
        assert np.mean(np.abs(theirs) < 0.9) > 0.5
        diff = float(np.max(np.abs(np.asarray(ours) - theirs)))
        print(f"GLAM image {size} px: max abs difference {diff:.1e}")
        assert diff < IMAGE_TOL, (size, diff)


def test_glam_rejects_other_sizes(cub_sample, tmp_path):
    torch.manual_seed(2)
    state = read_state_dict(inputs.save_legacy(Generator(stages=2, gf=16), tmp_path / "g.pth"))
    glam = GLAM(3, 64, 32, 100, 100, 2, "channels", "condition", "none")
    w, s, lengths, steps = _text(cub_sample)
    glam(np.zeros((2, 100), "float32"), s.numpy(), w.numpy().transpose(0, 2, 1),
         np.arange(steps)[None, :] < lengths[:, None])
    with pytest.raises(WeightImportError, match=r"g.pth: 'h_net1.fc.0.weight' has shape \(8192, 200\)"):
        mirrorgan.load_glam(glam, state, "g.pth")


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_discriminators_match_d_nets(cub_sample, tmp_path, stage):
    size = 64 * 2**stage
    _, sentence, _, _ = _text(cub_sample)
    images = inputs.cub_images(cub_sample, size, 2)
    torch.manual_seed(10 + stage)
    ref = TorchD(stage).eval()
    inputs.randomize_batch_norm(ref, seed=stage)
    path = inputs.save_legacy(ref, tmp_path / f"netD{stage}.pth")
    state = read_state_dict(path)
    assert mirrorgan.discriminator_sizes(state) == {"stage": stage, "df_dim": 64, "embedding_dim": 256}
    disc = Discriminator(stage, 64, 64)
    disc(images, sentence.numpy())
    mirrorgan.load_discriminator(disc, stage, state, path)
    uncond, cond = disc(images, sentence.numpy(), training=False)
    with torch.no_grad():
        ref_uncond, ref_cond = ref(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), sentence)
    for what, ours, theirs in (("uncond", uncond, ref_uncond), ("cond", cond, ref_cond)):
        err = inputs.max_rel_diff(ours, theirs.numpy())
        print(f"D{size} {what} logits: {err:.1e} of the largest magnitude")
        assert err < TOL
    other = Discriminator((stage + 1) % 3, 64, 64)
    with pytest.raises(WeightImportError, match=f"netD{stage}.pth: a discriminator for stage {stage + 1}"):
        mirrorgan.load_discriminator(other, (stage + 1) % 3, state, path)
