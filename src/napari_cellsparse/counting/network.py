"""The counter's network and loss (PyTorch; imported only when a counter is trained or loaded).

The network is a small U-Net from ``segmentation_models_pytorch`` (a ResNet-18 encoder cut to
``encoder_depth`` stages, random initial weights: nothing is downloaded) with one output
channel: a heat map whose value is 1 at a cell centre, i.e. the density scaled by
``2 pi sigma^2``. The loss mixes binary cross-entropy (the peak's shape) with a squared error
(the amount under it), both averaged over trusted pixels only.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..core.lazy import import_segmentation_models, import_torch

__all__ = ["build_network", "counting_loss", "heatmap", "pad_multiple", "view_heatmaps"]


def build_network(config: dict[str, Any], n_channels: int) -> Any:
    """A fresh ``smp.Unet`` for ``n_channels`` inputs and one heat-map output (on the CPU)."""
    smp = import_segmentation_models()
    depth = int(config["encoder_depth"])
    width = int(config["decoder_width"])
    return smp.Unet(
        encoder_name=str(config["encoder"]),
        encoder_weights=None,
        encoder_depth=depth,
        decoder_channels=[width * 2 ** (depth - 1 - i) for i in range(depth)],
        in_channels=n_channels,
        classes=1,
    )


def pad_multiple(config: dict[str, Any]) -> int:
    """Image sides must be a multiple of this (the encoder halves them ``encoder_depth`` times)."""
    return 2 ** int(config["encoder_depth"])


def counting_loss(logits: Any, targets: Any, mask: Any, mse_weight: float = 1.0) -> Any:
    """Masked BCE + ``mse_weight`` x squared error between ``sigmoid(logits)`` and ``targets``.

    ``logits``, ``targets`` and ``mask`` are (N, 1, Y, X); ``mask`` is boolean or a per-pixel
    weight. Pixels where it is 0 contribute nothing to the loss or its gradient, whatever
    their target.
    """
    torch = import_torch()
    functional = torch.nn.functional
    weight = mask.float()
    trusted = weight > 0
    safe = torch.where(trusted, targets, torch.zeros_like(targets))
    bce = functional.binary_cross_entropy_with_logits(
        logits, safe.clamp(0.0, 1.0), reduction="none"
    )
    mse = (torch.sigmoid(logits) - safe) ** 2
    per_pixel = torch.where(trusted, (bce + mse_weight * mse) * weight, torch.zeros_like(bce))
    return per_pixel.sum() / weight.sum().clamp(min=1.0)


def heatmap(
    net: Any, image: np.ndarray, multiple: int, device: str, augment: bool = False
) -> np.ndarray:
    """The heat map (float32, Y x X) of a normalised YXC image, reflect-padded to ``multiple``.

    ``augment``: the mean of the heat maps of the image's 8 flips and quarter turns, each
    turned back (test-time augmentation: smoother peaks, centres less tied to the pixel grid;
    8 times the work).
    """
    if not augment:
        return _heatmap(net, image, multiple, device)
    total = np.zeros(image.shape[:2], np.float64)
    for heat in view_heatmaps(net, image, multiple, device):
        total += heat
    return (total / 8.0).astype(np.float32)


def view_heatmaps(net: Any, image: np.ndarray, multiple: int, device: str) -> Iterator[np.ndarray]:
    """The heat maps of the image's 8 flips and quarter turns, each turned back."""
    for turns in range(4):
        for flip in (False, True):
            view = np.rot90(image, turns)
            view = view[:, ::-1] if flip else view
            heat = _heatmap(net, np.ascontiguousarray(view), multiple, device)
            yield np.ascontiguousarray(np.rot90(heat[:, ::-1] if flip else heat, -turns))


def _heatmap(net: Any, image: np.ndarray, multiple: int, device: str) -> np.ndarray:
    torch = import_torch()
    h, w = image.shape[:2]
    ph, pw = (-h) % multiple, (-w) % multiple
    mode = "reflect" if min(h, w) > max(ph, pw) else "symmetric"
    padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode=mode)
    x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(padded, -1, 0))[None]).float()
    net.eval()
    with torch.inference_mode():
        out = torch.sigmoid(net(x.to(device)))[0, 0].cpu().numpy()
    return np.ascontiguousarray(out[:h, :w], dtype=np.float32)
