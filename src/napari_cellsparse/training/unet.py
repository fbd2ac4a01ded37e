"""The 3-class U-Net backend (ELEPHANT-style, PyTorch): background / cell border / cell centre.

Targets come from the annotated cells: a cell's pixels within 2 px of its edge are *border*,
the rest *centre*; painted background is *background*; everything unannotated is left out of
the loss. The loss is a class-weighted cross-entropy plus a Dice term on the centre class,
both over annotated pixels only. Instances are the centre regions, split where they narrow
between touching cells (:func:`split_at_necks`), grown by a watershed into the cell (border +
centre) region.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..core.lazy import import_torch
from ..core.sparse_labels import IGNORE, count_cells
from ..models.necks import split_at_necks
from ..models.schedule import rate_schedule
from .config import UNetConfig, UNetThresholds
from .evaluate import annotated_scores, judged_windows, near_best
from .sampling import SparseDataset
from .torch_network import TorchNetwork

__all__ = ["UNetNetwork", "unet_loss", "unet_targets"]

BACKGROUND, BORDER, CENTRE = 0, 1, 2
WEIGHTS_FILE = "unet.pt"
CENTRE_GRID = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)  # threshold pairs the tuning tries
FOREGROUND_GRID = (0.4, 0.5, 0.6, 0.7, 0.8)


def unet_targets(labels: np.ndarray, border_width: int = 2) -> np.ndarray:
    """Class targets of internal labels (..., Y, X): -1 ignore, 0 bg, 1 border, 2 centre."""
    labels = np.asarray(labels)
    size = [1] * (labels.ndim - 2) + [2 * border_width + 1] * 2
    edge = ndi.maximum_filter(labels, size=size) != ndi.minimum_filter(labels, size=size)
    targets = np.full(labels.shape, IGNORE, np.int64)
    targets[labels == 0] = BACKGROUND
    cells = labels > 0
    targets[cells & edge] = BORDER
    targets[cells & ~edge] = CENTRE
    return targets


def unet_loss(logits: Any, targets: Any, mask: Any, dice_weight: float = 1.0) -> Any:
    """Masked loss: class-weighted cross-entropy + centre Dice over pixels where ``mask``.

    ``logits`` (N, 3, Y, X); ``targets`` (N, Y, X) class ids, whatever their value outside
    ``mask`` (N, Y, X, bool) — those pixels contribute nothing, to the loss or its gradient.
    """
    torch = import_torch()
    functional = torch.nn.functional
    safe = torch.where(mask, targets, torch.zeros_like(targets))
    counts = torch.stack([((safe == c) & mask).sum() for c in range(3)]).float()
    weights = torch.where(counts > 0, counts.sum() / (3.0 * counts.clamp(min=1.0)), counts)
    weights = weights.clamp(max=10.0)
    per_pixel = functional.cross_entropy(logits, safe, reduction="none")
    pixel_weight = weights[safe] * mask
    ce = (per_pixel * pixel_weight).sum() / pixel_weight.sum().clamp(min=1e-6)
    prob = torch.softmax(logits, dim=1)[:, CENTRE] * mask
    truth = ((safe == CENTRE) & mask).float()
    dice = 1.0 - (2.0 * (prob * truth).sum() + 1.0) / (prob.sum() + truth.sum() + 1.0)
    return ce + dice_weight * dice


def _build_unet(n_channels: int, base: int, depth: int, grid: int = 1) -> Any:
    """The U-Net of :mod:`~napari_cellsparse.training.unet_architecture` (torch-only, so a
    bioimage.io package can carry it as its architecture)."""
    from .unet_architecture import UNet

    return UNet(n_channels, base, depth, grid)


class UNetNetwork(TorchNetwork):
    """3-class U-Net trained with masked losses; ours, small enough for a laptop CPU."""

    name = "unet"
    title = "3-class U-Net (PyTorch)"
    requires = ("torch",)
    extra = "sam"
    config_class = UNetConfig
    thresholds_class = UNetThresholds
    config: UNetConfig
    thresholds: UNetThresholds
    weight_files = (WEIGHTS_FILE,)

    def _architecture(self) -> Any:
        return _build_unet(
            self.n_channels,
            self.config.base_filters,
            self.config.depth,
            self.config.grid,
        )

    def train_steps(
        self, data: SparseDataset, steps: int, rng: np.random.Generator
    ) -> Iterator[dict[str, float]]:
        torch = import_torch()
        if self.optimizer is None:
            self.optimizer = torch.optim.AdamW(
                self.net.parameters(), lr=self.config.learning_rate, weight_decay=1e-4
            )
        schedule = rate_schedule(
            torch, self.optimizer, self.config.learning_rate, steps, 0.1, self.config.one_cycle
        )
        patch, batch_size = self.config.patch_size, self.config.batch_size
        average = self.weight_average(steps, self.config.average_tail)
        for step in range(steps):
            batch = data.sample_batch(rng, batch_size, patch)
            targets = unet_targets(batch.labels, self.config.border_width)
            x = torch.from_numpy(np.moveaxis(batch.images, -1, 1)).to(self.device)
            t = torch.from_numpy(targets).to(self.device)
            self.net.train()
            loss = unet_loss(self.net(x), t, t != IGNORE, self.config.dice_weight)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if schedule is not None:
                schedule.step()
            average.after_step(step)
            yield {"loss": float(loss.detach())}

    def probabilities(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities (3, Y, X) of a normalised YXC image at training scale."""
        torch = import_torch()
        multiple = self.config.grid * 2**self.config.depth
        h, w = image.shape[:2]
        ph, pw = (-h) % multiple, (-w) % multiple
        padded = np.pad(
            image, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge"
        )
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(padded, -1, 0))[None]).float()
        self.net.eval()
        with torch.inference_mode():
            prob = torch.softmax(self.net(x.to(self.device)), dim=1)[0].cpu().numpy()
        return prob[:, :h, :w]

    def instances(
        self, prob: np.ndarray, centre: float, foreground: float, split_necks: bool = True
    ) -> np.ndarray:
        """Centre components, split at necks (:func:`split_at_necks`) unless told not to,
        grown by a watershed into the cell region."""
        return self._grow(prob, foreground, self._seeds(prob, centre, foreground, split_necks))

    def _seeds(
        self, prob: np.ndarray, centre: float, foreground: float, split_necks: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """The seeds of :meth:`instances` and the landscape to flood from them."""
        cell_region = prob[BORDER] + prob[CENTRE] > foreground
        seeds, n = ndi.label((prob[CENTRE] > centre) & cell_region)
        if n == 0:
            return seeds, prob[CENTRE]
        min_seed = max(2, int((0.15 * self.config.target_diameter) ** 2))
        sizes = np.bincount(seeds.ravel())
        seeds[sizes[seeds] < min_seed] = 0
        if split_necks:
            return split_at_necks(seeds, self.config.target_diameter)
        return seeds, prob[CENTRE]

    @staticmethod
    def _grow(
        prob: np.ndarray, foreground: float, seeds: tuple[np.ndarray, np.ndarray]
    ) -> np.ndarray:
        """Seeds grown by a watershed into the cell region."""
        from skimage.segmentation import watershed

        markers, landscape = seeds
        if not markers.any():
            return np.zeros(prob.shape[1:], np.int32)
        cell_region = prob[BORDER] + prob[CENTRE] > foreground
        return watershed(-landscape, markers, mask=cell_region).astype(np.int32)

    def find_thresholds(self, data: SparseDataset) -> UNetThresholds:
        """The threshold pair whose objects fit the annotated cells best: the annotated F1
        averaged over IoU 0.5-0.9. Settings within one annotated cell of the best (at most
        1/30) count as equal, and of those the one nearest the defaults wins, splitting at
        necks first (annotated cells are seldom touching ones, so they can show the split's
        cost on cells with a waist but hardly its gain).

        F1 at IoU 0.5 alone scores most pairs alike on a few cells and accepts cells grown
        well past their outline; the looser pairs then merge neighbours and spill into the
        unannotated background. The outline-aware score picks the foreground level, the
        centre level the annotated cells cannot tell apart stays at its default: on the
        DSB 2018 user story's 37 unused training images, the three U-Nets scored F1 0.757 at
        the pairs F1 at IoU 0.5 picked, 0.801 at the pairs picked now.
        """
        margin = int(np.ceil(1.5 * self.config.target_diameter))
        windows = judged_windows(data.labels, margin)
        probs = [self.probabilities(data.images[i])[:, ys, xs] for i, ys, xs in windows]
        truths = [data.labels[i][ys, xs] for i, ys, xs in windows]
        default = UNetThresholds()
        scores = []
        for split in (True, False):
            for c in CENTRE_GRID:
                seeds: dict[tuple[int, float | None], tuple[np.ndarray, np.ndarray]] = {}
                for f in FOREGROUND_GRID:
                    objects = []
                    for i, p in enumerate(probs):
                        # Where f <= c the centre level alone sets the seeds: split once.
                        key = (i, f if f > c else None)
                        if key not in seeds:
                            seeds[key] = self._seeds(p, c, f, split)
                        objects.append(self._grow(p, f, seeds[key]))
                    f1s = annotated_scores(objects, truths)
                    scores.append((float(f1s.mean()), float(f1s[0]), c, f, split))
        best = max(s[0] for s in scores)
        if best <= 0.0:
            return replace(default, tuned_annotated_f1=0.0)
        _, f1, centre, foreground, split = min(
            near_best(scores, lambda s: s[0], count_cells(truths)),
            key=lambda s: (
                s[4] != default.split_necks,
                abs(s[2] - default.centre_threshold) + abs(s[3] - default.foreground_threshold),
                -s[0],
            ),
        )
        return UNetThresholds(
            centre_threshold=centre,
            foreground_threshold=foreground,
            split_necks=split,
            tuned_annotated_f1=f1,
        )

    def predict_scaled(self, image: np.ndarray) -> np.ndarray:
        prob = self.probabilities(image)
        thresholds = self.thresholds
        return self.instances(
            prob,
            thresholds.centre_threshold,
            thresholds.foreground_threshold,
            thresholds.split_necks,
        )
