"""What the SAM annotator knows between events, and the names of the layers it writes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ....core.masks import PromptMask
from ....core.paths import data_home
from ....sam.embedding import EmbeddingCache

if TYPE_CHECKING:
    from ....sam.automask import AutomaskGenerator
    from ....sam.large_images import TiledImage
    from ....sam.prompting import SamPrompter

__all__ = [
    "ANNOTATION",
    "AUTOMASK",
    "AUTOMASK_OUTLINES",
    "OUTLINES",
    "POINTS",
    "PREVIEW",
    "PROMPTS",
    "SamState",
]

PROMPTS, POINTS, OUTLINES, PREVIEW, ANNOTATION, AUTOMASK, AUTOMASK_OUTLINES = (
    "SAM prompts",
    "SAM points",
    "SAM outlines",
    "SAM preview",
    "SAM annotation",
    "SAM automask",
    "SAM automask outlines",
)


@dataclass
class SamState:
    """What the widget knows between events (owned by one widget, never global)."""

    prompter: SamPrompter | None = None
    spec: tuple[str, str, str] | None = None  # model, weights, device of ``prompter``
    image_key: tuple[Any, ...] | None = None  # layer and slice the embedding belongs to
    tiled: TiledImage | None = None  # the large image being prompted tile by tile
    boxes_done: int = 0
    pending_boxes: list[np.ndarray] = field(default_factory=list)
    preview: PromptMask | None = None
    # Memory LRU plus a bounded folder on disk: a large image's tiles, or an image opened
    # again in a later session, are not embedded twice.
    cache: EmbeddingCache = field(
        default_factory=lambda: EmbeddingCache(disk_dir=data_home() / "embeddings")
    )
    # The automask set-up of the last run (decoded candidates) and what it was made for
    # (model, image, grid): a run changing only thresholds filters it again, decoding nothing.
    automask: AutomaskGenerator | None = None
    automask_key: tuple[Any, ...] | None = None
