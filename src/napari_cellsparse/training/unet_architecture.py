"""The 3-class U-Net's architecture, in a file that imports only torch.

The U-Net backend builds its network from here, and a bioimage.io package carries this very
file as the architecture of its PyTorch state dict: consumers (bioimage.io's tools, deepImageJ,
ilastik) rebuild the network from it without installing this plugin. Keep it free of imports
other than torch, and keep the module and parameter names: saved weights depend on them.
"""

import torch
from torch import nn
from torch.nn import functional


def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 convolutions, each followed by GroupNorm and ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, cout // 4), cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.GroupNorm(min(8, cout // 4), cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A small 2D U-Net giving 3 class logits (background, cell border, cell centre).

    Input (N, n_channels, Y, X) with Y and X multiples of ``grid * 2**depth``. With
    ``grid=2`` one full-resolution convolution feeds a U-Net at half resolution and the
    logits are upsampled back (about 4x less work than ``grid=1``).
    """

    def __init__(self, n_channels: int, base_filters: int, depth: int, grid: int = 1) -> None:
        super().__init__()
        widths = [base_filters * 2**i for i in range(depth + 1)]
        self.grid = grid
        self.stem = (
            nn.Sequential(nn.Conv2d(n_channels, widths[0], 3, padding=1), nn.ReLU(inplace=True))
            if grid > 1
            else nn.Identity()
        )
        self.down = nn.ModuleList(
            [_block(widths[0] if grid > 1 else n_channels, widths[0])]
            + [_block(widths[i], widths[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList(
            [_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth))]
        )
        self.head = nn.Conv2d(widths[0], 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = [int(x.shape[-2]), int(x.shape[-1])]
        if self.grid > 1:
            x = functional.avg_pool2d(self.stem(x), self.grid)
        skips: list[torch.Tensor] = []
        for i, layer in enumerate(self.down):
            x = layer(x if i == 0 else functional.max_pool2d(x, 2))
            skips.append(x)
        skips.pop()
        for layer in self.up:
            skip = skips.pop()
            x = functional.interpolate(
                x,
                size=[int(skip.shape[-2]), int(skip.shape[-1])],
                mode="bilinear",
                align_corners=False,
            )
            x = layer(torch.cat([x, skip], dim=1))
        logits = self.head(x)
        if self.grid > 1:
            logits = functional.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits
