"""The device choice of the widgets, as the model worker finds it (asked once per session).

Which devices torch can use is known only once torch is imported, which takes seconds; the
widgets never import it in napari's process for that. A :class:`DeviceCombo` offers
``auto`` and ``cpu`` at once; the first time one is opened it asks the model worker (its
``devices`` job, in a thread), and every device combo gets the answer when it comes. The
worker runs on this computer, so its answer also holds for SAM, which runs in napari's
process.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Generator
from typing import Any

from qtpy.QtCore import QObject, Signal, Slot
from qtpy.QtWidgets import QComboBox, QWidget

from ...core.devices import ALWAYS_AVAILABLE
from ...core.progress import Progress

__all__ = ["DeviceCombo", "known_devices"]

log = logging.getLogger(__name__)

DESCRIPTION = "Looking for devices"

_ANSWER: list[list[str]] = []  # the worker's devices, once it answered (this session)
_ASKING: list[Any] = []  # the thread worker asking, while it runs


class _Answers(QObject):
    """Tells the device combos that the worker answered; Qt drops a combo once it is deleted."""

    learned = Signal()


@functools.cache
def _news() -> _Answers:
    """The one messenger of this session, made with the first combo (Qt is loaded by then)."""
    return _Answers()


def known_devices() -> list[str]:
    """What a device combo offers now: ``auto``, then the worker's devices once known."""
    found = _ANSWER[0] if _ANSWER else []
    return list(dict.fromkeys([*ALWAYS_AVAILABLE, *found]))


class DeviceCombo(QComboBox):
    """A device choice: ``auto`` and ``cpu`` at once, the accelerators when the worker says."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.addItems(known_devices())
        _news().learned.connect(self.add_known)

    def showPopup(self) -> None:
        """Open the list, asking the worker for its devices the first time (not blocking)."""
        ask_devices()
        super().showPopup()

    @Slot()
    def add_known(self) -> None:
        """Add the devices learned since this combo was made (the choice is kept)."""
        have = {self.itemText(i) for i in range(self.count())}
        self.addItems([d for d in known_devices() if d not in have])


def ask_devices() -> None:
    """Ask the model worker for its devices, once per session, in a thread."""
    if _ANSWER or _ASKING:
        return
    from napari.qt.threading import create_worker

    from ._worker import shared_host

    def ask() -> Generator[Progress, None, list[str]]:
        return (yield from shared_host().run("devices", {}, DESCRIPTION))

    def failed(err: BaseException) -> None:  # keep auto and cpu; the next opening asks again
        log.warning("could not list the devices: %s", err)

    worker = create_worker(
        ask,
        _connect={"returned": learn, "errored": failed, "finished": _ASKING.clear},
    )
    _ASKING.append(worker)


def learn(devices: list[str]) -> None:
    """Keep the worker's ``devices`` for this session and add them to every device combo."""
    _ANSWER[:] = [list(devices)]
    _news().learned.emit()
