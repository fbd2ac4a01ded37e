"""Counting cells from sparse, rough centre points (CellNet-style density maps).

>>> from napari_cellsparse.counting import train_counter, load_counter
>>> counter = train_counter(images=[img], points=[pts_yx], name="my-counter", background=[bg])
>>> result = counter.count(img)  # result.count, result.centres (N x 2, y x), result.density

Counters live in the same model store as the segmentation models (backend ``"counter"``).
Nothing here imports torch until a counter is trained or loaded.
"""

from __future__ import annotations

from .batch import BatchResult, count_folder, count_folder_iter
from .counter import BACKEND, Counter, CounterConfig, CountResult, load_counter
from .train import train_counter, train_counter_iter

__all__ = [
    "BACKEND",
    "BatchResult",
    "CountResult",
    "Counter",
    "CounterConfig",
    "count_folder",
    "count_folder_iter",
    "load_counter",
    "train_counter",
    "train_counter_iter",
]
