"""A generator and discriminators trained with the original MirrorGAN code -> GLAM and our
discriminators.

Generator (`netG_epoch_N.pth`, G_NET), keys:
    ca_net.fc                      Linear D -> 4 c_dim (conditioning augmentation)
    h_net1.fc.0 / fc.1             Linear (no bias) z_dim + c_dim -> 16 gf x 4 x 4 x 2, BatchNorm1d
    h_net1.upsample{k}.1 / .2      conv3x3 / BatchNorm of each upsampling block
    h_net{i}.att.conv_context      1x1 conv D -> gf (word projection, no bias)
    h_net{i}.att.linear            Linear c_dim -> gf (sentence projection)
    h_net{i}.att.conv_sentence_vis 1x1 conv gf -> gf (no bias)
    h_net{i}.conv                  1x1 conv 3 gf -> 2 gf (no bias)
    h_net{i}.residual.{j}.block.{0,1,3,4}   conv, BN, conv, BN of each residual block
    h_net{i}.upsample.1 / .2
    img_net{i}.img.0               conv3x3 gf -> 3 (then tanh)
The released attention attends with the conditioned sentence vector c and normalises the sentence
attention over channels (`nn.Softmax()` on a 4-D tensor); GLAM computes that function with
`model.global_attention_input: condition`, `model.global_attention_softmax: channels` and
`model.text_norm: none` (`generator_settings`).

Discriminators (`netD0.pth`, `netD1.pth`, `netD2.pth`: D_NET64 / 128 / 256), keys:
    img_code_s16.{0,2,3,5,6,8,9}   the x16 encoder (conv, conv+BN, conv+BN, conv+BN)
    img_code_s32(.0/.1), img_code_s64, img_code_s32_1, img_code_s64_1, img_code_s64_2
    UNCOND_DNET.outlogits.0        conv 4x4 / 4 (with bias) -> 1
    COND_DNET.jointConv.0 / .1     conv3x3 + BN over [h, tiled sentence]
    COND_DNET.outlogits.0
The original ends in a sigmoid; ours return the logits before it (same weights).
"""

from __future__ import annotations

import re

from mirrorgan_tf.weights import layout
from mirrorgan_tf.weights.layout import StateDict, WeightImportError

# What GLAM must be configured with to compute the released generator's function.
GENERATOR_SETTINGS = {
    "model.global_attention_softmax": "channels",
    "model.global_attention_input": "condition",
    "model.text_norm": "none",
}


def _sd(state, source):
    return state if isinstance(state, StateDict) else StateDict(state, source)


def generator_sizes(state, source: str = "generator") -> dict:
    """The configuration a G_NET state dict was trained with, read from its shapes:
    {stages, base_size, gf_dim, z_dim, condition_dim, embedding_dim, r_num}."""
    sd = _sd(state, source)
    fc = sd.get("ca_net.fc.weight")
    condition_dim, embedding_dim = fc.shape[0] // 4, fc.shape[1]
    gf_dim = sd.get("img_net1.img.0.weight").shape[1]
    z_dim = sd.get("h_net1.fc.0.weight").shape[1] - condition_dim
    ups = len({m.group(1) for k in sd.state if (m := re.match(r"h_net1\.upsample(\d+)\.", k))})
    stages = len({m.group(1) for k in sd.state if (m := re.match(r"img_net(\d+)\.", k))})
    r_num = len({m.group(1) for k in sd.state if (m := re.match(r"h_net2\.residual\.(\d+)\.", k))})
    return {"stages": stages, "base_size": 4 * 2**ups, "gf_dim": int(gf_dim), "z_dim": int(z_dim),
            "condition_dim": int(condition_dim), "embedding_dim": int(embedding_dim), "r_num": r_num}


def _up_block(block, sd, key):
    # UpBlock = [UpSampling2D, conv, BN, GLU] as the original's Sequential, same indices.
    layout.conv2d(block.layers[1], sd, key + ".1")
    layout.batch_norm(block.layers[2], sd, key + ".2")


def load_glam(glam, state, source: str = "generator") -> None:
    """Fill a built GLAM from a G_NET state dict ({key: numpy array}). GLAM must have the file's
    sizes (`generator_sizes`) and have been called once; every key of the file must be used.
    Raises WeightImportError naming the key otherwise."""
    sd = _sd(state, source)
    if glam.global_attention_input != "condition":
        raise WeightImportError(f"{sd.source}: the released generator attends with the condition; "
                                "set model.global_attention_input: condition")
    layout.dense(glam.ca.fc, sd, "ca_net.fc")
    init = glam.init_stage
    layout.dense(init.fc, sd, "h_net1.fc.0")
    layout.batch_norm(init.bn, sd, "h_net1.fc.1")
    for k, up in enumerate(init.ups):
        _up_block(up, sd, f"h_net1.upsample{k + 1}")
    for i, stage in enumerate(glam.next_stages):
        key = f"h_net{i + 2}"
        layout.dense(stage.word_attention.project, sd, key + ".att.conv_context", from_conv1x1=True)
        layout.dense(stage.sentence_attention.project, sd, key + ".att.linear")
        layout.conv2d(stage.sentence_attention.visual, sd, key + ".att.conv_sentence_vis")
        layout.conv2d(stage.joint, sd, key + ".conv")
        for j, block in enumerate(stage.residual):
            body = block.body.layers  # conv, BN, GLU, conv, BN: the original's indices
            for index in (0, 3):
                layout.conv2d(body[index], sd, f"{key}.residual.{j}.block.{index}")
            for index in (1, 4):
                layout.batch_norm(body[index], sd, f"{key}.residual.{j}.block.{index}")
        _up_block(stage.up, sd, key + ".upsample")
    for i, head in enumerate(glam.heads):
        layout.conv2d(head.conv, sd, f"img_net{i + 1}.img.0")
    sd.finish()


def discriminator_sizes(state, source: str = "discriminator") -> dict:
    """{stage, df_dim, embedding_dim} of a D_NET64/128/256 state dict, from its keys and shapes."""
    sd = _sd(state, source)
    df_dim = sd.get("img_code_s16.0.weight").shape[0]
    joint = sd.get("COND_DNET.jointConv.0.weight")
    stage = 2 if "img_code_s64.0.weight" in sd else 1 if "img_code_s32.0.weight" in sd else 0
    return {"stage": stage, "df_dim": int(df_dim), "embedding_dim": int(joint.shape[1] - 8 * df_dim)}


def _conv_bn(block, sd, key):
    # [conv, BN, LeakyReLU] blocks, same indices as the original's Sequential.
    layout.conv2d(block.layers[0], sd, key + ".0")
    layout.batch_norm(block.layers[1], sd, key + ".1")


def load_discriminator(disc, stage: int, state, source: str = "discriminator") -> None:
    """Fill a built Discriminator of `stage` (0: 64 px, 1: 128, 2: 256 at the published sizes) from
    a D_NET state dict. Raises WeightImportError naming the key on any mismatch; every key of the
    file must be used."""
    sd = _sd(state, source)
    found = discriminator_sizes(sd)["stage"]
    if found != stage:
        raise WeightImportError(f"{sd.source}: a discriminator for stage {found + 1} "
                                f"(D_NET{64 * 2**found}), expected stage {stage + 1}")
    blocks = disc.encoder.layers
    x16 = blocks[0].layers
    layout.conv2d(x16[0], sd, "img_code_s16.0")
    for conv_index in (2, 5, 8):
        layout.conv2d(x16[conv_index], sd, f"img_code_s16.{conv_index}")
        layout.batch_norm(x16[conv_index + 1], sd, f"img_code_s16.{conv_index + 1}")
    names = {0: [], 1: ["img_code_s32", "img_code_s32_1"],
             2: ["img_code_s32", "img_code_s64", "img_code_s64_1", "img_code_s64_2"]}[stage]
    if len(names) != len(blocks) - 1:
        raise WeightImportError(f"{sd.source}: the discriminator has {len(blocks) - 1} blocks after the x16 "
                                f"encoder, the file {len(names)}")
    for block, name in zip(blocks[1:], names):
        _conv_bn(block, sd, name)
    layout.conv2d(disc.uncond.out, sd, "UNCOND_DNET.outlogits.0")
    _conv_bn(disc.cond.joint, sd, "COND_DNET.jointConv")
    layout.conv2d(disc.cond.out, sd, "COND_DNET.outlogits.0")
    sd.finish()
