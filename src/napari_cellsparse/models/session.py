"""One training session of a stored model, shared by sparse training and the counter.

A :class:`TrainingSession` knows what it continues from (the current version's config and
metadata, unless reset), runs the stepped loop (cancel before the next step; annotation
updates polled every few steps; a loss that is not a finite number stops it with
:class:`~napari_cellsparse.core.errors.TrainingDivergedError`), checks the weights before they are
kept, records the session and saves it as a new version of the model. The trainers only say
how to take a step, how to rebuild their data from an update and how to save their weights.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import BadInputError, TrainingDivergedError
from ..core.progress import Progress
from .store import (
    CONFIG_FILE,
    METADATA_FILE,
    current_folder,
    has_version,
    now,
    read_json,
    save_training,
)

__all__ = ["Rebuild", "TrainingSession", "Updates"]

Updates = Callable[[], Any]
Rebuild = Callable[[Any], dict[str, int] | None]


class TrainingSession:
    """One run of training the model in ``folder`` with ``backend`` on ``n_channels`` images.

    ``kind`` says what was expected in messages about a stored model of another backend
    (``"unet"``, ``"a counter"``); ``noun`` names the model (``"model"``, ``"counter"``).
    """

    def __init__(
        self,
        folder: Path,
        backend: str,
        n_channels: int,
        reset: bool = False,
        kind: str | None = None,
        noun: str = "model",
    ) -> None:
        self.folder = folder
        self.name = folder.name
        self.backend = backend
        self.noun = noun
        self.source: Path | None = None
        self.previous_config: dict[str, Any] | None = None
        self.meta: dict[str, Any] = {"name": self.name, "backend": backend, "created": now()}
        if not reset:
            self._continue(n_channels, kind or backend)
        self.losses: list[float] = []
        self.done = 0
        self.stopped = False
        self.updates_applied = 0
        self.started = time.perf_counter()
        self.loop_s = 0.0
        self.train_s = 0.0

    def _continue(self, n_channels: int, kind: str) -> None:
        """Read the current version's config and metadata, checked to fit this training."""
        source = current_folder(self.folder)
        if not (source / METADATA_FILE).exists():
            return
        meta = read_json(source / METADATA_FILE)
        if meta.get("backend") != self.backend:
            raise BadInputError(
                f"The model {self.name!r} is a {meta.get('backend')} model, not {kind}; "
                "choose another name, or reset it to start afresh."
            )
        config = read_json(source / CONFIG_FILE)
        if int(config.pop("n_channels", n_channels)) != n_channels:
            raise BadInputError(
                f"The {self.noun} {self.name!r} was trained on images with another number of "
                "channels; choose another name, or reset it to start afresh."
            )
        self.source, self.previous_config, self.meta = source, config, meta

    def rng(self, seed: int) -> np.random.Generator:
        """The sampling generator: the seed moved on by the steps already trained, so a
        continued training does not repeat its crops."""
        return np.random.default_rng(int(seed) + int(self.meta.get("steps", 0)))

    def run(
        self,
        stepper: Iterator[dict[str, Any]],
        total: int,
        title: str,
        learning_rate: float,
        cancel: threading.Event | None = None,
        updates: Updates | None = None,
        update_every: int = 25,
        rebuild: Rebuild | None = None,
        figures: dict[str, int] | None = None,
        unit: str = "annotated cells",
        extra: Callable[[int, dict[str, Any]], None] | None = None,
    ) -> Generator[Progress, None, None]:
        """Take up to ``total`` steps of ``stepper`` (each yields a dict with ``loss``).

        Before the next step: stop when ``cancel`` is set; every ``update_every`` steps call
        ``updates()`` and, when it returns something, ``rebuild(it)`` (the figures of the new
        annotation, or None when nothing changed; it raises on an update it cannot use, and
        training goes on with the old data). ``figures`` (the starting annotation) go with the
        first step. ``extra(step, info)`` may add to a step's info (a preview, say).
        """
        if updates is not None and int(update_every) < 1:
            raise BadInputError(f"update_every must be 1 or more, got {update_every}.")
        if self.done == 0:  # a second run (more steps on new data) keeps the first's start
            self.started = time.perf_counter()
        try:
            while self.done < total:
                if cancel is not None and cancel.is_set():
                    self.stopped = True
                    break
                news: dict[str, Any] = {}
                if updates is not None and self.done and self.done % int(update_every) == 0:
                    news = self._poll(updates, rebuild)
                info = dict(next(stepper))
                self.done += 1
                loss = float(info["loss"])
                if not math.isfinite(loss) and not info.get("skipped"):
                    raise TrainingDivergedError(
                        self._diverged(
                            f"at step {self.done} the loss stopped being a finite number ({loss})",
                            learning_rate,
                        )
                    )
                self.losses.append(loss)
                if self.done == 1 and figures is not None:
                    news.setdefault("annotation", dict(figures))
                info.update(news)
                if extra is not None:
                    extra(self.done, info)
                message = f"{title}: step {self.done}/{total}"
                if "annotation" in news:
                    message += f", on {news['annotation']['cells']} {unit}"
                yield Progress(self.done, total, message, info)
        finally:
            close = getattr(stepper, "close", None)
            if close is not None:
                close()
        self.loop_s = time.perf_counter() - self.started

    def _poll(self, updates: Updates, rebuild: Rebuild | None) -> dict[str, Any]:
        """Ask for an annotation update and rebuild the data from it; what to report."""
        try:
            update = updates()
            figures = None if update is None or rebuild is None else rebuild(update)
        except Exception as err:  # a bad update must not cost the training done so far
            return {
                "annotation_error": f"The updated annotation was not used ({err}); training "
                "goes on with the previous one."
            }
        if figures is None:
            return {}
        self.updates_applied += 1
        return {"annotation": dict(figures)}

    def check_weights(self, finite: bool, learning_rate: float) -> None:
        """Raise :class:`TrainingDivergedError` unless the trained weights are finite."""
        if not finite:
            raise TrainingDivergedError(
                self._diverged(
                    f"after step {self.done} the weights are no longer finite numbers",
                    learning_rate,
                )
            )

    def _diverged(self, what: str, learning_rate: float) -> str:
        """The message of a diverged training: where, what was kept, what to change."""
        kept = (
            f"The previous version of the {self.noun} {self.name!r} is kept and still loads."
            if has_version(self.folder)
            else f"Nothing was saved (there was no earlier version of {self.name!r})."
        )
        rate = float(learning_rate)
        return (
            f"Training diverged: {what}. {kept} Lower the learning rate, now {rate:g} "
            f"(for example to {rate / 10:g}), and train again."
        )

    def record(self, **fields: Any) -> dict[str, Any]:
        """The session entry of the metadata: date, steps, timings, final loss, ``fields``."""
        self.train_s = time.perf_counter() - self.started
        session = {
            "date": now(),
            "steps": self.done,
            **fields,
            "stopped_early": self.stopped,
            "train_s": round(self.train_s, 2),
            "tune_s": round(self.train_s - self.loop_s, 2),
            "final_loss": float(np.mean(self.losses[-20:])) if self.losses else None,
        }
        if self.updates_applied:
            session["annotation_updates"] = self.updates_applied
        return session

    def save(
        self,
        session: dict[str, Any],
        config: dict[str, Any],
        save_weights: Callable[[Path], None],
        **fields: Any,
    ) -> dict[str, Any]:
        """Save the session as a new version of the model; the new metadata."""
        self.meta = save_training(
            self.folder,
            self.meta,
            session,
            config,
            save_weights,
            name=self.name,
            backend=self.backend,
            **fields,
        )
        return self.meta

    def result_info(self) -> dict[str, Any]:
        """What the returned model's ``info`` holds after training."""
        return {
            **self.meta,
            "stopped_early": self.stopped,
            "train_s": self.train_s,
            "losses": self.losses,
        }
