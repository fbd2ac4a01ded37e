"""Cellpose 3's network (``CPnet``) in a file that imports only torch.

The Cellpose backend trains ``cellpose.resnet_torch.CPnet``; a bioimage.io package cannot
ask its consumers to install cellpose, so it carries this file instead. The module and
parameter names follow CPnet's, so its state dict loads here unchanged, and the operations
run in the same order, so the output is the same numbers: the flows (dy, dx, times 5) and the
cell-probability logit, (N, 3, Y, X) for an input (N, C, Y, X) with Y and X multiples of 8.
CPnet's other outputs (the style vector, the down-sampled features) are left out.
"""

from typing import Optional

import torch
from torch import nn
from torch.nn import functional

BN_EPS, BN_MOMENTUM = 1e-5, 0.05


def _norm_act_conv(cin: int, cout: int, size: int) -> nn.Sequential:
    """BatchNorm, ReLU, convolution (the ReLU sits at index 1, so the conv is ``2``)."""
    return nn.Sequential(
        nn.BatchNorm2d(cin, eps=BN_EPS, momentum=BN_MOMENTUM),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, size, padding=size // 2),
    )


def _norm_conv(cin: int, cout: int, size: int) -> nn.Sequential:
    """BatchNorm then convolution: the residual projections."""
    return nn.Sequential(
        nn.BatchNorm2d(cin, eps=BN_EPS, momentum=BN_MOMENTUM),
        nn.Conv2d(cin, cout, size, padding=size // 2),
    )


class _DownBlock(nn.Module):
    """Four convolutions in two residual pairs; the first pair's shortcut is projected."""

    def __init__(self, cin: int, cout: int, size: int) -> None:
        super().__init__()
        self.proj = _norm_conv(cin, cout, 1)
        self.conv = nn.Sequential()
        for t in range(4):
            self.conv.add_module(f"conv_{t}", _norm_act_conv(cin if t == 0 else cout, cout, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        x = self.proj(x) + conv.conv_1(conv.conv_0(x))
        return x + conv.conv_3(conv.conv_2(x))


class _StyledConv(nn.Module):
    """A convolution whose input is shifted per channel by a linear map of the style vector."""

    def __init__(self, cin: int, cout: int, style_channels: int, size: int) -> None:
        super().__init__()
        self.conv = _norm_act_conv(cin, cout, size)
        self.full = nn.Linear(style_channels, cout)

    def forward(
        self,
        style: torch.Tensor,
        x: torch.Tensor,
        skip: Optional[torch.Tensor] = None,  # noqa: UP045 (consumers on Python 3.9)
    ) -> torch.Tensor:
        if skip is not None:
            x = x + skip
        shift = self.full(style)[:, :, None, None]
        return self.conv(x + shift)


class _Convs(nn.Module):
    """Named convolutions (``conv_0`` ...), called one by one: the up blocks mix plain and
    styled ones, which ``nn.Sequential`` cannot chain."""

    def __init__(self, first: nn.Module, styled: list[nn.Module]) -> None:
        super().__init__()
        self.conv_0 = first
        self.conv_1, self.conv_2, self.conv_3 = styled


class _UpBlock(nn.Module):
    """One plain and three styled convolutions; the skip connection is added, not stacked."""

    def __init__(self, cin: int, cout: int, style_channels: int, size: int) -> None:
        super().__init__()
        styled = [_StyledConv(cout, cout, style_channels, size) for _ in range(3)]
        self.conv = _Convs(_norm_act_conv(cin, cout, size), styled)
        self.proj = _norm_conv(cin, cout, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        conv = self.conv
        x = self.proj(x) + conv.conv_1(style, conv.conv_0(x), skip)
        return x + conv.conv_3(style, conv.conv_2(style, x))


class _Encoder(nn.Module):
    def __init__(self, nbase: list[int], size: int) -> None:
        super().__init__()
        self.down = nn.Sequential()
        for n in range(len(nbase) - 1):
            self.down.add_module(f"res_down_{n}", _DownBlock(nbase[n], nbase[n + 1], size))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        features: list[torch.Tensor] = []
        for n, block in enumerate(self.down):
            features.append(block(x if n == 0 else functional.max_pool2d(features[-1], 2, 2)))
        return features


class _Decoder(nn.Module):
    def __init__(self, nbase: list[int], size: int) -> None:
        super().__init__()
        # Deepest first, the order they run in; the names are CPnet's.
        self.up = nn.ModuleDict(
            {
                f"res_up_{n - 1}": _UpBlock(nbase[n], nbase[n - 1], nbase[-1], size)
                for n in reversed(range(1, len(nbase)))
            }
        )

    def forward(self, style: torch.Tensor, features: list[torch.Tensor]) -> torch.Tensor:
        x = features[-1]
        deepest = len(features) - 1
        for k, block in enumerate(self.up.values()):
            level = deepest - k
            if k > 0:
                x = functional.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(x, features[level], style)
        return x


class CellposeNet(nn.Module):
    """CPnet's 2D residual U-Net with the style vector; ``nbase[0]`` is the input channels."""

    def __init__(self, nbase: list[int], nout: int = 3, size: int = 3, diam_mean: float = 30.0):
        super().__init__()
        nbase = [int(c) for c in nbase]
        self.downsample = _Encoder(nbase, size)
        up_widths = [*nbase[1:], nbase[-1]]
        self.upsample = _Decoder(up_widths, size)
        self.output = _norm_act_conv(up_widths[0], nout, 1)
        self.diam_mean = nn.Parameter(torch.ones(1) * diam_mean, requires_grad=False)
        self.diam_labels = nn.Parameter(torch.ones(1) * diam_mean, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.downsample(x)
        deepest = features[-1]
        style = functional.avg_pool2d(deepest, kernel_size=[deepest.shape[-2], deepest.shape[-1]])
        style = torch.flatten(style, 1)
        style = style / torch.sum(style**2, dim=1, keepdim=True) ** 0.5
        return self.output(self.upsample(style, features))
