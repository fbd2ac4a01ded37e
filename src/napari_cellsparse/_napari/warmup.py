"""napari's own just-in-time code, compiled off the event loop once per session.

napari compiles its Shapes layer's outline code with numba the first time a Shapes layer is
made, on the main thread: 9 s on a 2-core CPU the first time after an install (numba caches
it on disk, then loading it takes 0.5-0.7 s). That froze the viewer at a person's first
automask or first box-prompt layer. The plugin's first dock widget starts the same warm-up
in a daemon thread: the event loop then waited at most 0.3 s at a time while it compiled
(LLVM's work runs outside Python's lock), and napari's own call later finds the work done.
"""

from __future__ import annotations

import logging
import threading

__all__ = ["warm_napari"]

log = logging.getLogger(__name__)
_THREADS: list[threading.Thread] = []  # the session's one warm-up thread, once started
_LOCK = threading.Lock()


def _warm_shapes() -> None:
    try:  # napari's private warm-up: gone in a later napari, napari warms on the main thread
        from napari.layers.shapes._accelerated_triangulate_dispatch import warmup_numba_cache
    except ImportError:
        return
    try:
        warmup_numba_cache()
    except Exception as err:  # a failed warm-up leaves napari's own, at first use
        log.warning("warming napari's Shapes code failed: %s", err)


def warm_napari() -> threading.Thread:
    """Start compiling napari's Shapes code in a daemon thread (once per process) and
    return that thread."""
    with _LOCK:
        if not _THREADS:
            thread = threading.Thread(target=_warm_shapes, name="cellsparse-warm-napari")
            thread.daemon = True
            thread.start()
            _THREADS.append(thread)
        return _THREADS[0]
