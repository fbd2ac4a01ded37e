"""The model worker process, without Qt: jobs, large arrays, errors, cancel, crashes, exits.

Every test drives a real ``python -m napari_cellsparse.worker`` process. Tiny U-Net settings
keep each training to a second or two; crashes are real signals sent to real processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_cellsparse.core.errors import BadInputError, CancelledError, WorkerCrashedError
from napari_cellsparse.core.progress import Progress, run_sync
from napari_cellsparse.worker import WorkerHost

pytest.importorskip("torch")

TINY = {"base_filters": 8, "depth": 2, "patch_size": 64, "batch_size": 2}


@pytest.fixture
def host(tmp_path):
    worker = WorkerHost(threads=1, log_path=tmp_path / "worker.log")
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def sample():
    from napari_cellsparse.samples.generated import make_nuclei
    from napari_cellsparse.samples.sparse_annotation import sparse_from_truth

    image, truth = make_nuclei((96, 96), n_objects=6, radius=(6.0, 10.0), seed=1)
    return image, sparse_from_truth(image, truth, k=2, band=6)


def _train_kwargs(sample, steps: int, name: str = "tiny", **extra):
    image, annotation = sample
    return {
        "backend": "unet",
        "images": [image],
        "labels": [annotation],
        "name": name,
        "steps": steps,
        "reset": False,
        "device": "cpu",
        "preview": image,
        "preview_every": 0,
        "settings": dict(TINY),
        **extra,
    }


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its parent) is not alive
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        return state != "Z"
    except OSError:
        return True


def test_large_arrays_round_trip_through_files_that_are_then_removed(host):
    image = np.random.default_rng(0).random((2048, 2048), dtype=np.float32)
    nested = {"a": [image, np.arange(5)], "b": (image[:10, :10], "text")}
    back = run_sync(host.run("echo", {"value": nested}, "echo"))
    np.testing.assert_array_equal(back["a"][0], image)
    np.testing.assert_array_equal(back["a"][1], np.arange(5))
    assert back["b"][1] == "text" and isinstance(back["b"], tuple)
    assert back["a"][0].flags.writeable and not isinstance(back["a"][0], np.memmap)
    scratch = host._scratch
    assert scratch is not None and scratch.is_dir()
    assert list(scratch.iterdir()) == []  # every array file was removed


def test_a_failed_start_leaves_no_files(tmp_path, monkeypatch):
    import gc

    from napari_cellsparse.worker import transport

    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log folder should be")
    host = WorkerHost(threads=1, log_path=blocker / "logs" / "worker.log")
    base = transport.SHM if transport.SHM.is_dir() else Path(tempfile.gettempdir())
    before = set(base.glob("cellsparse-worker-*"))
    with pytest.raises(OSError):
        run_sync(host.run("echo", {"value": 1}, "echo"))
    assert set(base.glob("cellsparse-worker-*")) == before
    assert not host.alive and host._scratch is None
    gc.collect()  # nothing left to clean up later (the listener's socket went with its folder)
    assert [u.exc_value for u in unraisable] == []


def test_engine_errors_cross_unchanged_and_the_worker_goes_on(host, sample):
    with pytest.raises(BadInputError, match="No model called 'nope'"):
        run_sync(
            host.run(
                "predict",
                {
                    "name": "nope",
                    "device": "cpu",
                    "image": sample[0],
                    "rgb": False,
                    "diameter": None,
                    "min_area": 0,
                },
                "predict",
            )
        )
    pid = host.pid
    assert run_sync(host.run("echo", {"value": 3}, "echo")) == 3
    assert host.pid == pid  # the same worker served both


def test_training_progress_cancel_and_the_saved_model(host, sample):
    from napari_cellsparse.training import list_models

    cancel = threading.Event()
    events: list[Progress] = []

    def on_event(event: Progress) -> None:
        events.append(event)
        if event.info.get("loss") is not None and event.step == 3:
            cancel.set()

    result = run_sync(host.run("train", _train_kwargs(sample, 200), "training", cancel), on_event)
    steps = [e.step for e in events if e.info.get("loss") is not None]
    assert steps == list(range(1, len(steps) + 1)) and 3 <= len(steps) < 200
    assert result["info"]["stopped_early"] is True
    assert list_models()[0]["steps"] == len(steps)


def test_jobs_queue_one_at_a_time(host, sample):
    cancel, started = threading.Event(), threading.Event()
    results: list[dict] = []

    def first() -> None:
        def on_event(event: Progress) -> None:
            if event.info.get("loss") is not None:
                started.set()

        results.append(
            run_sync(host.run("train", _train_kwargs(sample, 500), "first job", cancel), on_event)
        )

    holder = threading.Thread(target=first)
    holder.start()
    assert started.wait(60)
    second = host.run("echo", {"value": 2}, "second job")
    assert next(second).message == "Waiting for 'first job' to finish"
    cancel.set()  # the first job stops (and saves); then the second runs
    assert run_sync(second) == 2
    holder.join(60)
    assert results and results[0]["info"]["stopped_early"] is True


def test_killed_worker_is_a_message_and_the_next_job_starts_a_fresh_one(host, sample):
    from napari_cellsparse.training import list_models, load_model

    run_sync(host.run("train", _train_kwargs(sample, 3), "first training"))
    before = load_model("tiny").predict(sample[0])
    pid, scratch = host.pid, host._scratch
    assert _alive(pid)

    def kill_at_step_two(event: Progress) -> None:
        if event.step == 2 and event.info.get("loss") is not None:
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(WorkerCrashedError) as caught:
        run_sync(
            host.run("train", _train_kwargs(sample, 500), "Training unet 'tiny'"), kill_at_step_two
        )
    message = str(caught.value)
    assert "Training unet 'tiny'" in message and "SIGKILL" in message
    assert "last saved model version is intact" in message
    assert str(host.log_path) in message  # the log's last lines are quoted
    assert not _alive(pid) and not scratch.exists()  # nothing left behind
    assert list_models()[0]["steps"] == 3
    np.testing.assert_array_equal(load_model("tiny").predict(sample[0]), before)
    assert run_sync(host.run("echo", {"value": 1}, "echo")) == 1
    assert host.pid != pid


def test_kill_from_the_host_is_a_stop_not_a_crash(host, sample):
    started = threading.Event()

    def on_event(event: Progress) -> None:
        if event.info.get("loss") is not None:
            started.set()
            host.kill()

    with pytest.raises(CancelledError, match="was ended"):
        run_sync(host.run("train", _train_kwargs(sample, 500), "training"), on_event)
    assert started.is_set() and not host.alive


def test_worker_exits_when_the_napari_side_is_killed(tmp_path):
    script = tmp_path / "host.py"
    script.write_text(
        textwrap.dedent(f"""
        import os, signal, sys
        from napari_cellsparse.core.progress import run_sync
        from napari_cellsparse.worker import WorkerHost
        host = WorkerHost(threads=1, log_path={str(tmp_path / "w.log")!r})
        run_sync(host.run("echo", {{"value": 1}}, "echo"))
        print(host.pid, host._scratch, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    pid_text, scratch = done.stdout.split()
    pid = int(pid_text)
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
    assert not Path(scratch).exists()


def test_an_unguarded_script_is_not_run_again_by_the_worker(tmp_path):
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(f"""
        print("SCRIPT RAN", flush=True)
        from napari_cellsparse.core.progress import run_sync
        from napari_cellsparse.worker import WorkerHost
        host = WorkerHost(threads=1, log_path={str(tmp_path / "w.log")!r})
        print(run_sync(host.run("devices", {{}}, "devices")), flush=True)
        host.stop()
    """)
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("SCRIPT RAN") == 1
    assert "cpu" in done.stdout
    assert "SCRIPT RAN" not in (tmp_path / "w.log").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_the_worker_never_loads_qt_or_opengl(host, sample):
    run_sync(host.run("train", _train_kwargs(sample, 2), "training"))
    maps = Path(f"/proc/{host.pid}/maps").read_text()
    loaded = {line.split()[-1] for line in maps.splitlines() if "/" in line}
    assert not [p for p in loaded if "Qt" in p or "libGL" in p or "vispy" in p]
    assert any("torch" in p for p in loaded)  # it did the work


def test_errors_of_other_libraries_never_import_them_here():
    from napari_cellsparse.core.errors import JobFailedError
    from napari_cellsparse.worker.host import _rebuild

    err = _rebuild(
        "InvalidArgumentError", "tensorflow.python.framework.errors_impl", "bad", Path("w.log")
    )
    assert isinstance(err, JobFailedError) and "InvalidArgumentError: bad" in str(err)
    assert "tensorflow" not in sys.modules
    same = _rebuild("BadInputError", "napari_cellsparse.core.errors", "no cells", Path("w.log"))
    assert isinstance(same, BadInputError) and str(same) == "no cells"
    assert isinstance(_rebuild("MemoryError", "builtins", "", Path("w.log")), MemoryError)


def test_where_next_returns_the_map_and_places_through_the_worker(host, sample):
    from _generated import clean_and_ambiguous

    run_sync(host.run("train", _train_kwargs(sample, 30, name="unsure"), "training"))
    image = np.concatenate([clean_and_ambiguous(3)] * 2)  # its float32 map travels as a file
    painted = np.zeros(image.shape, np.uint16)
    painted[:, 200:] = 1
    kwargs = {"name": "unsure", "device": "cpu", "image": image, "rgb": False}
    result = run_sync(
        host.run("where_next", {**kwargs, "diameter": 16.0, "annotation": painted}, "where")
    )
    assert result.map.shape == image.shape and result.map.dtype == np.float32
    assert result.map.max() <= 1.0 and not result.map[:, 200:].any()
    assert result.map[:, :200].any() and result.diameter == 16.0
    scores = [p.score for p in result.places]
    assert scores == sorted(scores, reverse=True) and all(p.x < 200 for p in result.places)


def test_prepare_loads_a_backend_once_and_names_unknown_ones(host):
    first = run_sync(host.run("prepare", {"backend": "unet"}, "loading"))
    again = run_sync(host.run("prepare", {"backend": "unet"}, "loading"))
    assert first["backend"] == again["backend"] == "unet"
    assert again["seconds"] <= first["seconds"]
    with pytest.raises(BadInputError, match="stardust"):
        run_sync(host.run("prepare", {"backend": "stardust"}, "loading"))


def test_export_job_writes_a_stardist_package_in_the_worker(host, sample, tmp_path):
    """StarDist's export (TensorFlow) runs in the worker: the package comes back valid, a bad
    output path is a BadInputError with nothing written, and TensorFlow never loads here."""
    import importlib.util
    import zipfile

    if (
        importlib.util.find_spec("stardist") is None
        or importlib.util.find_spec("tensorflow") is None
    ):
        pytest.skip("StarDist / TensorFlow are not installed")
    pytest.importorskip("bioimageio.spec")
    from bioimageio.spec import load_model_description

    small = {"n_rays": 8, "unet_n_depth": 2, "unet_n_filter_base": 8, "net_conv_after_unet": 16}
    kwargs = _train_kwargs(sample, 5, name="tiny-sd", backend="stardist")
    kwargs["settings"] = {**small, "patch_size": 64, "batch_size": 2}
    run_sync(host.run("train", kwargs, "training"))
    out = tmp_path / "sd.zip"
    job = {"name": "tiny-sd", "out": str(out), "image": sample[0]}
    assert run_sync(host.run("export_bioimageio", job, "export")) == str(out)
    descr = load_model_description(out, perform_io_checks=False)
    assert descr.weights.keras_v3 is not None
    assert descr.weights.tensorflow_saved_model_bundle is not None
    assert descr.config.model_extra["napari_cellsparse"]["backend"] == "stardist"
    assert {"stardist.keras", "tf_saved_model.zip"} <= set(zipfile.ZipFile(out).namelist())
    with pytest.raises(BadInputError, match=r"\.zip"):
        run_sync(host.run("export_bioimageio", {**job, "out": str(tmp_path / "x.tar")}, "export"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".zip", ".tar")) == ["sd.zip"]
    assert "tensorflow" not in sys.modules
