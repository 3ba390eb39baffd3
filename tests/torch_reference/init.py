"""Non-trivial random weights for the reference networks, so a comparison tests every parameter.

Convolutions get He-normal kernels; each BatchNorm's affine parameters are drawn away from (1, 0)
(gamma in 0.5 to 1.5, beta in -0.3 to 0.3). Then its running statistics are set to the statistics
its input really has on the calibration images (one forward pass in training mode with momentum 1,
after gamma and beta are drawn, so every layer is calibrated to what the layers before it really
give), and perturbed (mean shifted by up to 0.1 standard deviations, variance scaled by 0.7 to
1.4). A mistake in the eps, in which statistic goes where, or a dropped gamma or beta then changes
the outputs by percent, while the activations stay of order one through 150 layers instead of
exploding or vanishing. The last BatchNorm of each residual branch gets a small gamma (0.1 to
0.3), so 50 residual additions do not grow the signal 50-fold.
"""

from __future__ import annotations

import torch
from torch import nn


def randomize(net: nn.Module, calibration: torch.Tensor, seed: int = 0, residual_gamma=("bn3",)) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in net.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
            elif isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                low, high = (0.1, 0.3) if name.split(".")[-1] in residual_gamma else (0.5, 1.5)
                m.weight.copy_(low + (high - low) * torch.rand(n, generator=g))
                m.bias.copy_(0.3 * (2 * torch.rand(n, generator=g) - 1))
                m.momentum = 1.0
                m.reset_running_stats()
        net.train()
        net_forward(net, calibration)  # running stats := the batch statistics of each BN's input
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                std = m.running_var.sqrt()
                m.running_mean.add_(0.1 * std * (2 * torch.rand(n, generator=g) - 1))
                m.running_var.mul_(0.7 + 0.7 * torch.rand(n, generator=g))
                m.momentum = 0.1
    return net.eval()


def net_forward(net, x):
    if hasattr(net, "regions_and_code"):
        return net.regions_and_code(x)
    return net.features(x)
