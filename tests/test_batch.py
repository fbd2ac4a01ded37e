"""Batch runs: folders and DeepCell workspaces, resume, bad files, Dask clusters, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_cellsparse.cli import main
from napari_cellsparse.core.errors import BadInputError
from napari_cellsparse.core.paths import HOME_ENV
from napari_cellsparse.core.progress import run_sync
from napari_cellsparse.models.store import current_folder
from napari_cellsparse.samples.generated import make_nuclei
from napari_cellsparse.scale.batch import NO_DASK, BatchOptions, process_item, run_batch
from napari_cellsparse.scale.workspace import deepcell_items, folder_items


@pytest.fixture
def store(nuclei_model_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(HOME_ENV, str(nuclei_model_home))
    return nuclei_model_home / "models" / "nuclei"


def write_images(folder: Path, n: int, shape=(200, 180)) -> list[np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    truths = []
    for k in range(n):
        image, truth = make_nuclei(shape, n_objects=20, radius=(7.0, 9.0), seed=10 + k)
        tifffile.imwrite(folder / f"img{k}.tif", image)
        truths.append(truth)
    return truths


def test_folder_batch_writes_masks_tables_geojson_and_resumes(tmp_path: Path, store) -> None:
    from stardist.matching import matching

    truths = write_images(tmp_path / "in", 2)
    items = folder_items(tmp_path / "in", tmp_path / "out")
    summary = run_sync(run_batch(items, "nuclei", BatchOptions(block=96), scheduler=NO_DASK))
    assert [r.status for r in summary.results] == ["done", "done"]
    for item, truth, result in zip(items, truths, summary.results, strict=True):
        labels = tifffile.imread(item.labels)
        assert labels.dtype == np.int32 and labels.max() == result.objects
        assert matching(truth, labels, thresh=0.5).f1 >= 0.85
        table = pd.read_csv(item.table)
        assert len(table) == result.objects
        assert sorted(table["Object ID"]) == list(range(1, result.objects + 1))
        features = json.loads(item.geojson.read_text())["features"]
        assert sorted(f["properties"]["label_id"] for f in features) == list(
            range(1, result.objects + 1)
        )
    leftovers = [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    # resume: the first image's mask goes missing; only that image runs again
    mtime = items[1].labels.stat().st_mtime_ns
    items[0].labels.unlink()
    again = run_sync(run_batch(items, "nuclei", BatchOptions(block=96), scheduler=NO_DASK))
    assert [r.status for r in again.results] == ["done", "skipped"]
    assert items[1].labels.stat().st_mtime_ns == mtime


def test_bad_files_are_reported_and_the_rest_finishes(tmp_path: Path, store) -> None:
    write_images(tmp_path / "in", 2)
    (tmp_path / "in" / "notes.txt").write_text("not an image")
    (tmp_path / "in" / "broken.tif").write_bytes(b"II*\x00 truncated")
    tifffile.imwrite(tmp_path / "in" / "rgb.tif", np.zeros((64, 64, 3), np.uint8))
    items = folder_items(tmp_path / "in", tmp_path / "out")
    summary = run_sync(run_batch(items, "nuclei", scheduler=NO_DASK))
    status = {Path(r.image).name: (r.status, r.error or "") for r in summary.results}
    assert status["img0.tif"][0] == status["img1.tif"][0] == "done"
    assert status["broken.tif"][0] == "failed" and "Could not read" in status["broken.tif"][1]
    assert status["notes.txt"][0] == "failed"
    assert status["rgb.tif"][0] == "failed" and "1-channel" in status["rgb.tif"][1]
    assert not (tmp_path / "out" / "broken_labels.tif").exists()
    report = summary.write(tmp_path / "out" / "summary.json")
    assert json.loads(report.read_text())["failed"] == 3


def test_a_missing_model_is_refused_before_any_work(tmp_path: Path, store) -> None:
    write_images(tmp_path / "in", 1)
    with pytest.raises(BadInputError, match="no-such-model"):
        run_sync(run_batch(folder_items(tmp_path / "in", tmp_path / "o"), "no-such-model"))


def test_deepcell_workspace_pairs_nucleus_and_whole_cell_masks(tmp_path: Path, store) -> None:
    ws = tmp_path / "ws"
    image, _ = make_nuclei((160, 150), n_objects=15, radius=(7.0, 9.0), seed=3)
    (ws / "OMETIFF").mkdir(parents=True)
    tifffile.imwrite(
        ws / "OMETIFF" / "sample.ome.tif",
        image,
        ome=True,
        metadata={"axes": "YX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": "µm"},
    )
    tifffile.imwrite(ws / "OMETIFF" / "other.ome.tif", image)
    [item] = deepcell_items(ws, "nucleus", pattern="sample*")
    assert item.labels == ws / "SEGMASK" / "sample_NucleusMask.tiff"
    assert item.table == ws / "REPORTS" / "sample_QUANT.tsv"
    result = process_item(item, str(store), BatchOptions(block=80))
    assert result.status == "done", result.error
    nuclei = tifffile.imread(item.labels)
    single = pd.read_csv(item.table, sep="\t")
    assert len(single) == nuclei.max() and "Centroid X µm" in single.columns
    # a whole-cell mask (nuclei grown by 3 px) from "another model": the table pairs them
    from skimage.segmentation import expand_labels

    tifffile.imwrite(ws / "SEGMASK" / "sample_WholeCellMask.tiff", expand_labels(nuclei, 3))
    item.table.unlink()
    [cells_item] = deepcell_items(ws, "whole-cell", pattern="sample*")
    assert cells_item.nuclei == item.labels
    shutil.copy(ws / "SEGMASK" / "sample_WholeCellMask.tiff", tmp_path / "cells.tiff")
    result = process_item(cells_item, str(store), BatchOptions(block=80))
    assert result.status == "done", result.error
    paired = pd.read_csv(cells_item.table, sep="\t")
    assert {c.split(":")[0] for c in paired.columns if ":" in c} >= {"Nucleus", "Cytoplasm", "Cell"}


def test_local_dask_cluster_gives_the_same_masks_as_the_plain_loop(tmp_path: Path, store) -> None:
    write_images(tmp_path / "in", 3)
    loop = folder_items(tmp_path / "in", tmp_path / "loop", geojson=False)
    dask = folder_items(tmp_path / "in", tmp_path / "dask", geojson=False)
    run_sync(run_batch(loop, "nuclei", scheduler=NO_DASK))
    events = []
    summary = run_sync(run_batch(dask, "nuclei", workers=2), events.append)
    assert summary.scheduler.startswith("LocalCluster") and len(summary.of("done")) == 3
    assert events[-1].step == events[-1].total == 3
    for a, b in zip(loop, dask, strict=True):
        np.testing.assert_array_equal(tifffile.imread(a.labels), tifffile.imread(b.labels))


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_cli_batch_against_a_separately_started_scheduler_and_worker(
    tmp_path: Path, store, capsys
) -> None:
    write_images(tmp_path / "in", 2)
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, HOME_ENV: os.environ[HOME_ENV]}
    scheduler_file = tmp_path / "scheduler.json"
    procs = [
        _start(
            [
                str(bin_dir / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
            env,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        procs.append(
            _start(
                [str(bin_dir / "dask"), "worker", address, "--nthreads", "1", "--no-dashboard"],
                env,
            )
        )
        code = main(
            [
                "batch",
                "--model",
                "nuclei",
                "--input",
                str(tmp_path / "in"),
                "--out",
                str(tmp_path / "out"),
                "--scheduler",
                address,
                "--block",
                "96",
            ]
        )
        out = capsys.readouterr()
        assert code == 0, out.err
        assert "2 done, 0 skipped, 0 failed" in out.out
        assert (tmp_path / "out" / "img1_labels.tif").exists()
        summary = json.loads((tmp_path / "out" / "batch_summary.json").read_text())
        assert summary["scheduler"] == address
        # again: everything is skipped
        assert (
            main(
                [
                    "batch",
                    "--model",
                    "nuclei",
                    "--input",
                    str(tmp_path / "in"),
                    "--out",
                    str(tmp_path / "out"),
                    "--scheduler",
                    address,
                ]
            )
            == 0
        )
        assert "0 done, 2 skipped, 0 failed" in capsys.readouterr().out
    finally:
        for proc in procs[::-1]:
            proc.terminate()
            proc.wait(timeout=30)


def test_cli_batch_reports_failures_with_exit_code(tmp_path: Path, store, capsys) -> None:
    write_images(tmp_path / "in", 1)
    (tmp_path / "in" / "broken.tif").write_bytes(b"II*\x00 truncated")
    code = main(
        [
            "batch",
            "--model",
            "nuclei",
            "--input",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "out"),
            "--scheduler",
            "none",
            "--layout",
            "folder",
        ]
    )
    out = capsys.readouterr()
    assert code == 1
    assert "1 done, 0 skipped, 1 failed" in out.out and "broken.tif" in out.out


def test_the_model_is_loaded_once_per_process_and_again_when_retrained(
    tmp_path: Path, store, monkeypatch
) -> None:
    import napari_cellsparse.training as training
    from napari_cellsparse.scale import batch

    monkeypatch.setattr(batch, "_MODELS", {})
    loads = []
    real = training.load_model
    monkeypatch.setattr(training, "load_model", lambda f: loads.append(f) or real(f))
    write_images(tmp_path / "in", 3, shape=(96, 96))
    items = folder_items(tmp_path / "in", tmp_path / "out", geojson=False)
    summary = run_sync(run_batch(items, "nuclei", scheduler=NO_DASK))
    assert len(summary.of("done")) == 3 and len(loads) == 1
    meta = current_folder(store) / "metadata.json"  # the current version's
    os.utime(meta, ns=(meta.stat().st_atime_ns, meta.stat().st_mtime_ns + 10**9))
    run_sync(run_batch(items, "nuclei", scheduler=NO_DASK, resume=False))
    assert len(loads) == 2


def test_cli_batch_on_a_deepcell_workspace(tmp_path: Path, store, capsys) -> None:
    ws = tmp_path / "ws"
    write_images(ws / "IMAGES", 2, shape=(128, 120))
    (ws / "IMAGES" / "img1.tif").rename(ws / "IMAGES" / "skip_me.tif")
    code = main(
        [
            "batch",
            "--model",
            "nuclei",
            "--layout",
            "deepcell",
            "--input",
            str(ws),
            "--input-dir",
            "IMAGES",
            "--mask-dir",
            "MASKS",
            "--report-dir",
            "TABLES",
            "--pattern",
            "img*",
            "--compartment",
            "whole-cell",
            "--scheduler",
            "none",
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in (ws / "MASKS").iterdir()) == ["img0_WholeCellMask.tiff"]
    table = pd.read_csv(ws / "TABLES" / "img0_QUANT.tsv", sep="\t")
    assert len(table) == tifffile.imread(ws / "MASKS" / "img0_WholeCellMask.tiff").max()
    assert json.loads((ws / "TABLES" / "batch_summary.json").read_text())["done"] == 1
