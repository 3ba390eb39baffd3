"""`python -m mirrorgan_tf.import_weights`: legacy-saved PyTorch files -> a run directory whose
stages are finished, loaded back through the run's own config and checkpoints and compared with
the PyTorch networks; bad input fails before any work, leaving nothing behind."""

import json
import os
import shutil

import numpy as np
import pytest

import torch  # the `torch` extra, which the README's test command installs

from mirrorgan_tf import import_weights  # noqa: E402
from mirrorgan_tf.config import load_config  # noqa: E402
from mirrorgan_tf import runs  # noqa: E402
from mirrorgan_tf.models import networks  # noqa: E402
from tests.conftest import CONFIGS  # noqa: E402
from tests.torch_reference import inputs  # noqa: E402
from tests.torch_reference.attngan import TextEncoder  # noqa: E402
from tests.torch_reference.mirrorgan import Discriminator as TorchD  # noqa: E402
from tests.torch_reference.mirrorgan import Generator  # noqa: E402

CUB = str(CONFIGS / "cub.yaml")


@pytest.fixture(scope="module")
def damsm_files(cub_sample, tmp_path_factory):
    """A legacy-saved text encoder and its Python 2 captions.pickle, as AttnGAN releases them."""
    root = tmp_path_factory.mktemp("released")
    _, tokens, vocab = inputs.cub_captions(cub_sample, 4)
    torch.manual_seed(0)
    ref = TextEncoder(len(vocab)).eval()
    text_encoder = inputs.save_legacy(ref, root / "text_encoder200.pth")
    ixtoword = {0: b"<end>", **{i: w for i, w in enumerate(vocab) if i}}
    wordtoix = {b"<end>": 0, **{w: i for i, w in enumerate(vocab) if i}}
    pickle_path = root / "captions.pickle"
    pickle_path.write_bytes(inputs.py2_pickle([[[1, 2]], [[3]], ixtoword, wordtoix]))
    return ref, text_encoder, str(pickle_path), tokens, vocab


@pytest.fixture(scope="module")
def damsm_run(damsm_files, tmp_path_factory):
    _, text_encoder, pickle_path, _, _ = damsm_files
    out = str(tmp_path_factory.mktemp("runs") / "attngan_damsm")
    assert import_weights.main(["attngan-damsm", "--text-encoder", text_encoder, "--captions-pickle", pickle_path,
                                "--config", CUB, "--out", out]) == 0
    return out


def test_attngan_damsm_run_loads_back(damsm_files, damsm_run):
    ref, _, _, tokens, vocab = damsm_files
    assert json.load(open(os.path.join(damsm_run, "stages.json")))["damsm"]["done"]
    assert open(os.path.join(damsm_run, "vocab.txt")).read().split("\n")[:-1] == vocab
    cfg = load_config(os.path.join(damsm_run, "config.yaml"))
    assert cfg.data.vocab_size == len(vocab)
    stem = networks.build_stem(cfg, cfg.data.vocab_size)
    ids, lengths = inputs.caption_ids(tokens, vocab, cfg.data.words_num)
    stem(ids, lengths)
    runs.restore_weights(damsm_run, "damsm", stem=stem)
    _, sentence, _ = stem(ids, lengths, training=False)
    with torch.no_grad():
        _, expected = ref(torch.from_numpy(ids).long(), torch.from_numpy(lengths).long())
    assert inputs.max_rel_diff(sentence, expected.numpy()) < 1e-4


def test_mirrorgan_gan_run_loads_back(cub_sample, damsm_files, damsm_run, tmp_path, capsys):
    ref_text, _, _, tokens, vocab = damsm_files
    torch.manual_seed(5)
    # Smaller than published (the published sizes are compared in test_import_mirrorgan.py).
    ref_g = Generator(stages=2, gf=16).eval()
    inputs.randomize_batch_norm(ref_g, 1)
    ref_ds = [TorchD(i, ndf=16).eval() for i in range(2)]
    for i, d in enumerate(ref_ds):
        inputs.randomize_batch_norm(d, 10 + i)
    g_path = inputs.save_legacy(ref_g, tmp_path / "netG_epoch_600.pth")
    d_paths = [inputs.save_legacy(d, tmp_path / f"netD{i}.pth") for i, d in enumerate(ref_ds)]
    out = str(tmp_path / "mirrorgan")
    args = ["mirrorgan-gan", "--generator", g_path, "--discriminators", *d_paths, "--damsm-run", damsm_run,
            "--config", CUB, "--out", out]
    # The config's three stages do not fit a two-stage generator: refused, nothing written.
    args += ["--set", "model.gf_dim=16", "--set", "model.df_dim=16"]
    assert import_weights.main(args) == 2
    assert "model.stages=2" in capsys.readouterr().err
    assert not os.path.exists(out) and not any(p.name.startswith("mirrorgan.tmp") for p in tmp_path.iterdir())
    assert import_weights.main(args + ["--set", "model.stages=2"]) == 0
    printed = capsys.readouterr().out
    assert "model.global_attention_softmax=channels" in printed

    cfg = load_config(os.path.join(out, "config.yaml"))
    assert (cfg.model.global_attention_softmax, cfg.model.text_norm) == ("channels", "none")
    assert {s for s, v in json.load(open(os.path.join(out, "stages.json"))).items() if v["done"]} == {"damsm", "gan"}
    stem = networks.build_stem(cfg, cfg.data.vocab_size)
    ids, lengths = inputs.caption_ids(tokens, vocab, cfg.data.words_num)
    other = int(np.flatnonzero(lengths != lengths[0])[0])  # two lengths: the masking matters
    ids, lengths = ids[[0, other]], lengths[[0, other]]
    words, sentence, mask = stem(ids, lengths)
    glam = networks.build_glam(cfg)
    z = np.random.default_rng(0).standard_normal((2, cfg.model.z_dim)).astype("float32")
    glam(z, sentence, words, mask)
    discriminators = networks.build_discriminators(cfg)
    images = [inputs.cub_images(cub_sample, s, 2) for s in cfg.image_sizes]
    for d, x in zip(discriminators, images):
        d(x, sentence)
    runs.restore_weights(out, "damsm", stem=stem)
    runs.restore_weights(out, "gan", glam_ema=glam, d0=discriminators[0], d1=discriminators[1])
    words, sentence, mask = stem(ids, lengths, training=False)
    eps = np.zeros((2, cfg.model.condition_dim), "float32")
    ours = glam(z, sentence, words, mask, eps=eps, training=False)["images"]
    with torch.no_grad():
        w, s = ref_text(torch.from_numpy(ids).long(), torch.from_numpy(lengths).long())
        w = torch.nn.functional.pad(w, (0, cfg.data.words_num - w.shape[2]))
        expected = ref_g(torch.from_numpy(z), s, w, torch.from_numpy(~np.asarray(mask)), torch.from_numpy(eps))
        expected_d = [d(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), s) for d, x in zip(ref_ds, images)]
    for a, b in zip(ours, expected):
        assert np.max(np.abs(np.asarray(a) - b.numpy().transpose(0, 2, 3, 1))) < 1e-3
    for d, x, (uncond, cond) in zip(discriminators, images, expected_d):
        got = d(x, sentence, training=False)
        assert inputs.max_rel_diff(got[0], uncond.numpy()) < 1e-4
        assert inputs.max_rel_diff(got[1], cond.numpy()) < 1e-4


def test_bad_arguments_fail_first(damsm_files, damsm_run, tmp_path, capsys):
    _, text_encoder, pickle_path, _, _ = damsm_files
    out = str(tmp_path / "run")
    cases = [
        (["attngan-damsm", "--text-encoder", str(tmp_path / "nope.pth"), "--captions-pickle", pickle_path],
         "--text-encoder"),
        (["attngan-damsm", "--text-encoder", text_encoder, "--captions-pickle", text_encoder],
         "expected [train_captions, test_captions, ixtoword, wordtoix]"),
        (["mirrorgan-gan", "--generator", text_encoder, "--damsm-run", str(tmp_path)], "not a run directory"),
        (["attngan-damsm", "--text-encoder", pickle_path, "--captions-pickle", pickle_path], "text encoder|PyTorch"),
    ]
    for args, message in cases:
        assert import_weights.main(args + ["--config", CUB, "--out", out]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and any(m in err for m in message.split("|")), err
        assert not os.path.exists(out)
    assert import_weights.main(["attngan-damsm", "--text-encoder", text_encoder, "--captions-pickle", pickle_path,
                                "--config", CUB, "--out", damsm_run]) == 2
    assert "already exists" in capsys.readouterr().err


def test_stream_run_loads_back(cub_sample, damsm_run, damsm_files, tmp_path, capsys):
    from tests.torch_reference.stream import Decoder, random_encoder

    _, _, _, tokens, vocab = damsm_files
    images = inputs.cub_images(cub_sample, 256, 2)
    ref_enc, x = random_encoder(images, seed=8)
    ref_dec = Decoder(len(vocab), 256, 512).eval()
    enc_path = inputs.save_legacy(ref_enc, tmp_path / "encoder-5-3000.ckpt")
    dec_path = inputs.save_legacy(ref_dec, tmp_path / "decoder-5-3000.ckpt")
    out = str(tmp_path / "stream_run")
    assert import_weights.main(["stream", "--encoder", enc_path, "--decoder", dec_path, "--damsm-run", damsm_run,
                                "--config", CUB, "--out", out]) == 0
    assert "stream.imagenet_normalize=False" in capsys.readouterr().out
    cfg = load_config(os.path.join(out, "config.yaml"))
    # The config names the encoder file as the weights' origin; the run holds no copy: its checkpoint
    # holds every weight, so the run works moved and without the file.
    assert cfg.stream.backbone_weights == os.path.abspath(enc_path) and not cfg.stream.imagenet_normalize
    assert not os.path.exists(os.path.join(out, "stream", "encoder-5-3000.ckpt"))
    moved = str(tmp_path / "moved" / "stream_run")
    shutil.move(out, moved)
    os.remove(enc_path)
    # Built from the run's config alone, restored from its checkpoint: the PyTorch captioner's logits.
    encoder, decoder = networks.build_stream(runs.for_restore(cfg), cfg.data.vocab_size)
    ids, _ = inputs.caption_ids(tokens[:2], vocab, cfg.data.words_num)
    runs.restore_weights(moved, "stream", encoder=encoder, decoder=decoder)
    logits = decoder(encoder(images, training=False), ids, training=False)
    with torch.no_grad():
        expected = ref_dec(ref_enc(x), torch.from_numpy(ids).long()).numpy()
    err = inputs.max_rel_diff(logits, expected)
    print(f"STREAM logits through the imported run: {err:.1e} of the largest magnitude")
    assert err < 1e-4


def test_attngan_damsm_with_image_encoder_loads_back(cub_sample, damsm_files, tmp_path, capsys):
    from tests.torch_reference import inception, init
    from tests.torch_reference.attngan import ImageEncoder

    _, text_encoder, pickle_path, tokens, vocab = damsm_files
    images = inputs.cub_images(cub_sample, 256, 2)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    calibration = torch.nn.functional.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True)
    torch.manual_seed(9)
    ref = ImageEncoder(init.randomize(inception.Inception3(), calibration, seed=9)).eval()
    image_encoder = inputs.save_legacy(ref, tmp_path / "image_encoder200.pth")
    out = str(tmp_path / "damsm_full")
    assert import_weights.main(["attngan-damsm", "--text-encoder", text_encoder, "--image-encoder", image_encoder,
                                "--captions-pickle", pickle_path, "--config", CUB, "--out", out]) == 0
    assert "damsm.resize_align_corners=True" in capsys.readouterr().out
    cfg = load_config(os.path.join(out, "config.yaml"))
    assert cfg.damsm.backbone_weights == os.path.abspath(image_encoder)
    assert not os.path.exists(os.path.join(out, "damsm", "image_encoder200.pth"))  # the checkpoint has it all
    moved = str(tmp_path / "moved" / "damsm_full")
    shutil.move(out, moved)
    os.remove(image_encoder)
    # What every later command does with a run's DAMSM (load_run, then restore it), moved and
    # without the encoder file: built untrained in torchvision's layout, restored.
    _, encoder = runs.load_run(moved).damsm()
    regions, code = encoder(images, training=False)
    with torch.no_grad():
        ref_regions, ref_code = ref(x)
    assert inputs.max_rel_diff(regions, ref_regions.numpy().transpose(0, 2, 3, 1)) < 1e-4
    assert inputs.max_rel_diff(code, ref_code.numpy()) < 1e-4
