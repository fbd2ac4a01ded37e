"""The model worker process: runs the widgets' jobs, one at a time, away from the viewer.

Started by :class:`~napari_cellsparse.worker.host.WorkerHost` as ``python -m
napari_cellsparse.worker`` (never by re-running the user's main script), it connects back to
the host, then serves jobs from :mod:`napari_cellsparse.worker.jobs` until told to stop. A
reader thread takes the host's messages while a job runs (cancel, annotation updates, stop)
and ends the process as soon as the host's end of the connection closes, so a killed napari
never leaves a worker behind. Qt and napari are never imported here.
"""

from __future__ import annotations

import argparse
import logging
import os
import queue
import sys
import threading
import traceback
from multiprocessing.connection import Client, Connection
from pathlib import Path
from typing import Any

from ..core.paths import HOME_ENV
from ..core.progress import Progress
from .jobs import JOBS, JobContext
from .transport import pack, remove_scratch, unpack

__all__ = ["main"]

log = logging.getLogger(__name__)
PULL_TIMEOUT_S = 30.0


class Worker:
    """One connection to the host: a reader thread and the job loop on the main thread."""

    def __init__(self, conn: Connection, scratch: Path) -> None:
        self.conn = conn
        self.scratch = scratch
        self.jobs: queue.Queue[tuple | None] = queue.Queue()
        self.replies: queue.Queue[tuple] = queue.Queue()
        self.send_lock = threading.Lock()
        self.current: int | None = None
        self.cancel = threading.Event()
        self.cache: dict[str, Any] = {}  # loaded models, kept between jobs

    def send(self, message: tuple) -> None:
        with self.send_lock:
            self.conn.send(message)

    def read(self) -> None:
        """Reader thread: route the host's messages; leave at once when the host is gone."""
        while True:
            try:
                message = self.conn.recv()
            except (EOFError, OSError):
                remove_scratch(self.scratch)
                os._exit(0)
            kind = message[0]
            if kind == "job":
                self.jobs.put(message)
            elif kind == "cancel" and message[1] == self.current:
                self.cancel.set()
            elif kind == "update":
                self.replies.put(message)
            elif kind == "stop":
                self.jobs.put(None)
                return

    def pull(self, job_id: int) -> Any:
        """Ask the host for the annotation changed since the last pull (None: unchanged)."""
        self.send(("pull", job_id))
        try:
            _, for_job, payload = self.replies.get(timeout=PULL_TIMEOUT_S)
        except queue.Empty:
            return None
        return unpack(payload) if for_job == job_id else None

    def serve(self) -> None:
        threading.Thread(target=self.read, name="cellsparse-host-reader", daemon=True).start()
        self.send(("ready", os.getpid()))
        while (job := self.jobs.get()) is not None:
            self.run(*job[1:])

    def run(self, job_id: int, name: str, kwargs: dict[str, Any], env: dict[str, Any]) -> None:
        """Run one job; every outcome, including failure, becomes one message to the host."""
        self.current = job_id
        self.cancel = threading.Event()
        home = env.get("home")
        if home:
            os.environ[HOME_ENV] = str(home)
        else:
            os.environ.pop(HOME_ENV, None)
        ctx = JobContext(self.cancel, lambda: self.pull(job_id), self.cache)
        try:
            work = JOBS[name](ctx, **unpack(kwargs))
            while True:
                event: Progress = next(work)
                info = pack(event.info, self.scratch)
                self.send(("progress", job_id, event.step, event.total, event.message, info))
        except StopIteration as stop:
            self.send(("done", job_id, pack(stop.value, self.scratch)))
        except Exception as err:  # every failure goes back to the host as a message
            text = "".join(traceback.format_exception(err))
            print(f"job {name} failed:\n{text}", file=sys.stderr, flush=True)
            module = type(err).__module__
            self.send(("error", job_id, type(err).__name__, module, str(err)))
        finally:
            self.current = None


def main(argv: list[str] | None = None) -> None:
    """Entry point: ``--address`` of the host's listener, ``--scratch`` folder; the
    connection's key comes on standard input (never on the command line)."""
    parser = argparse.ArgumentParser(prog="python -m napari_cellsparse.worker")
    parser.add_argument("--address", required=True)
    parser.add_argument("--scratch", required=True)
    args = parser.parse_args(argv)
    authkey = bytes.fromhex(sys.stdin.readline().strip())
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    conn = Client(args.address, authkey=authkey)
    Worker(conn, Path(args.scratch)).serve()
