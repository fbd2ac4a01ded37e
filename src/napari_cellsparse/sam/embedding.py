"""Image embeddings: SAM's encoder run stage by stage (progress, cancel) and cached.

An embedding is identified by a signature of the image content, the model type and the
weights file; the cache keeps recent ones in memory (bounded LRU) and, optionally, on disk
so that reopening the same image later skips the encoder.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.lazy import import_torch
from ..core.paths import atomic_target
from ..core.progress import Progress

__all__ = ["EmbeddingCache", "ImageEmbedding", "compute_embedding", "image_signature"]

log = logging.getLogger(__name__)

_CACHE_FORMAT = 1


@dataclass
class ImageEmbedding:
    """What SAM's decoder needs of one image."""

    features: Any  # torch.Tensor, 1 x 256 x 64 x 64
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    signature: str


def image_signature(image: np.ndarray, model_key: str) -> str:
    """Content hash of an image (shape, dtype, pixels) plus the model it is embedded with."""
    digest = hashlib.sha1(usedforsecurity=False)
    digest.update(f"{_CACHE_FORMAT}|{model_key}|{image.shape}|{image.dtype}|".encode())
    digest.update(np.ascontiguousarray(image).data)
    return digest.hexdigest()


def _encoder_stages(encoder: Any) -> list[Any]:
    """The encoder as a list of callables applied in order (same maths as ``forward``)."""
    if hasattr(encoder, "blocks"):  # segment_anything.ImageEncoderViT

        def embed(x: Any) -> Any:
            x = encoder.patch_embed(x)
            return x + encoder.pos_embed if encoder.pos_embed is not None else x

        def neck(x: Any) -> Any:
            return encoder.neck(x.permute(0, 3, 1, 2))

        return [embed, *encoder.blocks, neck]
    if hasattr(encoder, "layers"):  # mobile_sam.TinyViT

        def neck_t(x: Any) -> Any:
            b, _, c = x.size()
            return encoder.neck(x.view(b, 64, 64, c).permute(0, 3, 1, 2))

        return [encoder.patch_embed, *encoder.layers, neck_t]
    return [encoder]


def compute_embedding(
    sam: Any, rgb: np.ndarray, signature: str = ""
) -> Generator[Progress, None, ImageEmbedding]:
    """Run SAM's image encoder on an RGB uint8 image, one stage per progress step."""
    torch = import_torch()
    from segment_anything.utils.transforms import ResizeLongestSide

    size = sam.image_encoder.img_size
    resized = ResizeLongestSide(size).apply_image(rgb)
    device = next(sam.parameters()).device
    x = torch.as_tensor(resized, device=device).permute(2, 0, 1).contiguous()[None]
    input_size = tuple(x.shape[-2:])
    stages = _encoder_stages(sam.image_encoder)
    total = len(stages) + 1
    with torch.inference_mode():
        x = sam.preprocess(x)
        yield Progress(1, total, "computing image embedding")
        for i, stage in enumerate(stages, start=2):
            x = stage(x)
            yield Progress(i, total, "computing image embedding")
    return ImageEmbedding(x, (int(rgb.shape[0]), int(rgb.shape[1])), input_size, signature)


class EmbeddingCache:
    """Bounded in-memory LRU of embeddings, with an optional bounded folder on disk.

    One embedding is 4 MB (256 x 64 x 64 float32), so ``max_items`` bounds memory; on disk,
    the least recently used files go once the folder holds more than ``max_disk_mb``.
    """

    def __init__(
        self,
        max_items: int = 8,
        disk_dir: str | os.PathLike | None = None,
        max_disk_mb: float = 2048.0,
    ) -> None:
        self.max_items = max_items
        self.disk_dir = Path(disk_dir) if disk_dir is not None else None
        self.max_disk_mb = max_disk_mb
        self._items: OrderedDict[str, ImageEmbedding] = OrderedDict()

    def __contains__(self, signature: object) -> bool:
        """Whether :meth:`get` would find it (in memory or on disk), without loading it."""
        if signature in self._items:
            return True
        return self.disk_dir is not None and self._path(str(signature)).is_file()

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def get(self, signature: str, device: str = "cpu") -> ImageEmbedding | None:
        """The cached embedding, from memory or disk, or None."""
        found = self._items.get(signature)
        if found is not None:
            self._items.move_to_end(signature)
            return found
        found = self._load(signature, device)
        if found is not None:
            self._remember(found)
            os.utime(self._path(signature))  # recently used: evicted last
        return found

    def put(self, embedding: ImageEmbedding) -> None:
        """Keep an embedding in memory, and on disk when a folder is set."""
        self._remember(embedding)
        if self.disk_dir is not None:
            self._save(embedding)

    def clear(self) -> None:
        """Forget the in-memory embeddings (files on disk stay)."""
        self._items.clear()

    def _remember(self, embedding: ImageEmbedding) -> None:
        self._items[embedding.signature] = embedding
        self._items.move_to_end(embedding.signature)
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)

    def _path(self, signature: str) -> Path:
        assert self.disk_dir is not None
        return self.disk_dir / f"{signature}.pt"

    def _save(self, embedding: ImageEmbedding) -> None:
        torch = import_torch()
        path = self._path(embedding.signature)
        payload = {
            "features": embedding.features.detach().cpu(),
            "original_size": embedding.original_size,
            "input_size": embedding.input_size,
            "signature": embedding.signature,
        }
        with atomic_target(path) as temp:
            torch.save(payload, temp)
        self._trim_disk()

    def _trim_disk(self) -> None:
        """Delete the least recently used files until the folder is within its limit."""
        assert self.disk_dir is not None
        files = []
        for path in self.disk_dir.glob("*.pt"):
            try:
                stat = path.stat()
            except OSError:
                continue
            files.append((stat.st_mtime, stat.st_size, path))
        budget = self.max_disk_mb * 1024 * 1024
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= budget:
                break
            path.unlink(missing_ok=True)
            total -= size

    def _load(self, signature: str, device: str) -> ImageEmbedding | None:
        if self.disk_dir is None:
            return None
        path = self._path(signature)
        if not path.is_file():
            return None
        torch = import_torch()
        try:
            payload = torch.load(path, map_location=device, weights_only=True)
            if payload["signature"] != signature:
                raise ValueError("signature mismatch")
            return ImageEmbedding(
                payload["features"],
                tuple(payload["original_size"]),
                tuple(payload["input_size"]),
                signature,
            )
        except Exception as err:
            log.warning("ignoring unreadable cached embedding %s (%s)", path, err)
            path.unlink(missing_ok=True)
            return None
