"""What it costs to send an image to the widgets' model worker and get an array back.

The worker's ``echo`` job returns what it was given, so one call is a whole round trip through
``napari_cellsparse.worker`` (arrays of 256 kB or more travel as ``.npy`` files on
``/dev/shm``). The reference in the same run: the same array sent to a ``multiprocessing``
child over a ``Pipe`` and back (pickled through the pipe, as the standard library does
without shared files). Median of ``--repeats`` calls after one warm-up. Prints JSON
(``--out`` also writes it). Run on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

SIZES = (1024, 2048, 4096)


def _pipe_echo(conn: Any) -> None:
    """The reference child: send back everything it receives until None."""
    while True:
        value = conn.recv()
        if value is None:
            return
        conn.send(value)


def _median_ms(call: Any, repeats: int) -> float:
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return round(statistics.median(times), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from napari_cellsparse.worker.host import WorkerHost

    host = WorkerHost()
    parent, child = mp.get_context("spawn").Pipe()
    reference = mp.get_context("spawn").Process(target=_pipe_echo, args=(child,), daemon=True)
    reference.start()

    def through_worker(array: np.ndarray) -> None:
        jobs = host.run("echo", {"value": array}, "echo")
        try:
            while True:
                next(jobs)
        except StopIteration as stop:
            assert stop.value.shape == array.shape

    def through_pipe(array: np.ndarray) -> None:
        parent.send(array)
        assert parent.recv().shape == array.shape

    rows = []
    try:
        for side in SIZES:
            for dtype in (np.float32, np.uint16):
                array = np.random.default_rng(0).random((side, side)).astype(dtype)
                rows.append(
                    {
                        "shape": [side, side],
                        "dtype": np.dtype(dtype).name,
                        "megabytes": round(array.nbytes / 2**20, 1),
                        "worker_round_trip_ms": _median_ms(
                            lambda a=array: through_worker(a), args.repeats
                        ),
                        "pipe_round_trip_ms": _median_ms(
                            lambda a=array: through_pipe(a), args.repeats
                        ),
                    }
                )
    finally:
        host.stop()
        parent.send(None)
        reference.join(10)
    result = {
        "benchmark": "worker_transport",
        "repeats": args.repeats,
        "reference": "multiprocessing Pipe (pickled) to a spawned child and back",
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "machine": platform.machine(),
        "rows": rows,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
