"""The one error hierarchy of the engine.

The engine raises these; only front ends (widgets, CLI, server) turn them into messages.
Every message is written for a biologist: what went wrong and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailableError",
    "BadInputError",
    "CancelledError",
    "CellsparseError",
    "JobFailedError",
    "TrainingDivergedError",
    "WeightsError",
    "WorkerCrashedError",
]


class CellsparseError(Exception):
    """Base class of every error the engine raises on purpose."""


class BadInputError(CellsparseError, ValueError):
    """The user's data or settings cannot be used (wrong shape, empty annotation, ...)."""


class BackendUnavailableError(CellsparseError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    def __init__(self, what: str, extra: str, cause: BaseException | None = None) -> None:
        detail = f" ({cause})" if cause is not None else ""
        super().__init__(
            f"{what} is not installed{detail}. Install it with: "
            f'pip install "napari-cellsparse[{extra}]"'
        )
        self.extra = extra


class WeightsError(CellsparseError):
    """Model weights are missing, corrupted, or could not be downloaded."""


class CancelledError(CellsparseError):
    """The user cancelled a long operation."""


class WorkerCrashedError(CellsparseError):
    """The model worker process ended in the middle of a job (crash, out of memory, killed)."""


class JobFailedError(CellsparseError):
    """A job in the model worker failed with an error the engine did not expect."""


class TrainingDivergedError(CellsparseError):
    """Training produced a loss or weights that are not finite numbers; nothing was saved."""
