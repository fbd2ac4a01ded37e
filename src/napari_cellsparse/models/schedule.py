"""The learning-rate schedule every torch model here trains with: one cycle (warm-up, then
cosine annealing) over the steps of one training session."""

from __future__ import annotations

from typing import Any

__all__ = ["one_cycle"]


def one_cycle(torch: Any, optimizer: Any, max_lr: float, total: int, warmup: float) -> Any:
    """A one-cycle schedule over ``total`` steps with a warm-up of about ``warmup`` of them,
    or None (a constant rate) for fewer than 3 steps. The warm-up is at least two steps:
    torch divides by its length in steps minus one (10 steps at 0.1 failed)."""
    if total < 3:
        return None
    pct = min(max(warmup, 2.0 / total), 0.5)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total, pct_start=pct
    )
