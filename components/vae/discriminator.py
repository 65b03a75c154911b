"""3D PatchGAN discriminator for VAE training (reference notes §1.9, `NLayerDiscriminator3D`).

With the v1.2 sizes (64 base channels, 3 layers) it has 4,665,729 parameters and maps a
(B, 3, 25, 256, 256) clip to (B, 1, 7, 32, 32) patch logits. Tiny presets shrink width and depth.
"""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator3D(nn.Module):
    def __init__(self, in_channels: int = 3, base_channels: int = 64, num_layers: int = 3):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"discriminator num_layers must be >= 1; got {num_layers}")
        layers: list[nn.Module] = [
            nn.Conv3d(in_channels, base_channels, kernel_size=3, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = base_channels
        # Downsampling layers: time is halved only by the first one, space by every one (§1.9).
        for index in range(1, num_layers):
            out_channels = base_channels * min(2**index, 8)
            stride = (2, 2, 2) if index == 1 else (1, 2, 2)
            layers += [nn.Conv3d(channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
                       nn.BatchNorm3d(out_channels), nn.LeakyReLU(0.2, inplace=True)]
            channels = out_channels
        out_channels = base_channels * min(2**num_layers, 8)
        layers += [nn.Conv3d(channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
                   nn.BatchNorm3d(out_channels), nn.LeakyReLU(0.2, inplace=True),
                   nn.Conv3d(out_channels, 1, kernel_size=3, stride=1, padding=1)]
        self.layers = nn.Sequential(*layers)
        self.apply(_init_weights)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.layers(video)  # (B, 3, T, H, W) -> (B, 1, t, h, w) patch logits


def _init_weights(module: nn.Module) -> None:
    """DCGAN initialisation, as the reference: conv N(0, 0.02); batch-norm weight N(1, 0.02), bias 0."""
    if isinstance(module, nn.Conv3d):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm3d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
