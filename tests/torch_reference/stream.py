"""STREAM's captioner of the authors' recipe in PyTorch, for tests only: written here with the key
names and layer shapes of the "show and tell" EncoderCNN / DecoderRNN state dicts. Random weights."""

from __future__ import annotations

import torch
from torch import nn


class Decoder(nn.Module):
    """DecoderRNN's layout: `embed`, `lstm` (one layer, batch first), `linear`.
    forward(features [B, E], ids [B, T]) -> logits [B, T + 1, V] (teacher forcing: the image
    feature is step 0, word t is step t + 1; every step is computed, no packing)."""

    def __init__(self, vocab_size: int, embedding_dim: int = 256, hidden_dim: int = 512):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embedding_dim)
        self.lstm = nn.LSTM(embedding_dim, hidden_dim, 1, batch_first=True)
        self.linear = nn.Linear(hidden_dim, vocab_size)
        with torch.no_grad():
            for name, p in self.lstm.named_parameters():
                if "bias" in name:
                    p.uniform_(-0.5, 0.5)

    def forward(self, features, ids):
        x = torch.cat([features.unsqueeze(1), self.embed(ids)], 1)
        hidden, _ = self.lstm(x)
        return self.linear(hidden)


class Encoder(nn.Module):
    """EncoderCNN's layout: `resnet` = nn.Sequential of ResNet-152's children but fc (keys
    resnet.0 conv1, resnet.1 bn1, resnet.4-7 layer1-4), `linear` (2048 -> E), `bn` (BatchNorm1d,
    momentum 0.01). forward(images [B, 3, s, s] in [-1, 1]) -> [B, E]: resized to 224 and given to
    the trunk as they are, as MirrorGAN's CAPTION_CNN does."""

    def __init__(self, resnet, embedding_dim: int = 256, align_corners: bool = False):
        super().__init__()
        self.resnet = nn.Sequential(*list(resnet.children())[:-1])
        self.linear = nn.Linear(resnet.fc.in_features, embedding_dim)
        self.bn = nn.BatchNorm1d(embedding_dim, momentum=0.01)
        self.align_corners = align_corners

    def forward(self, images):
        x = torch.nn.functional.interpolate(images, size=(224, 224), mode="bilinear",
                                            align_corners=self.align_corners)
        return self.bn(self.linear(self.resnet(x).flatten(1)))


def random_encoder(images, seed: int) -> tuple[Encoder, torch.Tensor]:
    """(an Encoder in eval mode over a random ResNet-152, the images as an NCHW tensor) for
    `images` [B, H, W, 3] in [-1, 1]: the trunk's weights are drawn and its BatchNorm statistics
    calibrated on these images at 224 px (init.randomize), the final BatchNorm1d's statistics and
    affine drawn too, so that no layer is the identity. Seeded by `seed`."""
    from tests.torch_reference import init, inputs, resnet

    x = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
    calibration = torch.nn.functional.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
    torch.manual_seed(seed)
    encoder = Encoder(init.randomize(resnet.resnet152(), calibration, seed=seed)).eval()
    inputs.randomize_batch_norm(encoder.bn, seed=seed)
    return encoder, x
