"""What a bioimage.io package says about each backend's network, and its test tensors.

A package carries the raw network and the tensors it maps: for U-Net and Cellpose, an
architecture file (torch only), its state dict and a TorchScript copy (raw image in, class
logits or Cellpose flows out, channel first); for StarDist, the Keras network (raw image in,
object probability and ray distances out, channel last, as published StarDist packages).
The instance post-processing stays ours; its settings travel in the package's config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import BadInputError
from ...core.images import normalize, normalize_percentile
from ...models.scale import rescale_image
from ..config import CellposeConfig, StarDistConfig, UNetConfig
from ..inputs import prediction_slices
from ..model import TrainedModel

__all__ = [
    "PackagedNetwork",
    "measured_halo",
    "packaged_network",
    "raw_output",
    "test_image",
    "torch_forward",
]

TEST_SIZE = 256  # the test input's largest side, in pixels at the training scale
HALO_PROBE = 384  # side of the image a halo is measured on
HALO_SHARE = 0.01  # a pixel's reach ends where its effect falls under this share of its peak
EXPORTABLE = ("unet", "cellpose", "stardist")


@dataclass(frozen=True)
class PackagedNetwork:
    """The network of one model as a bioimage.io package describes it."""

    step: int  # input height and width must be multiples of this
    output_channels: tuple[str, ...]
    output_description: str  # at most 128 characters (the spec's limit)
    framework: str = "pytorch"  # "pytorch" (channel first) or "keras" (channel last)
    architecture: Path | None = None  # pytorch: a source file that imports only torch
    callable: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def channel_last(self) -> bool:
        """Whether the tensors' channel axis comes last (Keras) rather than after the batch."""
        return self.framework == "keras"

    def module(self, state: dict[str, Any]) -> Any:
        """A fresh module of this (PyTorch) architecture holding ``state`` (CPU, eval mode)."""
        import importlib.util

        assert self.architecture is not None, "only PyTorch networks have an architecture file"

        spec = importlib.util.spec_from_file_location("_cellsparse_arch", self.architecture)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        net = getattr(module, self.callable)(**self.kwargs)
        net.load_state_dict(state)
        return net.eval()


def packaged_network(model: TrainedModel) -> PackagedNetwork:
    """The package's view of ``model``'s network; BadInputError for a backend not exported."""
    config = model.config
    if isinstance(config, UNetConfig):
        from .. import unet_architecture

        grid, depth = config.grid, config.depth
        return PackagedNetwork(
            architecture=Path(unet_architecture.__file__),
            callable="UNet",
            kwargs={
                "n_channels": model.n_channels,
                "base_filters": config.base_filters,
                "depth": depth,
                "grid": grid,
            },
            step=grid * 2**depth,
            output_channels=("background", "border", "centre"),
            output_description=(
                "Class logits: background, cell border, cell centre (a softmax over the "
                "channel axis gives probabilities)."
            ),
        )
    if isinstance(config, CellposeConfig):
        from .. import cellpose_architecture

        return PackagedNetwork(
            architecture=Path(cellpose_architecture.__file__),
            callable="CellposeNet",
            kwargs={
                "nbase": [model.n_channels, *config.nbase],
                "nout": 3,
                "size": 3,
                "diam_mean": config.target_diameter,
            },
            step=16,
            output_channels=("flow_y", "flow_x", "cell_probability"),
            output_description=(
                "Cellpose flows dy, dx (times 5) and cell-probability logit; "
                "cellpose.dynamics.compute_masks makes instances."
            ),
        )
    if isinstance(config, StarDistConfig):
        return PackagedNetwork(
            step=max(config.grid) * 2**config.unet_n_depth,
            output_channels=(
                "probability",
                *(f"distance{r}" for r in range(config.n_rays)),
            ),
            output_description=(
                "StarDist object probability, then the ray distances (grid upsampled as in "
                "export_TF); stardist NMS makes instances."
            ),
            framework="keras",
        )
    raise BadInputError(
        f"Models of the {model.backend!r} backend cannot be exported to bioimage.io yet; "
        f"exportable backends: {', '.join(EXPORTABLE)}."
    )


def test_image(
    model: TrainedModel, step: int, image: np.ndarray | None = None, diameter: float | None = None
) -> np.ndarray:
    """A raw test input (1, C, Y, X) float32 at the model's training scale.

    From ``image`` (its first 2D slice, rescaled so its cells, ``diameter`` pixels wide or
    estimated, get the training diameter; centre crop), or synthetic nuclei of that size.
    """
    target = model.config.target_diameter
    if image is None:
        from ...samples.generated import make_nuclei

        radius = target / 2.0
        yx, _ = make_nuclei((TEST_SIZE, TEST_SIZE), 20, (0.85 * radius, 1.1 * radius), seed=0)
        if model.scale.polarity < 0:
            yx = yx.max() - yx
        raw = np.repeat(yx[..., None], model.n_channels, axis=-1).astype(np.float32)
    else:
        raw = prediction_slices(image, model.n_channels)[0][0].astype(np.float32)
        if diameter is None:
            diameter = model.estimate_diameter(normalize(raw))
        if not (np.isfinite(diameter) and diameter > 0):
            raise BadInputError(f"The diameter must be a positive number, got {diameter!r}.")
        raw = rescale_image(raw, target / float(diameter))
    h, w = (min(s, TEST_SIZE) // step * step for s in raw.shape[:2])
    if h == 0 or w == 0:
        raise BadInputError(
            f"The test image is too small: at the training scale it is {raw.shape[:2]} pixels, "
            f"and the network needs at least {step} x {step}."
        )
    top, left = (raw.shape[0] - h) // 2, (raw.shape[1] - w) // 2
    crop = raw[top : top + h, left : left + w]
    return np.ascontiguousarray(np.moveaxis(crop, -1, 0)[None], dtype=np.float32)


def measured_halo(forward: Callable[[np.ndarray], np.ndarray], raw: np.ndarray, step: int) -> int:
    """How far one input pixel reaches in the output, rounded up to a multiple of ``step``:
    the halo a consumer crops from each tile's border (bioimage.io's output ``halo``).

    ``forward`` maps a normalised (1, C, Y, X) input to the raw (1, K, Y, X) output. Measured on
    ``raw`` (the test input, normalised and mirrored out to ``HALO_PROBE`` pixels) by raising its
    centre pixel: the reach ends where the output changes by less than ``HALO_SHARE`` of the
    largest change. Group normalisation and Cellpose's style vector make every output depend a
    little on the whole input, so the reach of a real image is the one worth declaring.
    """
    base = normalize_percentile(raw, axis=(2, 3)).astype(np.float32)
    pad = [
        (max(0, (HALO_PROBE - s) // 2), max(0, HALO_PROBE - s - (HALO_PROBE - s) // 2))
        for s in base.shape[2:]
    ]
    base = np.pad(base, [(0, 0), (0, 0), *pad], mode="symmetric")
    bumped = base.copy()
    cy, cx = (s // 2 for s in base.shape[2:])
    bumped[:, :, cy, cx] += 1.0
    change = np.abs(forward(bumped) - forward(base))[0].max(axis=0)
    if not change.max() > 0:  # a network blind to its input reaches nowhere
        return step
    yy, xx = np.nonzero(change >= HALO_SHARE * change.max())
    reach = int(max(np.abs(yy - cy).max(), np.abs(xx - cx).max()))
    return max(step, -(-reach // step) * step)


def torch_forward(net: Any) -> Callable[[np.ndarray], np.ndarray]:
    """``net`` (a PyTorch package network) as a function of a normalised (1, C, Y, X) array:
    its raw output, the first of a tuple (Cellpose also gives its style)."""
    from ...core.lazy import import_torch

    torch = import_torch()

    def forward(normalized: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out = net(torch.from_numpy(np.ascontiguousarray(normalized)))
        out = out[0] if isinstance(out, tuple) else out
        return out.float().cpu().numpy()

    return forward


def raw_output(net: Any, raw: np.ndarray) -> np.ndarray:
    """The network's output for a raw (1, C, Y, X) input normalised as the package declares
    (per channel, percentiles 1 and 99.8 over Y and X: our one normalisation)."""
    return torch_forward(net)(normalize_percentile(raw, axis=(2, 3)))
