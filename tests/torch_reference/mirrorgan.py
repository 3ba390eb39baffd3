"""MirrorGAN's generator (G_NET with GLAM attention) and AttnGAN's discriminators (D_NET64/128/256)
in PyTorch, for tests only: written here with the key names and layer shapes of the released
`netG_epoch_N.pth` / `netD0..2.pth` (NCHW, conditioning augmentation, BatchNorm eps 1e-5).

Two choices of ours, stated because they are where a test could hide a difference:
- the conditioning augmentation takes its noise as an argument (zeros = its mean), so outputs are
  comparable;
- each pixel's word attention is masked with its own caption's padding. The released attention
  tiles the [B, T] mask with `repeat(queryL, 1)` against rows ordered batch-major, which for a
  batch of more than one caption masks pixels with other captions' padding; at batch 1 (how a
  trained generator is sampled one caption at a time) the two are the same function.
- the discriminator heads' sigmoid is kept (`outlogits` = conv, sigmoid as released); tests read
  the logits before it (`logits`)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class GLU(nn.Module):
    def forward(self, x):
        half = x.shape[1] // 2
        return x[:, :half] * torch.sigmoid(x[:, half:])


def conv3x3(cin, cout):
    return nn.Conv2d(cin, cout, 3, 1, 1, bias=False)


def up_block(cin, cout):
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv3x3(cin, cout * 2),
                         nn.BatchNorm2d(cout * 2), GLU())


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.block = nn.Sequential(conv3x3(channels, channels * 2), nn.BatchNorm2d(channels * 2), GLU(),
                                   conv3x3(channels, channels), nn.BatchNorm2d(channels))

    def forward(self, x):
        return x + self.block(x)


class ConditioningAugmentation(nn.Module):
    def __init__(self, text_dim, condition_dim):
        super().__init__()
        self.c_dim = condition_dim
        self.fc = nn.Linear(text_dim, condition_dim * 4)
        self.glu = GLU()

    def forward(self, sentence, eps):
        x = self.glu(self.fc(sentence))
        mu, logvar = x[:, : self.c_dim], x[:, self.c_dim:]
        return mu + eps * torch.exp(0.5 * logvar), mu, logvar


class InitStage(nn.Module):
    def __init__(self, channels, in_dim, ups=4):
        super().__init__()
        self.channels = channels
        self.fc = nn.Sequential(nn.Linear(in_dim, channels * 4 * 4 * 2, bias=False),
                                nn.BatchNorm1d(channels * 4 * 4 * 2), GLU())
        for i in range(ups):
            setattr(self, f"upsample{i + 1}", up_block(channels // 2**i, channels // 2 ** (i + 1)))
        self.ups = ups

    def forward(self, z, c):
        x = self.fc(torch.cat([c, z], 1)).view(-1, self.channels, 4, 4)
        for i in range(self.ups):
            x = getattr(self, f"upsample{i + 1}")(x)
        return x


class GlobalLocalAttention(nn.Module):
    """Word attention (1x1 conv projection of the words, softmax over words) and sentence attention
    (Linear from the condition, times h, 1x1 conv, softmax over channels as released)."""

    def __init__(self, channels, text_dim, condition_dim):
        super().__init__()
        self.conv_context = nn.Conv2d(text_dim, channels, 1, bias=False)
        self.conv_sentence_vis = nn.Conv2d(channels, channels, 1, bias=False)
        self.linear = nn.Linear(condition_dim, channels)

    def forward(self, h, c, words, pad_mask):
        b, ch, height, width = h.shape
        query = h.view(b, ch, height * width).transpose(1, 2)  # B, HW, C
        e = self.conv_context(words.unsqueeze(3)).squeeze(3)  # B, C, T
        logits = torch.bmm(query, e)  # B, HW, T
        logits = logits.masked_fill(pad_mask[:, None, :], -float("inf"))
        attn = F.softmax(logits, dim=2)
        word_context = torch.bmm(e, attn.transpose(1, 2)).view(b, ch, height, width)
        s = self.linear(c).view(b, ch, 1, 1).expand(b, ch, height, width)
        sent_attn = F.softmax(self.conv_sentence_vis(h * s), dim=1)
        return word_context, s * sent_attn


class NextStage(nn.Module):
    def __init__(self, gf, text_dim, condition_dim, r_num):
        super().__init__()
        self.att = GlobalLocalAttention(gf, text_dim, condition_dim)
        self.residual = nn.Sequential(*[ResidualBlock(gf * 2) for _ in range(r_num)])
        self.upsample = up_block(gf * 2, gf)
        self.conv = nn.Conv2d(gf * 3, gf * 2, 1, bias=False)

    def forward(self, h, c, words, pad_mask):
        word_context, sentence_context = self.att(h, c, words, pad_mask)
        x = self.conv(torch.cat([h, word_context, sentence_context], 1))
        return self.upsample(self.residual(x))


class ImageHead(nn.Module):
    def __init__(self, gf):
        super().__init__()
        self.img = nn.Sequential(conv3x3(gf, 3), nn.Tanh())

    def forward(self, h):
        return self.img(h)


class Generator(nn.Module):
    """G_NET's layout. forward(z [B, z_dim], sentence [B, D], words [B, D, T], pad_mask bool [B, T]
    (True at padding), eps [B, c_dim]) -> list of images [B, 3, s, s], smallest first."""

    def __init__(self, stages=3, gf=32, z_dim=100, text_dim=256, condition_dim=100, r_num=2):
        super().__init__()
        self.stages = stages
        self.ca_net = ConditioningAugmentation(text_dim, condition_dim)
        self.h_net1 = InitStage(gf * 16, z_dim + condition_dim)
        self.img_net1 = ImageHead(gf)
        for i in range(2, stages + 1):
            setattr(self, f"h_net{i}", NextStage(gf, text_dim, condition_dim, r_num))
            setattr(self, f"img_net{i}", ImageHead(gf))

    def forward(self, z, sentence, words, pad_mask, eps):
        c, _, _ = self.ca_net(sentence, eps)
        h = self.h_net1(z, c)
        images = [self.img_net1(h)]
        for i in range(2, self.stages + 1):
            h = getattr(self, f"h_net{i}")(h, c, words, pad_mask)
            images.append(getattr(self, f"img_net{i}")(h))
        return images


def leaky_block(cin, cout):
    return nn.Sequential(conv3x3(cin, cout), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


def down_block(cin, cout):
    return nn.Sequential(nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2))


def encode_x16(ndf):
    return nn.Sequential(
        nn.Conv2d(3, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 2, ndf * 4, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 4), nn.LeakyReLU(0.2),
        nn.Conv2d(ndf * 4, ndf * 8, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 8), nn.LeakyReLU(0.2))


class LogitsHead(nn.Module):
    def __init__(self, ndf, text_dim, conditional):
        super().__init__()
        self.conditional = conditional
        if conditional:
            self.jointConv = leaky_block(ndf * 8 + text_dim, ndf * 8)
        self.outlogits = nn.Sequential(nn.Conv2d(ndf * 8, 1, kernel_size=4, stride=4), nn.Sigmoid())

    def logits(self, h, sentence=None):
        if self.conditional:
            s = sentence[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])
            h = self.jointConv(torch.cat([h, s], 1))
        return self.outlogits[0](h).view(-1)


class Discriminator(nn.Module):
    """D_NET64 (stage 0), D_NET128 (stage 1), D_NET256 (stage 2) layouts.
    forward(images [B, 3, s, s], sentence [B, D]) -> (uncond logits [B], cond logits [B])."""

    def __init__(self, stage, ndf=64, text_dim=256):
        super().__init__()
        self.stage = stage
        self.img_code_s16 = encode_x16(ndf)
        if stage == 1:
            self.img_code_s32 = down_block(ndf * 8, ndf * 16)
            self.img_code_s32_1 = leaky_block(ndf * 16, ndf * 8)
        elif stage == 2:
            self.img_code_s32 = down_block(ndf * 8, ndf * 16)
            self.img_code_s64 = down_block(ndf * 16, ndf * 32)
            self.img_code_s64_1 = leaky_block(ndf * 32, ndf * 16)
            self.img_code_s64_2 = leaky_block(ndf * 16, ndf * 8)
        self.UNCOND_DNET = LogitsHead(ndf, text_dim, False)
        self.COND_DNET = LogitsHead(ndf, text_dim, True)

    def encode(self, x):
        names = {0: [], 1: ["img_code_s32", "img_code_s32_1"],
                 2: ["img_code_s32", "img_code_s64", "img_code_s64_1", "img_code_s64_2"]}[self.stage]
        x = self.img_code_s16(x)
        for name in names:
            x = getattr(self, name)(x)
        return x

    def forward(self, images, sentence):
        h = self.encode(images)
        return self.UNCOND_DNET.logits(h), self.COND_DNET.logits(h, sentence)
