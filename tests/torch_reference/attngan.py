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
