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
