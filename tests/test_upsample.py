"""Windowed upsampling of low-resolution logits against SAM's own ``postprocess_masks``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_cellsparse.core.masks import PromptMask
from napari_cellsparse.sam.upsample import upsample_logits

LOW = 256


def blob(cy: float, cx: float, sigma: float, grid: np.ndarray) -> np.ndarray:
    yy, xx = grid
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))


def logit_maps() -> dict[str, np.ndarray]:
    """Synthetic 256 x 256 logit maps, positive where an "object" is."""
    grid = np.mgrid[0:LOW, 0:LOW].astype(np.float64)
    rng = np.random.default_rng(5)
    smooth = rng.normal(size=(LOW // 8, LOW // 8))
    noise = np.kron(smooth, np.ones((8, 8)))  # blocky noise, then softened below
    noise = np.real(np.fft.ifft2(np.fft.fft2(noise) * np.exp(-0.002 * (grid[0] ** 2))))
    maps = {
        "small-blob": 12 * blob(60.3, 80.7, 6.0, grid) - 4,
        "two-blobs": 10 * (blob(40, 40, 7, grid) + blob(150, 170, 10, grid)) - 3,
        "all-negative": -2 - blob(100, 100, 30, grid),
        "mostly-positive": 5 - 10 * blob(120, 90, 20, grid),
        "corner-blob": 10 * blob(0, 0, 5, grid) - 2,  # touches the first row and column
        "edge-blob": 10 * blob(255, 128, 6, grid) - 2,  # on the last row (often padding)
        "noise": noise - 0.3 * noise.std(),
    }
    return {name: m.astype(np.float32) for name, m in maps.items()}


MAPS = logit_maps()
SIZES = [
    ((1024, 1024), (1024, 1024)),
    ((765, 1024), (520, 696)),
    ((1024, 1024), (2048, 2048)),
    ((1024, 640), (512, 320)),
    ((683, 1024), (200, 300)),
]


def reference(model, low: np.ndarray, input_size, original_size, threshold=0.0) -> np.ndarray:
    with torch.inference_mode():
        up = model.postprocess_masks(torch.from_numpy(low)[None, None], input_size, original_size)
    return (up[0, 0] > threshold).numpy()


@pytest.mark.parametrize(("input_size", "original_size"), SIZES)
@pytest.mark.parametrize("name", list(MAPS))
def test_matches_postprocess_masks(vit_t_model, name: str, input_size, original_size) -> None:
    low = MAPS[name]
    ref = reference(vit_t_model, low, input_size, original_size)
    window, y0, x0 = upsample_logits(torch.from_numpy(low), input_size, original_size)
    assert window.dtype == bool
    h, w = window.shape
    assert y0 >= 0 and y0 + h <= original_size[0]
    assert x0 >= 0 and x0 + w <= original_size[1]
    full = np.zeros(original_size, dtype=bool)
    full[y0 : y0 + h, x0 : x0 + w] = window
    assert np.mean(full == ref) >= 0.9999
    assert abs(int(full.sum()) - int(ref.sum())) <= 1e-4 * ref.sum()
    outside = np.ones(original_size, dtype=bool)
    outside[y0 : y0 + h, x0 : x0 + w] = False
    assert not ref[outside].any()  # nothing is lost outside the window
    if name == "all-negative":
        assert window.size == 0 and not ref.any()
    if name in ("small-blob", "corner-blob"):
        assert ref.any()
        assert window.size < 0.25 * ref.size  # the window is small for a small object


@pytest.mark.parametrize("threshold", [-1.0, 0.5, 2.0])
def test_threshold(vit_t_model, threshold: float) -> None:
    low = MAPS["two-blobs"]
    size = ((765, 1024), (520, 696))
    ref = reference(vit_t_model, low, *size, threshold=threshold)
    window, y0, x0 = upsample_logits(torch.from_numpy(low), *size, threshold=threshold)
    full = np.zeros(size[1], dtype=bool)
    full[y0 : y0 + window.shape[0], x0 : x0 + window.shape[1]] = window
    assert np.mean(full == ref) >= 0.9999
    assert ref.any()


def test_object_only_in_the_padding_is_empty(vit_t_model) -> None:
    """A positive blob below the image (in SAM's padding) gives no mask at all."""
    grid = np.mgrid[0:LOW, 0:LOW].astype(np.float64)
    low = (10 * blob(240, 128, 5, grid) - 2).astype(np.float32)
    size = ((512, 1024), (300, 600))  # rows 128..255 of the logits are padding
    ref = reference(vit_t_model, low, *size)
    window, _, _ = upsample_logits(torch.from_numpy(low), *size)
    assert not ref.any()
    assert not window.any()


def test_accepts_other_dtypes_and_devices_of_logits(vit_t_model) -> None:
    low = MAPS["small-blob"]
    size = ((1024, 1024), (400, 400))
    expected = upsample_logits(torch.from_numpy(low), *size)
    for tensor in (torch.from_numpy(low).double(), torch.from_numpy(low).requires_grad_()):
        window, y0, x0 = upsample_logits(tensor, *size)
        assert (y0, x0) == expected[1:]
        assert np.array_equal(window, expected[0])


def test_prompt_mask() -> None:
    window = np.zeros((4, 5), dtype=bool)
    window[1:3, 2:4] = True
    mask = PromptMask(window, 10, 20, 0.75, (30, 40))
    assert mask.area == 4
    assert mask.slices == (slice(10, 14), slice(20, 25))
    full = mask.full()
    assert full.shape == (30, 40)
    assert full.sum() == 4
    assert full[11:13, 22:24].all()
    assert mask.bbox() == (11, 22, 13, 24)
    empty = PromptMask(np.zeros((0, 0), dtype=bool), 0, 0, 0.1, (30, 40))
    assert empty.area == 0
    assert empty.bbox() is None
    assert not empty.full().any()
