"""Long work as generators: yield :class:`Progress`, return the result.

The UI runs such a generator in a napari ``thread_worker`` (each yield is a chance to report
and to cancel); the CLI, the server and the tests drain it with :func:`run_sync`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import CancelledError

__all__ = ["Progress", "ProgressCallback", "check_cancel", "nested", "on_steps", "run_sync"]

T = TypeVar("T")


@dataclass(frozen=True)
class Progress:
    """One progress event: ``step`` of ``total`` done, with a short message."""

    step: int
    total: int
    message: str = ""
    info: dict[str, Any] = field(default_factory=dict)


ProgressCallback = Callable[[Progress], None]


def check_cancel(cancel: threading.Event | None) -> None:
    """Raise :class:`CancelledError` when ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise CancelledError("Cancelled by the user.")


def run_sync(
    work: Generator[Progress, None, T],
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> T:
    """Drain a progress generator and return its result.

    ``cancel`` is checked after every step; when set, the generator is closed (so it can
    clean up) and :class:`CancelledError` is raised.
    """
    try:
        while True:
            event = next(work)
            if progress is not None:
                progress(event)
            if cancel is not None and cancel.is_set():
                work.close()
                raise CancelledError("Cancelled by the user.")
    except StopIteration as stop:
        return stop.value


def on_steps(
    progress: Callable[[int, int, dict[str, Any]], None] | None,
) -> ProgressCallback | None:
    """A :func:`run_sync` callback that calls ``progress(step, total, info)`` for the events
    of training steps only (those whose ``info`` has a ``loss``)."""
    if progress is None:
        return None

    def call(event: Progress) -> None:
        if event.info.get("loss") is not None:
            progress(event.step, event.total, event.info)

    return call


def nested(
    work: Generator[Progress, None, T], start: int, stop: int, total: int, label: str = ""
) -> Generator[Progress, None, T]:
    """Run ``work`` as steps ``start..stop`` of a job of ``total`` steps (one tile of many,
    say); its messages get ``label`` in front."""
    while True:
        try:
            event = next(work)
        except StopIteration as stop_iteration:
            return stop_iteration.value
        fraction = event.step / event.total if event.total else 0.0
        step = start + round(fraction * (stop - start))
        yield Progress(step, total, f"{label}{event.message}", event.info)
