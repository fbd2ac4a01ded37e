"""Training batches made one step ahead, in a thread, while the network trains on the last.

A step of a sparse training is two halves that need not wait for each other: the crops and
their targets (numpy, scipy and StarDist's C code, holding Python's lock) and the network's
update (TensorFlow's kernels, which release it). :func:`prefetched` makes batch ``k + 1``
while the caller trains on batch ``k``. With the widgets' worker threads (one on a 2-core
CPU) StarDist's step took 0.215-0.226 s instead of 0.234-0.247 s (user story, 80 steps, three
A/B rounds in one process). Cellpose's batches with their flow targets (cellpose's
``masks_to_flows``): 0.228-0.233 s a step instead of 0.241-0.249 s (100 steps, two rounds, the
same losses). The U-Net's and the counter's steps did not change beyond their noise (their
batches are a smaller share of a step), so they do not use it.

It makes exactly ``count`` items, one after the other, in the order a plain loop would: a
seeded generator used by ``make`` ends in the same state and gives the same batches, so a
seed still gives the same model. Closing the iterator early (cancel, an error, a new
annotation) waits for the item being made, so nothing touches that generator afterwards, and
an error raised by ``make`` reaches the caller at the item it belongs to.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from typing import TypeVar

__all__ = ["prefetched"]

T = TypeVar("T")

_POLL_S = 0.05  # how often a blocked producer checks whether the caller stopped


def prefetched(make: Callable[[], T], count: int, ahead: int = 1) -> Generator[T, None, None]:
    """``make()`` called ``count`` times in a background thread, at most ``ahead`` results
    waiting; yields them in order."""
    if count <= 0:
        return
    slots: queue.Queue[tuple[bool, object]] = queue.Queue(maxsize=max(1, int(ahead)))
    stop = threading.Event()

    def produce() -> None:
        for _ in range(count):
            if stop.is_set():
                return
            try:
                item: tuple[bool, object] = (True, make())
            except BaseException as err:  # handed to the caller, raised there
                item = (False, err)
            while not stop.is_set():
                try:
                    slots.put(item, timeout=_POLL_S)
                    break
                except queue.Full:
                    continue
            if not item[0]:
                return

    worker = threading.Thread(target=produce, name="cellsparse-prefetch", daemon=True)
    worker.start()
    try:
        for _ in range(count):
            ok, value = slots.get()
            if not ok:
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()
