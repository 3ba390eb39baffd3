"""`python -m mirrorgan_tf.summary`: parameter counts at the published configuration."""

import json
import subprocess
import sys

from mirrorgan_tf.config import load_config
from mirrorgan_tf.summary import summarize
from tests.conftest import CONFIGS, REPO

# Trainable parameters of the original PyTorch networks (qiaott/MirrorGAN model.py on AttnGAN),
# CUB configuration, vocabulary 5450, derived layer by layer (k = kernel, no conv has a bias
# unless said):
#   stem: Embedding 5450 x 300 = 1,635,000; bi-LSTM(300 -> 128) per direction
#     4 x 128 x (300 + 128) + 4 x 128 (Keras, one bias) = 219,648; x 2 = 439,296.
#   damsm_image_encoder: conv1x1 768 -> 256 = 196,608; Linear 2048 -> 256 = 524,544.
#   glam: CA Linear 256 -> 400 = 102,800; stage 1 Linear 200 -> 16,384 (no bias) = 3,276,800,
#     BN1d 32,768, upBlocks conv3x3 512->512, 256->256, 128->128, 64->64 + BN = 2,360,320 +
#     590,336 + 147,712 + 36,992; next stages 2 x (attention 8,192 + 1,024 + 3,232; conv1x1
#     96 -> 64 = 6,144; 2 ResBlocks of 110,976; upBlock 36,992) = 2 x 277,536; heads 3 x 864.
#   d64: encoder 3,072 + 131,328 + 524,800 + 2,098,176; uncond conv4x4 512 -> 1 (+bias) 8,193;
#     cond Block3x3 768 -> 512 + BN 3,539,968 + 8,193.
#   d128: d64 + downBlock 512 -> 1024 (8,390,656) + Block3x3 1024 -> 512 (4,719,616).
#   d256: d64 + downBlocks 8,390,656 + 33,558,528 + Block3x3s 18,876,416 + 4,719,616.
#   stream_encoder: Linear 2048 -> 256 = 524,544 + BN1d 512.
#   stream_decoder: Embedding 5450 x 256 = 1,395,200; LSTM(256 -> 512) 4 x 512 x 768 + 4 x 512
#     = 1,574,912; Linear 512 -> 5450 = 2,795,850.
# Cross-checked by assembling the same layer shapes from torch.nn (2.13) and counting: every
# network equal, except the LSTMs, where PyTorch has exactly 4 x units more per direction
# (b_hh): stem 2,075,320 (+1,024), stream_decoder 5,768,010 (+2,048).
PUBLISHED_TRAINABLE = {
    "stem": 2_074_296,
    "damsm_image_encoder": 721_152,
    "glam": 7_105_392,
    "d64": 6_313_730,
    "d128": 19_424_002,
    "d256": 71_858_946,
    "stream_encoder": 525_056,
    "stream_decoder": 5_765_962,
}
# Counting parameters needs no ImageNet weights (and must download nothing).
RANDOM_BACKBONES = ["damsm.backbone_weights=random", "stream.backbone_weights=random"]
PYTORCH_LSTM_BIASES = {"stem": 2 * 4 * 128, "stream_decoder": 4 * 512}


def test_published_cub_networks_have_the_original_parameter_counts():
    counts = summarize(load_config(CONFIGS / "cub.yaml", ["data.vocab_size=5450", *RANDOM_BACKBONES]))
    assert {k: v["trainable"] for k, v in counts.items()} == PUBLISHED_TRAINABLE
    # Frozen backbones count as non-trainable: Inception-v3 up to Mixed_7c and ResNet-152.
    assert counts["damsm_image_encoder"]["non_trainable"] > 20_000_000
    assert counts["stream_encoder"]["non_trainable"] > 58_000_000
    assert counts["stem"]["non_trainable"] == counts["stream_decoder"]["non_trainable"] == 0
    assert PYTORCH_LSTM_BIASES == {"stem": 1024, "stream_decoder": 2048}


def test_coco_networks_are_the_wider_attngan_coco_ones():
    """COCO differs from CUB only in GLAM and the discriminators (ngf 48 with 3 residual blocks,
    ndf 96), so only those are built: the backbones are CUB's, counted above, and d256's 160 M
    orthogonally initialised weights alone cost a minute of QR on 2 cores. d64 has every
    discriminator's encoder and both logit heads, so it shows ndf as well as d256 would."""
    from mirrorgan_tf.models.layers import count_params
    from mirrorgan_tf.models.networks import build_discriminators, build_glam

    cfg = load_config(CONFIGS / "coco.yaml", ["data.vocab_size=27297", *RANDOM_BACKBONES])
    glam = build_glam(cfg)
    (d64,) = build_discriminators(load_config(CONFIGS / "coco.yaml", ["data.vocab_size=27297", "model.stages=1",
                                                                       *RANDOM_BACKBONES]))
    assert d64.name == "d64"
    assert count_params(glam.trainable_weights) > PUBLISHED_TRAINABLE["glam"]  # ngf 48, 3 residual blocks
    assert count_params(d64.trainable_weights) > PUBLISHED_TRAINABLE["d64"]  # ndf 96


def test_summary_cli_prints_json_and_a_table(prepared_shapes):
    base = [sys.executable, "-m", "mirrorgan_tf.summary", "--config", str(CONFIGS / "shapes.yaml"),
            "--set", f"data.dir={prepared_shapes}"]
    r = subprocess.run(base + ["--json"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    counts = json.loads(r.stdout)
    assert list(counts) == ["stem", "damsm_image_encoder", "glam", "d32", "d64", "stream_encoder", "stream_decoder"]
    manifest = json.loads((prepared_shapes / "manifest.json").read_text())
    assert counts["stem"]["trainable"] == manifest["vocab_size"] * 64 + 2 * (4 * 64 * (64 + 64) + 4 * 64)
    r = subprocess.run(base, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "glam" in r.stdout and "total" in r.stdout
    r = subprocess.run([sys.executable, "-m", "mirrorgan_tf.summary", "--config", str(CONFIGS / "cub.yaml"),
                        "--set", "data.dir=/nonexistent"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "no prepared dataset here" in r.stderr
