"""Large images: SAM embeddings per tile, computed only when a prompt needs them.

SAM's encoder sees 1024 x 1024 pixels; a larger image would be shrunk to that and lose its
small objects. :class:`TiledImage` covers it with overlapping tiles at native resolution.
A tile's embedding is computed the first time a prompt needs it (a progress generator, so
a worker can report and cancel) and kept in the prompter's
:class:`~napari_cellsparse.sam.embedding.EmbeddingCache` (memory LRU plus an optional disk
folder). The image is read tile by tile (numpy, dask and zarr arrays alike) and stretched
with the intensity range of the whole image, so memory is bounded by the tiles in use and
the cache limit, not by the image.

* A box, or a set of points, is decoded on the tile that holds it farthest from a cut
  edge; a prompt that fits in no tile gets a window of its own around it. Masks come back
  in image pixels at full resolution.
* Automask runs SAM's generator on every tile, then merges the objects of neighbouring
  tiles that agree where the tiles overlap (one-to-one, best match first), so an object on
  a tile border is one object, whether a tile saw it whole or only a piece of it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Generator, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from ..core.errors import BadInputError
from ..core.images import MAX_CHANNELS, intensity_ranges, to_rgb_uint8
from ..core.masks import PromptMask
from ..core.progress import Progress, check_cancel, nested, run_sync
from ..core.tiling import Region, tile_grid
from .automask import AutoMask, AutomaskParams, AutomaskResult, generate_masks, nms
from .prompting import SamPrompter, check_boxes

__all__ = ["TILE_ABOVE", "Region", "TiledImage", "merge_tile_masks", "needs_tiles", "tile_grid"]

# An image is tiled when a side is longer than this many tiles: shrinking it to SAM's 1024
# pixels would lose small objects, while a little larger is still fine.
TILE_ABOVE = 1.5
# Two masks of neighbouring tiles are one object when they agree this well where the
# tiles overlap (intersection over union, counted inside the overlap only).
MERGE_IOU = 0.5
# A prompt that fits in no tile gets a window this much larger than itself.
WINDOW_MARGIN = 1.25


def needs_tiles(shape: Sequence[int], tile: int = 1024) -> bool:
    """Whether an image of ``shape`` (YX or YXC) is prompted tile by tile."""
    return max(int(shape[0]), int(shape[1])) > TILE_ABOVE * tile


def _shift(mask: PromptMask, region: Region, shape: tuple[int, int]) -> PromptMask:
    """A mask of a tile in the image's pixels."""
    moved = replace(mask, y0=mask.y0 + region.y0, x0=mask.x0 + region.x0, shape=shape)
    if isinstance(moved, AutoMask):
        cx0, cy0, cx1, cy1 = moved.crop_box
        moved = replace(
            moved,
            point=(moved.point[0] + region.x0, moved.point[1] + region.y0),
            crop_box=(cx0 + region.x0, cy0 + region.y0, cx1 + region.x0, cy1 + region.y0),
        )
    return moved


class TiledImage:
    """One large image (YX or YXC, any array that slices) prompted tile by tile."""

    def __init__(
        self,
        prompter: SamPrompter,
        image: Any,
        channels: Sequence[int] | None = None,
        tile: int = 1024,
        overlap: int = 128,
    ) -> None:
        shape = tuple(int(n) for n in image.shape)
        if len(shape) not in (2, 3) or (len(shape) == 3 and shape[-1] > MAX_CHANNELS):
            raise BadInputError(
                f"Expected a 2D image (YX) or one with up to {MAX_CHANNELS} channels last "
                f"(YXC); got shape {shape}."
            )
        self.prompter = prompter
        self.image = image
        self.channels = None if channels is None else list(channels)
        self.shape: tuple[int, int] = (shape[0], shape[1])
        self.ranges = intensity_ranges(image, self.channels)
        self.tiles = tile_grid(self.shape, tile, overlap)
        self.tile, self.overlap = tile, overlap
        self.current: Region | None = None  # the region whose embedding is in use
        self.computed = 0  # embeddings this object ran the encoder for
        self._signatures: dict[Region, str] = {}
        self._last_rgb: tuple[Region, np.ndarray] | None = None

    # -- tiles and their embeddings ----------------------------------------------------
    def rgb(self, region: Region) -> np.ndarray:
        """The region's pixels as SAM's RGB, stretched like the whole image (the last one
        read is kept, as its signature and its embedding usually follow each other)."""
        if self._last_rgb is not None and self._last_rgb[0] == region:
            return self._last_rgb[1]
        pixels = np.asarray(self.image[region.slices])
        rgb = to_rgb_uint8(pixels, self.channels, self.ranges)
        self._last_rgb = (region, rgb)
        return rgb

    def signature(self, region: Region) -> str:
        """The cache key of the region's embedding (its pixels, the model)."""
        found = self._signatures.get(region)
        if found is None:
            found = self._signatures[region] = self.prompter.signature(self.rgb(region))
        return found

    def is_embedded(self, region: Region) -> bool:
        return self.signature(region) in self.prompter.cache

    def missing(self, regions: Sequence[Region]) -> list[Region]:
        """The regions (each once) whose embeddings still have to be computed."""
        return [r for r in dict.fromkeys(regions) if not self.is_embedded(r)]

    def embed(
        self, regions: Sequence[Region], cancel: threading.Event | None = None
    ) -> Generator[Progress, None, int]:
        """Compute the embeddings of ``regions`` not cached yet; returns how many ran."""
        todo = self.missing(regions)
        for i, region in enumerate(todo):
            check_cancel(cancel)
            label = f"Tile {i + 1} of {len(todo)}: "
            yield from nested(self.prompter.set_image(self.rgb(region)), i, i + 1, len(todo), label)
            self.current = region
            self.computed += 1
        return len(todo)

    def embed_all(self, cancel: threading.Event | None = None) -> Generator[Progress, None, int]:
        """Every tile's embedding (for an image that will be prompted all over)."""
        return (yield from self.embed(self.tiles, cancel))

    def use(self, region: Region) -> None:
        """Decode the next prompts on ``region`` (its embedding is computed now if missing)."""
        signature = self.signature(region)
        current = self.prompter.embedding
        if current is None or current.signature != signature:
            found = self.prompter.cache.get(signature, str(self.prompter.device))
            if found is None:
                run_sync(self.embed([region]))
            else:
                self.prompter.use_embedding(found)
        self.current = region

    # -- where a prompt is decoded -------------------------------------------------------
    def region_for(self, box: Sequence[float]) -> Region:
        """The tile holding ``box`` (x0, y0, x1, y1) farthest from its cut edges, or a
        window around the box when no tile holds it."""
        x0, y0, x1, y1 = (float(v) for v in box)
        h, w = self.shape
        best, best_margin = None, -math.inf
        for region in self.tiles:
            if not region.holds((x0, y0, x1, y1)):
                continue
            margin = min(
                x0 - region.x0 if region.x0 > 0 else math.inf,
                y0 - region.y0 if region.y0 > 0 else math.inf,
                region.x1 - x1 if region.x1 < w else math.inf,
                region.y1 - y1 if region.y1 < h else math.inf,
            )
            if margin > best_margin:
                best, best_margin = region, margin
        if best is not None:
            return best
        side = max(self.tile, math.ceil(WINDOW_MARGIN * max(x1 - x0, y1 - y0)))
        wh, ww = min(side, h), min(side, w)
        top = int(min(max(round((y0 + y1 - wh) / 2), 0), h - wh))
        left = int(min(max(round((x0 + x1 - ww) / 2), 0), w - ww))
        return Region(top, left, top + wh, left + ww)

    def regions_for_boxes(self, boxes: Any) -> list[Region]:
        """The region each box is decoded on (boxes checked as by :meth:`boxes`)."""
        return [self.region_for(b) for b in check_boxes(boxes, self.shape)]

    def region_for_points(self, points: Any, labels: Any, box: Any | None = None) -> Region:
        """The region a point prompt is decoded on; bad points are refused here."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        lab = np.asarray(labels).reshape(-1)
        if len(pts) == 0 or len(pts) != len(lab):
            raise BadInputError("Give at least one point, and one label (1 or 0) per point.")
        h, w = self.shape
        if not np.isfinite(pts).all():
            raise BadInputError("Point coordinates must be finite numbers.")
        if ((pts < 0) | (pts >= [w, h])).any():
            raise BadInputError(f"A point lies outside the image ({w} x {h} pixels).")
        lo, hi = pts.min(axis=0), pts.max(axis=0) + 1
        if box is not None:
            checked = check_boxes(box, self.shape)[0]
            lo, hi = np.minimum(lo, checked[:2]), np.maximum(hi, checked[2:])
        return self.region_for((lo[0], lo[1], hi[0], hi[1]))

    # -- prompts -------------------------------------------------------------------------
    def boxes(self, boxes: Any, multimask: bool = False) -> list[PromptMask]:
        """One object per box (``x0, y0, x1, y1`` in image pixels), in image pixels."""
        if np.asarray(boxes).size == 0:
            return []
        checked = check_boxes(boxes, self.shape)
        regions = [self.region_for(b) for b in checked]
        out: list[PromptMask | None] = [None] * len(checked)
        for region in dict.fromkeys(regions):
            index = [i for i, r in enumerate(regions) if r == region]
            self.use(region)
            offset = np.array([region.x0, region.y0, region.x0, region.y0], dtype=np.float64)
            masks = self.prompter.boxes(checked[index] - offset, multimask)
            for i, mask in zip(index, masks, strict=True):
                out[i] = _shift(mask, region, self.shape)
        return [m for m in out if m is not None]

    def points(
        self, points: Any, labels: Any, box: Any | None = None, multimask: bool = True
    ) -> PromptMask:
        """One object from positive (1) and negative (0) points ``x, y`` in image pixels."""
        region = self.region_for_points(points, labels, box)
        self.use(region)
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2) - [region.x0, region.y0]
        local_box = None
        if box is not None:
            offset = [region.x0, region.y0, region.x0, region.y0]
            local_box = check_boxes(box, self.shape)[0] - offset
        mask = self.prompter.points(pts, labels, local_box, multimask)
        return _shift(mask, region, self.shape)

    def prompt(
        self,
        points: Any | None = None,
        labels: Any | None = None,
        box: Any | None = None,
        multimask: bool = False,
    ) -> list[PromptMask]:
        """Every mask SAM proposes for one prompt, in image pixels (see
        :meth:`SamPrompter.prompt <napari_cellsparse.sam.prompting.SamPrompter.prompt>`)."""
        offset = np.zeros(2)
        if points is not None and len(np.asarray(points).reshape(-1)):
            region = self.region_for_points(points, labels, box)
            offset = np.array([region.x0, region.y0], dtype=np.float64)
            points = np.asarray(points, dtype=np.float64).reshape(-1, 2) - offset
        elif box is not None:
            region = self.regions_for_boxes([box])[0]
            offset = np.array([region.x0, region.y0], dtype=np.float64)
        else:
            raise BadInputError("Give a box, or at least one point, for the prompt.")
        if box is not None:
            box = check_boxes(box, self.shape)[0] - np.tile(offset, 2)
        self.use(region)
        masks = self.prompter.prompt(points, labels, box, multimask)
        return [_shift(m, region, self.shape) for m in masks]

    # -- automatic masks -----------------------------------------------------------------
    def automask(
        self,
        params: AutomaskParams | Mapping[str, Any] | None = None,
        cancel: threading.Event | None = None,
        multimask: bool = True,
    ) -> Generator[Progress, None, AutomaskResult]:
        """SAM's automatic masks on every tile, objects on tile borders merged."""
        if params is None:
            params = AutomaskParams()
        elif not isinstance(params, AutomaskParams):
            params = AutomaskParams.from_dict(params)
        params.check()
        n = len(self.tiles)
        per_tile: list[list[AutoMask]] = []
        for i, region in enumerate(self.tiles):
            check_cancel(cancel)
            fresh = not self.is_embedded(region)
            self.current = region
            work = generate_masks(
                self.prompter, self.rgb(region), params, cancel=cancel, multimask=multimask
            )
            found = yield from nested(work, 100 * i, 100 * (i + 1), 100 * n, f"Tile {i + 1}/{n}: ")
            self.computed += int(fresh)
            per_tile.append([_shift(m, region, self.shape) for m in found.masks])
        yield Progress(100 * n, 100 * n, "Merging objects on tile borders")
        masks = merge_tile_masks(self.tiles, per_tile, params.box_nms_thresh)
        return AutomaskResult(masks, self.shape, params)


def _paint(mask: PromptMask, region: Region) -> np.ndarray:
    """``mask`` (image pixels) cut to ``region``, as a boolean array of the region."""
    out = np.zeros(region.shape, dtype=bool)
    h, w = mask.mask.shape
    y0, x0 = max(mask.y0, region.y0), max(mask.x0, region.x0)
    y1, x1 = min(mask.y0 + h, region.y1), min(mask.x0 + w, region.x1)
    if y0 < y1 and x0 < x1:
        out[y0 - region.y0 : y1 - region.y0, x0 - region.x0 : x1 - region.x0] = mask.mask[
            y0 - mask.y0 : y1 - mask.y0, x0 - mask.x0 : x1 - mask.x0
        ]
    return out


def _agreement(a: PromptMask, b: PromptMask, shared: Region) -> float:
    """IoU of two masks counted inside ``shared`` only (0 when neither is there)."""
    first, second = _paint(a, shared), _paint(b, shared)
    union = int((first | second).sum())
    return int((first & second).sum()) / union if union else 0.0


def _union(members: list[AutoMask]) -> AutoMask:
    """One object from the views of several tiles: the union of their masks, with the
    scores of the view that saw the most of it."""
    if len(members) == 1:
        return members[0]
    boxes = np.array([m.bbox() for m in members])
    hull = Region(
        int(boxes[:, 0].min()),
        int(boxes[:, 1].min()),
        int(boxes[:, 2].max()),
        int(boxes[:, 3].max()),
    )
    mask = np.zeros(hull.shape, dtype=bool)
    for m in members:
        mask |= _paint(m, hull)
    best = max(members, key=lambda m: m.area)
    return replace(best, mask=mask, y0=hull.y0, x0=hull.x0)


def merge_tile_masks(
    tiles: Sequence[Region], per_tile: Sequence[Sequence[AutoMask]], nms_thresh: float
) -> list[AutoMask]:
    """One object per object from the masks of overlapping tiles (image pixels).

    For every pair of overlapping tiles, masks that agree inside the overlap
    (:data:`MERGE_IOU`) are matched one to one, best agreement first; matched masks (across
    any number of tiles) become one object, the union of what each tile saw. That joins the
    two views of an object seen whole twice, and the pieces of one cut by a tile edge. A box
    NMS as SAM's generator uses then removes what is left of duplicates.
    """
    masks: list[AutoMask] = []
    owner: list[int] = []
    for t, found in enumerate(per_tile):
        for m in found:
            if m.bbox() is not None:
                masks.append(m)
                owner.append(t)
    if not masks:
        return []
    boxes = np.array([m.bbox() for m in masks])  # y0, x0, y1, x1
    owner_arr = np.asarray(owner)
    parent = list(range(len(masks)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def inside(index: np.ndarray, region: Region) -> np.ndarray:
        b = boxes[index]
        hit = (b[:, 0] < region.y1) & (b[:, 2] > region.y0) & (b[:, 1] < region.x1)
        return index[hit & (b[:, 3] > region.x0)]

    for a in range(len(tiles)):
        for b in range(a + 1, len(tiles)):
            shared = tiles[a].overlap(tiles[b])
            if shared is None:
                continue
            first = inside(np.flatnonzero(owner_arr == a), shared)
            second = inside(np.flatnonzero(owner_arr == b), shared)
            pairs = []
            for i in first:
                bi = boxes[i]
                for j in second:
                    bj = boxes[j]
                    if bi[0] < bj[2] and bj[0] < bi[2] and bi[1] < bj[3] and bj[1] < bi[3]:
                        score = _agreement(masks[i], masks[j], shared)
                        if score >= MERGE_IOU:
                            pairs.append((score, int(i), int(j)))
            used: set[int] = set()
            for _, i, j in sorted(pairs, reverse=True):
                if i in used or j in used:
                    continue
                used.update((i, j))
                parent[root(i)] = root(j)
    groups: dict[int, list[AutoMask]] = {}
    for i, m in enumerate(masks):
        groups.setdefault(root(i), []).append(m)
    merged = [_union(members) for members in groups.values()]
    keep = nms([m.box() for m in merged], [m.predicted_iou for m in merged], nms_thresh)
    return [merged[i] for i in keep]
