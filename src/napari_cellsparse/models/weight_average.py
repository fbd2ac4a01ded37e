"""The mean of a network's weights over the last steps of a training session.

Averaging the last steps' weights lands nearer the middle of the loss valley than the last
step does, so runs that differ only in their noise (the seed, the float rounding) end closer
together. Framework-free: a backend passes how to read its floating-point weights (a dict of
torch tensors or numpy arrays) and how to write a mean of them back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["WeightAverage"]


class WeightAverage:
    """Averages the weights after each of the last ``tail`` share of ``steps`` steps and
    writes the mean after the last one (``tail`` 0: nothing is averaged)."""

    def __init__(
        self,
        read: Callable[[], dict[Any, Any]],
        write: Callable[[dict[Any, Any]], None],
        steps: int,
        tail: float,
    ) -> None:
        self.read, self.write = read, write
        self.steps = int(steps)
        self.first = self.steps - round(self.steps * float(tail))
        self.mean: dict[Any, Any] = {}
        self.count = 0

    def after_step(self, step: int) -> None:
        """Call after step ``step`` (0-based) of the session; the last one writes the mean.

        A session stopped early keeps its last step's weights.
        """
        if step < self.first:
            return
        self.count += 1
        for key, value in self.read().items():
            if key not in self.mean:
                self.mean[key] = value * 1.0  # a copy, in either framework
            else:
                self.mean[key] += (value - self.mean[key]) / self.count
        if step == self.steps - 1:
            self.write(self.mean)
