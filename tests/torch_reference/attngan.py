"""AttnGAN's DAMSM networks in PyTorch, for tests only: written here with the key names and layer
shapes of the released `text_encoder*.pth` / `image_encoder*.pth`, so a state dict saved from
them has the released layout. Weights are random; nothing is downloaded."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class TextEncoder(nn.Module):
    """RNN_ENCODER's layout: `encoder` (Embedding), `drop`, `rnn` (one bidirectional LSTM layer,
    batch first). forward(ids [B, T] int64, lengths [B]) -> words [B, D, max(lengths)] (zero at
    padding), sentence [B, D] = [forward final h, backward final h]."""

    def __init__(self, vocab_size: int, word_dim: int = 300, feature_dim: int = 256, dropout: float = 0.5):
        super().__init__()
        self.encoder = nn.Embedding(vocab_size, word_dim)
        self.drop = nn.Dropout(dropout)
        self.rnn = nn.LSTM(word_dim, feature_dim // 2, 1, batch_first=True, bidirectional=True)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        # Default LSTM init is U(-1/sqrt(u), 1/sqrt(u)); widen the biases so that the summed
        # b_ih + b_hh matters in the comparison.
        with torch.no_grad():
            for name, p in self.rnn.named_parameters():
                if "bias" in name:
                    p.uniform_(-0.5, 0.5)

    def forward(self, ids, lengths):
        x = self.drop(self.encoder(ids))
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, _) = self.rnn(packed)
        words = pad_packed_sequence(out, batch_first=True)[0].transpose(1, 2)
        sentence = h.transpose(0, 1).reshape(ids.shape[0], -1)
        return words, sentence


class ImageEncoder(nn.Module):
    """CNN_ENCODER's layout: the Inception-v3 trunk's modules at the top level under torchvision's
    names (Conv2d_1a_3x3 ... Mixed_7c; no AuxLogits, no fc), `emb_features` (1x1 conv 768 -> D, no
    bias) and `emb_cnn_code` (Linear 2048 -> D). forward(images [B, 3, s, s] in [-1, 1]) ->
    regions [B, D, 17, 17], code [B, D], resizing to 299 with corners aligned as PyTorch 0.3's
    nn.Upsample(mode='bilinear') did."""

    TRUNK = ("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "Mixed_5b",
             "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a",
             "Mixed_7b", "Mixed_7c")

    def __init__(self, inception, feature_dim: int = 256):
        super().__init__()
        self._inception = [inception]  # a list: not a submodule, so its own keys stay out of ours
        for name in self.TRUNK:
            setattr(self, name, getattr(inception, name))
        self.emb_features = nn.Conv2d(768, feature_dim, 1, bias=False)
        self.emb_cnn_code = nn.Linear(2048, feature_dim)
        nn.init.uniform_(self.emb_features.weight, -0.1, 0.1)
        nn.init.uniform_(self.emb_cnn_code.weight, -0.1, 0.1)

    def forward(self, images):
        x = torch.nn.functional.interpolate(images, size=(299, 299), mode="bilinear", align_corners=True)
        regions, code = type(self._inception[0]).regions_and_code(self, x)
        return self.emb_features(regions), self.emb_cnn_code(code)
