"""The one helper that runs engine progress generators from a dock widget.

Model jobs (training, prediction, counting, block-wise segmentation) run in the plugin's
model worker process (:mod:`napari_cellsparse.worker`), shared by every widget of the napari
session and started on first need; :meth:`JobRunner.run_in_worker` relays such a job through a
thread here. Short in-process jobs (SAM, measurements) use :meth:`JobRunner.start`.

It starts the generator in a napari ``thread_worker`` (or synchronously, for tests), maps
its :class:`~napari_cellsparse.core.progress.Progress` events to a napari progress bar (and to an
optional handler of the widget), routes errors to a notification a biologist can read, wires
the Cancel button to ``quit()`` — or, for a job started with a ``cancel`` event, to setting
that event, so the job can stop gracefully and still return its result — and disables the run
buttons while busy. Results arrive on the main thread.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable, Generator, Sequence
from typing import Any

from napari.utils import progress as napari_progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QWidget

from ...core.errors import CancelledError, CellsparseError
from ...core.progress import Progress, run_sync
from ...worker import WorkerHost

__all__ = ["JobRunner", "friendly_message", "release_host", "shared_host"]

log = logging.getLogger(__name__)


def friendly_message(err: BaseException) -> str:
    """What to tell the user about ``err`` (our errors carry their own wording)."""
    if isinstance(err, CellsparseError):
        return str(err)
    if isinstance(err, MemoryError):
        return "Not enough memory for this image; try a smaller image or the vit_t model."
    return f"Unexpected error ({type(err).__name__}: {err}). Details are in the log."


_HOST: list[WorkerHost] = []  # the napari session's one model worker (a process resource)
_CLIENTS: set[int] = set()  # ids of the job runners using it


def shared_host() -> WorkerHost:
    """The model worker host of this napari session (made on first use; its process starts
    with the first job). It is stopped when the application quits or its last user leaves."""
    if not _HOST:
        _HOST.append(WorkerHost())
        app = QApplication.instance()
        if app is not None:
            app.aboutToQuit.connect(_stop_host)
        atexit.register(_stop_host)
    return _HOST[0]


def release_host(client: int) -> None:
    """``client`` no longer needs the worker; the last one to leave stops it."""
    _CLIENTS.discard(client)
    if not _CLIENTS and _HOST:
        _stop_host()


def _stop_host() -> None:
    if _HOST:
        _HOST[0].stop()


class JobRunner:
    """Runs one job at a time for a widget; ``synchronous=True`` runs in the caller's thread."""

    def __init__(
        self,
        busy_widgets: Sequence[QWidget] = (),
        cancel_button: QWidget | None = None,
        status: Callable[[str], None] | None = None,
    ) -> None:
        self.busy_widgets = list(busy_widgets)
        self.cancel_button = cancel_button
        self.status = status or (lambda _msg: None)
        self.synchronous = False
        self.worker: Any = None
        self.closed = False  # the widget is gone: results and progress are dropped
        self._remote = False
        self._bar: Any = None
        self._cancel_event: threading.Event | None = None
        self._on_event: Callable[[Progress], None] | None = None
        self._pending: list[tuple[Callable[..., None], tuple]] = []  # job signals to handle
        self._handling = False
        self._warm_cancel = threading.Event()  # set when the widget goes
        self.warmed: list[Any] = []  # what the background loads returned (or their errors)
        if cancel_button is not None:
            cancel_button.setEnabled(False)
            cancel_button.clicked.connect(self.cancel)

    @property
    def busy(self) -> bool:
        return self.worker is not None

    def start(
        self,
        job: Callable[[], Generator[Progress, None, Any]],
        on_done: Callable[[Any], None],
        description: str,
        cancel: threading.Event | None = None,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> None:
        """Run ``job()``; call ``on_done(result)`` on the main thread when it finishes.

        ``on_done`` runs once the runner is free again, so it may start the next job.

        With ``cancel``, Cancel sets that event instead of quitting the worker: the job
        decides how to stop and its result still reaches ``on_done``. ``on_progress`` also
        receives every progress event, on the main thread.
        """
        if self.busy:
            show_info("Still working on the previous step; wait for it or press Cancel.")
            return
        self._cancel_event = cancel
        self._on_event = on_progress
        # Busy from here on: napari's progress bar processes events while it is made, and a
        # second click then must not start a second job.
        self.worker = "starting"
        self._set_busy(True, description)
        if self.synchronous:
            self._run_here(job, on_done)
            return
        from napari.qt.threading import create_worker

        returned: list[Any] = []
        work = job()

        def run() -> Generator[Progress, None, Any]:
            return (yield from work)

        def finished() -> None:
            # A quit worker (napari quits them all when it closes) leaves the job suspended
            # at a yield: close it, so its clean-up runs now (a model job then releases
            # the worker process), not whenever it is garbage-collected.
            work.close()
            self._finish(returned, on_done)

        # Connected at creation: a worker made without an "errored" handler re-raises the
        # error on the main thread (a second report, a traceback, or an abort).
        self.worker = create_worker(
            run,
            _connect={
                "yielded": lambda event: self._in_order(self._on_progress, event),
                "returned": returned.append,
                "errored": lambda err: self._in_order(self._on_error, err),
                "aborted": lambda: self._in_order(self._on_abort),
                "finished": lambda: self._in_order(finished),
            },
        )

    def run_in_worker(
        self,
        job: str,
        kwargs: dict[str, Any],
        on_done: Callable[[Any], None],
        description: str,
        on_progress: Callable[[Progress], None] | None = None,
        updates: Callable[[], Any] | None = None,
    ) -> None:
        """Run the model worker's ``job`` (see :mod:`napari_cellsparse.worker.jobs`) with
        ``kwargs``; like :meth:`start`. Stop forwards the job's cancel event; a second Stop
        ends the worker process. ``updates()`` answers the job's pulls of new annotation (in the
        relay thread)."""
        if self.busy:
            show_info("Still working on the previous step; wait for it or press Cancel.")
            return
        host = shared_host()
        _CLIENTS.add(id(self))
        cancel = threading.Event()

        def relay() -> Generator[Progress, None, Any]:
            return (yield from host.run(job, kwargs, description, cancel, updates))

        self._remote = True
        self.start(relay, on_done, description, cancel=cancel, on_progress=on_progress)

    def warm_in_worker(
        self, job: str, kwargs: dict[str, Any], description: str
    ) -> threading.Thread | None:
        """Run the model worker's ``job`` in the background, with no progress bar and the
        buttons left as they are: loading a framework before the job that needs it. A job
        started meanwhile waits for it, saying so; a failure is only logged (the job that
        needs the framework reports it). None when synchronous (tests) or closed."""
        if self.synchronous or self.closed:
            return None
        host = shared_host()
        _CLIENTS.add(id(self))

        def work() -> None:
            try:
                self.warmed.append(run_sync(host.run(job, kwargs, description, self._warm_cancel)))
            except Exception as err:  # the job that needs the framework will say what
                self.warmed.append(err)
                log.info("%s in the model worker failed: %s", description, err)

        thread = threading.Thread(target=work, name="cellsparse-warm-worker", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """The widget goes away: stop its job (ending the worker if the job is running
        there) and leave the shared worker. Nothing touches the widget afterwards."""
        if self.closed:
            return
        self.closed = True
        self._warm_cancel.set()  # a background load still waiting never starts
        if self._cancel_event is not None:
            self._cancel_event.set()  # a job still waiting for the worker never starts
            if self._remote and shared_host().runs(self._cancel_event):
                shared_host().kill()
        release_host(id(self))

    def _finish(self, returned: list[Any], on_done: Callable[[Any], None]) -> None:
        self._set_busy(False)
        if returned and not self.closed:
            try:
                on_done(returned[0])
            except Exception as err:  # showing a result: one message, never an abort
                if not isinstance(err, CellsparseError):
                    log.error("showing a job's result failed", exc_info=err)
                self.report(err)

    def cancel(self) -> None:
        """Ask the running job to stop at its next step."""
        if self.worker is None:
            return
        if self._cancel_event is not None:
            if self._remote and self._cancel_event.is_set():
                if shared_host().runs(self._cancel_event):  # not another widget's job
                    self.status("Ending the model worker...")
                    shared_host().kill()
                return
            self.status("Stopping at the next step...")
            self._cancel_event.set()
            return
        self.status("Cancelling...")
        self.worker.quit()

    def _run_here(
        self,
        job: Callable[[], Generator[Progress, None, Any]],
        on_done: Callable[[Any], None],
    ) -> None:
        self.worker = "synchronous"
        returned: list[Any] = []
        try:
            gen = job()
            while True:
                self._on_progress(next(gen))
        except StopIteration as stop:
            returned.append(stop.value)
        except Exception as err:
            self._on_error(err)
        self._finish(returned, on_done)

    def _in_order(self, handler: Callable[..., None], *args: Any) -> None:
        """Run a job signal's ``handler`` after those that came before it. napari's progress
        bar processes Qt events while it updates, so the next signals arrive inside the
        handler of the last one: run there, a fast job nested one call per progress event
        (the stack overflowed) and its end could overtake its last progress events. Signals
        that arrive meanwhile wait for the next turn of the event loop."""
        self._pending.append((handler, args))
        self._drain()

    def _drain(self) -> None:
        if self._handling or not self._pending:
            return
        self._handling = True
        batch, self._pending = self._pending, []
        try:
            for handler, args in batch:
                try:
                    handler(*args)
                except Exception as err:  # one failing handler must not lose the job's end
                    log.error("a job signal's handler failed", exc_info=err)
        finally:
            self._handling = False
        if self._pending:
            QTimer.singleShot(0, self._drain)

    def _on_abort(self) -> None:
        if not self.closed:
            self.status("Cancelled.")

    def _on_progress(self, event: Progress) -> None:
        if self.closed:
            return
        if self._on_event is not None:
            self._on_event(event)
        # napari's Qt progress bar processes events while it updates, so the job may finish
        # (and ``self._bar`` be closed) in the middle of this method: keep a local reference.
        bar = self._bar
        if bar is None:
            return
        if event.total and bar.total != event.total:
            bar.total = event.total
        if self._bar is not bar:
            return
        bar.n = min(event.step, event.total or event.step)
        if event.message:
            bar.set_description(event.message)
        if self._bar is bar:
            bar.refresh()

    def report(self, err: BaseException) -> None:
        """Tell the user what went wrong: the widget's status line and a napari notification."""
        message = friendly_message(err)
        if not self.closed:
            self.status(message)
        show_error(message)

    def _on_error(self, err: BaseException) -> None:
        if isinstance(err, CancelledError):
            if not self.closed:
                self.status(str(err) or "Cancelled.")
            return
        if not isinstance(err, CellsparseError):
            log.error("unexpected error in a background job", exc_info=err)
        self.report(err)

    def _set_busy(self, busy: bool, description: str = "") -> None:
        if not self.closed:
            for widget in self.busy_widgets:
                widget.setEnabled(not busy)
            if self.cancel_button is not None:
                self.cancel_button.setEnabled(busy)
        if busy:
            self._bar = napari_progress(total=0, desc=description)
            self.status(f"{description}...")
        else:
            if self._bar is not None:
                self._bar.close()
            self._bar = None
            self.worker = None
            self._remote = False
            self._cancel_event = None
            self._on_event = None
