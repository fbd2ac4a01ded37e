"""The napari side of the model worker: start it, hand it jobs, relay progress, survive it.

One :class:`WorkerHost` owns at most one worker process, started on first need as ``python
-m napari_cellsparse.worker`` (a fresh interpreter: it never re-runs the user's script, and
holds no Qt, OpenGL or napari — TensorFlow and Mesa's OpenGL crash in one process) and reused
for every later job. :meth:`WorkerHost.run` is a progress generator, so a widget runs it in a
thread worker like any engine job: jobs queue (one at a time), the widget's cancel event is
forwarded as the job's cancel, annotation updates are answered when the job pulls them, and
a worker that dies (crash, out of memory, ``kill -9``) becomes a
:class:`~napari_cellsparse.core.errors.WorkerCrashedError` naming the job and quoting the worker's
log; the next job starts a fresh worker. Standard library only (``subprocess`` to start it,
``multiprocessing.connection`` to talk to it): ``multiprocessing``'s own ``spawn`` would
re-import the user's main module in the child.
"""

from __future__ import annotations

import logging
import os
import secrets
import site
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Generator
from multiprocessing.connection import Connection, Listener
from pathlib import Path
from typing import IO, Any

from ..core.errors import CancelledError, CellsparseError, JobFailedError, WorkerCrashedError
from ..core.paths import data_home
from ..core.progress import Progress
from .transport import make_scratch, pack, remove_scratch, unpack

__all__ = ["WorkerHost", "worker_threads"]

log = logging.getLogger(__name__)
START_TIMEOUT_S = 60.0
POLL_S = 0.05
LOG_LINES = 12
LOG_MAX_BYTES = 2_000_000


def worker_threads() -> int:
    """Threads for the worker's numerical libraries: all cores but one, kept for the viewer."""
    return max(1, (os.cpu_count() or 2) - 1)


def _child_env(threads: int) -> dict[str, str]:
    """The worker's environment: thread counts and a passive OpenMP wait policy (idle
    threads sleep instead of spinning on the viewer's core); Qt kept away."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[name] = str(threads)
    env["TF_NUM_INTRAOP_THREADS"] = str(threads)
    env["TF_NUM_INTEROP_THREADS"] = "1"
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    env["KMP_BLOCKTIME"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("QT_QPA_PLATFORM", None)
    # The worker must import this very package, also when it was put on sys.path by hand
    # (site-packages are found anyway, and must not go ahead of the standard library).
    root = Path(__file__).resolve().parents[2]
    installed = {Path(p).resolve() for p in (*site.getsitepackages(), site.getusersitepackages())}
    if root not in installed:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    return env


class WorkerHost:
    """One model worker process for one napari session; jobs run one at a time."""

    def __init__(self, threads: int | None = None, log_path: str | Path | None = None) -> None:
        self.threads = threads or worker_threads()
        self._log_path = Path(log_path) if log_path is not None else None
        self.process: subprocess.Popen[bytes] | None = None
        self._conn: Connection | None = None
        self._scratch: Path | None = None
        self._log: IO[bytes] | None = None
        self._lock = threading.Lock()  # held by the job that owns the worker
        self._send_lock = threading.Lock()
        self._job_id = 0
        self.current: str | None = None  # description of the running job
        self._current_cancel: threading.Event | None = None  # and its cancel event
        self._killed = False

    # -- life ------------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        if self._log_path is None:
            self._log_path = data_home() / "logs" / "worker.log"
        return self._log_path

    def _start(self) -> None:
        """Start a fresh worker and wait for it to connect (it imports nothing heavy); a
        start that fails leaves no process and no files behind."""
        self._close_connection()
        self._scratch = make_scratch()
        try:
            self._launch()
        except BaseException:
            if self.process is not None and self.process.poll() is None:
                self.process.kill()
            self._reap()
            raise
        log.info("model worker started (pid %s, %d threads)", self.pid, self.threads)

    def _launch(self) -> None:
        assert self._scratch is not None
        if sys.platform == "win32":
            address, family = rf"\\.\pipe\cellsparse-{secrets.token_hex(8)}", "AF_PIPE"
        else:
            address, family = str(self._scratch / "s"), "AF_UNIX"
        authkey = secrets.token_bytes(32)
        listener = Listener(address, family, authkey=authkey)
        try:  # closed on every path: its finalizer would unlink a socket in a removed folder
            self._spawn(address, authkey)
            accepted = self._accept(listener)
        finally:
            listener.close()
        if not accepted:
            raise WorkerCrashedError("The model worker process could not start." + self._log_tail())
        self._conn = accepted[0]
        kind, _pid = self._conn.recv()
        if kind != "ready":
            raise WorkerCrashedError(f"The model worker answered {kind!r} instead of 'ready'.")
        self._killed = False

    def _spawn(self, address: str, authkey: bytes) -> None:
        """Start the worker's process, its output appended to the worker log."""
        path = self.log_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > LOG_MAX_BYTES:
            path.unlink()
        self._log = open(path, "ab")  # noqa: SIM115 - kept open for the worker's life
        self._log.write(f"--- worker started {time.ctime()} ---\n".encode())
        self._log.flush()
        command = [sys.executable, "-m", "napari_cellsparse.worker"]
        command += ["--address", address, "--scratch", str(self._scratch)]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=_child_env(self.threads),
        )
        assert self.process.stdin is not None
        self.process.stdin.write(authkey.hex().encode() + b"\n")
        self.process.stdin.close()

    def _accept(self, listener: Listener) -> list[Connection]:
        """The worker's connection (one item), or none when it died or took too long."""
        accepted: list[Connection] = []
        thread = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        assert self.process is not None
        while thread.is_alive() and self.process.poll() is None and time.monotonic() < deadline:
            thread.join(POLL_S)
        return accepted

    def stop(self, timeout: float = 3.0) -> None:
        """End the worker: politely when idle, at once when a job runs; remove its files."""
        if self.alive and self.current is None and self._conn is not None:
            try:
                with self._send_lock:
                    self._conn.send(("stop",))
                self.process.wait(timeout)  # type: ignore[union-attr]
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()

    def kill(self) -> None:
        """End the worker now (a second Stop, the viewer closing); the running job reports
        that it was stopped."""
        if self.process is not None and self.process.poll() is None:
            self._killed = True
            self.process.kill()
        self._reap()

    def _reap(self) -> None:
        if self.process is not None:
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                log.warning("model worker %s did not exit", self.pid)
        self._close_connection()
        remove_scratch(self._scratch)
        self._scratch = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-LOG_LINES:]
        except OSError:
            return ""
        shown = "\n".join(lines)
        return f"\nLast lines of the worker's log ({self.log_path}):\n{shown}" if lines else ""

    # -- jobs ------------------------------------------------------------------------
    def _send(self, message: tuple) -> None:
        assert self._conn is not None
        with self._send_lock:
            self._conn.send(message)

    def run(
        self,
        job: str,
        kwargs: dict[str, Any],
        description: str,
        cancel: threading.Event | None = None,
        updates: Callable[[], Any] | None = None,
    ) -> Generator[Progress, None, Any]:
        """Run ``job`` in the worker: yields its progress, returns its result.

        Waits (saying so) while another job holds the worker. ``cancel`` is forwarded to the
        job; ``updates()`` answers the job's pulls for changed annotations (None: none).
        """
        queued = False
        while not self._lock.acquire(timeout=POLL_S):
            if cancel is not None and cancel.is_set():
                raise CancelledError("Cancelled before it started.")
            if not queued:
                queued = True
                yield Progress(0, 0, f"Waiting for '{self.current}' to finish")
        written: list[Path] = []
        finished = False
        try:
            self.current, self._current_cancel = description, cancel
            if not self.alive:
                yield Progress(0, 0, "Starting the model worker")
                self._start()
            assert self._scratch is not None
            self._job_id += 1
            job_id = self._job_id
            env = {"home": str(data_home())}
            self._send(("job", job_id, job, pack(kwargs, self._scratch, written), env))
            forwarded = False
            while True:
                if cancel is not None and cancel.is_set() and not forwarded:
                    forwarded = True
                    self._send(("cancel", job_id))
                message = self._receive(description)
                if message is None:
                    continue
                kind = message[0]
                if kind == "progress":
                    _, _, step, total, text, info = message
                    yield Progress(step, total, text, unpack(info, own=True))
                elif kind == "pull":
                    payload = updates() if updates is not None else None
                    self._send(("update", job_id, pack(payload, self._scratch, written)))
                elif kind == "done":
                    finished = True
                    return unpack(message[2], own=True)
                elif kind == "error":
                    finished = True
                    raise _rebuild(*message[2:], self.log_path)
        finally:
            if not finished and self.alive:
                self.kill()  # abandoned mid-job (the caller closed us): the state is unknown
            for path in written:
                path.unlink(missing_ok=True)
            self.current, self._current_cancel = None, None
            self._lock.release()

    def runs(self, cancel: threading.Event) -> bool:
        """Whether the job started with this ``cancel`` event holds the worker now (not
        waiting for another one)."""
        return cancel is not None and self._current_cancel is cancel

    def _receive(self, description: str) -> tuple | None:
        """The worker's next message, None after a quiet poll; a dead worker raises."""
        try:
            if self._conn is not None and self._conn.poll(POLL_S):
                return self._conn.recv()
            if self.alive:
                return None
        except (EOFError, OSError):
            pass
        code = self.process.wait(5) if self.process is not None else None
        killed = self._killed
        self._reap()
        if killed:
            raise CancelledError(
                f"Stopped: the worker running '{description}' was ended. The last saved model "
                "version is intact."
            )
        raise WorkerCrashedError(
            f"The model worker stopped unexpectedly during '{description}' "
            f"({_exit_reason(code)}). Your layers are untouched and the last saved model "
            "version is intact; the next job starts a fresh worker." + self._log_tail()
        )


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "it did not answer"
    if code < 0:
        import signal

        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit status {code}"


def _rebuild(kind: str, module: str, message: str, log_path: Path) -> BaseException:
    """The worker's error as the same engine error here (its message unchanged).

    The class is looked up only in this package's modules already loaded here: importing the
    module an error came from could bring TensorFlow into the napari process."""
    source = sys.modules.get(module) if module.split(".")[0] == __package__.split(".")[0] else None
    found = getattr(source, kind, None)
    if isinstance(found, type) and issubclass(found, CellsparseError):
        err = found.__new__(found)
        Exception.__init__(err, message)
        return err
    if kind == "MemoryError":
        return MemoryError(message)
    return JobFailedError(
        f"Unexpected error in the model worker ({kind}: {message}). Details are in {log_path}."
    )
