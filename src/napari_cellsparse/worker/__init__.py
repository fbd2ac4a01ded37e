"""The model worker: the widgets' training, prediction and counting run in a process of
their own (:mod:`.host` on the napari side, :mod:`.child` in the worker, :mod:`.jobs` the
work, :mod:`.transport` for large arrays). Qt-free."""

from .host import WorkerHost, worker_threads

__all__ = ["WorkerHost", "worker_threads"]
