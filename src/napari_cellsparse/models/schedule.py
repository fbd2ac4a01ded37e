"""The learning-rate schedule the models here train with: one cycle (warm-up, then cosine
annealing) over the steps of one training session; torch's scheduler for the torch models,
the same curve step by step for StarDist's Keras optimiser."""

from __future__ import annotations

import math
from typing import Any

__all__ = ["one_cycle", "one_cycle_rate", "rate_schedule"]

# torch's OneCycleLR defaults: start at max_lr / 25, end at that / 1e4.
DIV_START, DIV_END = 25.0, 1e4


def one_cycle(torch: Any, optimizer: Any, max_lr: float, total: int, warmup: float) -> Any:
    """A one-cycle schedule over ``total`` steps with a warm-up of about ``warmup`` of them,
    or None (a constant rate) for fewer than 3 steps. The warm-up is at least two steps:
    torch divides by its length in steps minus one (10 steps at 0.1 failed)."""
    if total < 3:
        return None
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total, pct_start=_warmup_share(total, warmup)
    )


def rate_schedule(
    torch: Any, optimizer: Any, max_lr: float, total: int, warmup: float, cycle: bool
) -> Any:
    """:func:`one_cycle` when ``cycle``; else None, with every parameter group at ``max_lr``
    (a constant rate, also after an earlier session's schedule moved it)."""
    if cycle:
        return one_cycle(torch, optimizer, max_lr, total, warmup)
    for group in optimizer.param_groups:
        group["lr"] = max_lr
    return None


def one_cycle_rate(step: int, total: int, max_lr: float, warmup: float) -> float:
    """The rate of :func:`one_cycle`'s schedule at ``step`` (0-based) of ``total``, for
    optimisers outside torch (StarDist's Keras): cosine up over the warm-up, then down."""
    if total < 3:
        return max_lr
    start, end = max_lr / DIV_START, max_lr / DIV_START / DIV_END
    rise = _warmup_share(total, warmup) * total - 1  # at least 0.5 steps
    if step <= rise:
        return _cosine(start, max_lr, step / rise)
    return _cosine(max_lr, end, min((step - rise) / max(total - 1 - rise, 1.0), 1.0))


def _warmup_share(total: int, warmup: float) -> float:
    """The share of ``total`` steps that warms up: ``warmup``, at least two steps, at most
    half of them."""
    return min(max(warmup, 2.0 / total), 0.5)


def _cosine(a: float, b: float, fraction: float) -> float:
    """From ``a`` (fraction 0) to ``b`` (fraction 1) along half a cosine."""
    return b + (a - b) * (1.0 + math.cos(math.pi * fraction)) / 2.0
