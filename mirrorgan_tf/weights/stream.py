"""A STREAM captioner of the authors' recipe ("show and tell", as the PyTorch image-captioning
tutorial MirrorGAN names) -> our StreamEncoder / StreamDecoder.

Encoder (EncoderCNN / CAPTION_CNN), keys:
    resnet.{0..7}.*     torchvision's ResNet-152 children without its fc (and the parameter-free
                        relu / maxpool / avgpool): 0 conv1, 1 bn1, 4..7 layer1..layer4
    linear              Linear 2048 -> E
    bn                  BatchNorm1d(E), momentum 0.01, eps 1e-5
Decoder (DecoderRNN / CAPTION_RNN), keys:
    embed               Embedding(V, E)
    lstm.*_l0           one LSTM layer E -> H (gates i, f, g, o; two bias vectors, summed here)
    linear              Linear H -> V
The decoder's word ids must be those of the STEM it was trained with (MirrorGAN feeds STREAM the
DAMSM's caption ids), so its vocabulary size must equal the DAMSM's.
"""

from __future__ import annotations

from mirrorgan_tf.weights import layout
from mirrorgan_tf.weights.layout import StateDict, WeightImportError

# The released code resizes generated images in [-1, 1] to 224 and hands them to the encoder as
# they are (no ImageNet normalisation).
ENCODER_SETTINGS = {"stream.imagenet_normalize": False}


def _sd(state, source):
    return state if isinstance(state, StateDict) else StateDict(state, source)


def decoder_sizes(state, source: str = "STREAM decoder") -> dict:
    """{vocab_size, embedding_dim, hidden_dim} of a DecoderRNN state dict, from its shapes."""
    sd = _sd(state, source)
    if "lstm.weight_ih_l1" in sd:
        raise WeightImportError(f"{sd.source}: a 2-layer LSTM decoder; StreamDecoder has one layer")
    emb = sd.get("embed.weight")
    w_hh = sd.get("lstm.weight_hh_l0")
    return {"vocab_size": int(emb.shape[0]), "embedding_dim": int(emb.shape[1]), "hidden_dim": int(w_hh.shape[1])}


def load_stream_decoder(decoder, state, source: str = "STREAM decoder") -> None:
    """Fill a built StreamDecoder from a DecoderRNN state dict; every key must be used. Raises
    WeightImportError naming the key on a missing key or a shape that does not fit."""
    sd = _sd(state, source)
    decoder_sizes(sd)
    layout.embedding(decoder.embed, sd, "embed")
    layout.lstm(decoder.lstm, sd, "lstm", "_l0")
    layout.dense(decoder.linear, sd, "linear")
    sd.finish()


_RESNET_SEQUENTIAL = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def load_stream_encoder(encoder, state, source: str = "STREAM encoder") -> None:
    """Fill a built StreamEncoder whose backbone has torchvision's ResNet-152 layout
    (`stream.backbone_weights` a `.pth` file) from an EncoderCNN state dict: `resnet.N.*` (the
    trunk as nn.Sequential numbers torchvision's children), `linear`, `bn`. Every key must be used.
    Raises WeightImportError naming the key."""
    sd = _sd(state, source)
    backbone = encoder.backbone
    if getattr(backbone, "layout", None) != "torchvision":
        raise WeightImportError(f"{sd.source}: the STREAM encoder's backbone must have torchvision's layout "
                                "(stream.backbone_weights a .pth file), not Keras' ResNet152")
    renamed = {}
    for key, value in sd.state.items():
        head, _, rest = key.partition(".")
        if head == "resnet":
            index, _, rest = rest.partition(".")
            names = {v: k for k, v in _RESNET_SEQUENTIAL.items()}
            if index not in names:
                raise WeightImportError(f"{sd.source}: '{key}' is no part of ResNet-152's trunk")
            key = f"{names[index]}.{rest}"
        renamed[key] = value
    sd = StateDict(renamed, sd.source)
    layout.torchvision_layout(backbone, sd)
    layout.dense(encoder.linear, sd, "linear")
    layout.batch_norm(encoder.bn, sd, "bn")
    sd.finish()


def encoder_embedding_dim(state, source: str = "STREAM encoder") -> int:
    return int(_sd(state, source).get("linear.weight").shape[0])
