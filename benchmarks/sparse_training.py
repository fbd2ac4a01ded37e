"""Benchmark sparse training on real nuclei: DSB2018 fluorescence, every backend, every protocol.

Data: ``../shared/data/dsb2018/fluo`` relative to the repository root (``--data``). Every model
is trained on sparse annotations made from the full masks of ``train/`` with
:func:`napari_cellsparse.samples.sparse_annotation.sparse_from_truth` and evaluated on all of
``test/`` with ``stardist.matching.matching_dataset`` at IoU 0.5. Protocols (``--protocol``):

* ``paper``: every training image, its k darkest and k brightest cells (``--k``, default
  1,2,4,8), background in a 12 px band around them, everything else unannotated
  (Sugawara 2023);
* ``full``: every cell of every training image, background everywhere else (k = "full");
* ``user``: the first 3 training images in file-name order, 10 cells each (k = 5) plus the band;
* ``histo_user``: the same on ``../histo`` (``--histo``): 16 RGB brightfield images of 256x320
  with their masks in ``images/`` and ``masks/`` (no train/test split of its own); the first 3
  in file-name order train (k = 5 by grey mean, the band), the other 13 test;
* ``histo_full``: histology's reference: every cell of the same 3 images, background
  everywhere else, the same 13 test images (no other histology is annotated here);
* ``next10``: the user story (its run is reported as ``user``), then "where to annotate next"
  (``training.uncertainty.where_to_annotate``) on each of the 3 training images: the ground-truth
  cells under the 10 top-ranked places of the 3 images (see ``next10.py``) are added with their
  band, and the model is trained again from scratch (``reset=True``, same steps, same seed)
  (``next10_map``); against 10 unannotated cells drawn at random with the run's seed
  (``next10_random``). Each reports ``gain`` = its F1 - the user story's F1 of the same seed.
  Not for ``stock`` (no map);
* ``sample``: StarDist's own 2D nuclei image (``stardist.data.test_image_nuclei_2d``), left
  half for training (k from ``--k``), right half for testing (protocol "stardist_sample").

Backends (``--backend``): ``unet``, ``stardist``, ``cellpose`` through the public API
(``train(...)`` then ``model.predict(img, diameter=None)``: the diameter is estimated), and
``stock``: upstream ``StarDist2D`` (Config2D defaults, n_channel_in=1, 128x128 patches, no
augmentation, ``csbdeep.utils.normalize(img, 1, 99.8)``, default thresholds, no rescaling, no
threshold optimisation; a one-image validation set because it needs one) on the same labels
(0 -> -1 ignored, 1 -> 0 background, 2+ -> cells; ``n_channel_in`` 3 for the RGB histology).
Every k of a backend gets the same step budget: ``--steps``, else the backend's default config
steps (stock: the stardist backend's).

``--seeds 0,1,2`` repeats every run per seed: the training seed (``seed=`` of ``train()``; stock:
Keras's and its patch sampling) and next10's random draw. Every row has its ``seed``; the final
object's ``summary`` gives per backend x protocol x k the mean, min, max and spread (max - min)
of ``f1`` (and ``pq``, ``train_s``, ``predict_s_per_mpx``) over the seeds, and ``next10`` per
backend the gains per seed with their mean and spread.

The process runs with the thread counts of the widgets' model worker (``worker/host.py``: all
cores but one, OMP/MKL/OpenBLAS/TensorFlow env, passive OpenMP wait), or ``--threads``;
``settings.threads`` records them and each row its ``torch_threads``. Each row has the load
averages at its start and end (``loadavg_start``/``loadavg_end``).

``train_s``: wall time of ``train()`` (data preparation, steps, threshold tuning, saving);
``train_loop_s``: the API's ``model.info["train_s"]`` (steps and tuning); ``tune_save_s``: from
the last step to the return of ``train()``. ``f1``/``precision``/``recall``/``pq`` are over all
test images; ``predict_s`` the wall time of predicting every test image and
``predict_s_per_mpx`` that per megapixel of test image; ``same_scale_f1`` over the test images
whose median nucleus area is within 0.5-2x the median area of the annotated training cells.
``diam_ratio_*``: estimated diameter / true median equivalent diameter, per test image;
``thresholds``: the post-processing thresholds the training tuned (our backends). Each
run prints one JSON line on stdout when it ends; the last line is one JSON object with every
run, the summary, the settings and the machine. Everything else goes
to stderr. Models are saved in a temporary ``NAPARI_CELLSPARSE_HOME``, removed at the end. Run
from the repository root::

    .venv/bin/python benchmarks/sparse_training.py --out benchmarks/results/sparse_training.json
    .venv/bin/python benchmarks/sparse_training.py --backend unet --protocol user --steps 5
    .venv/bin/python benchmarks/sparse_training.py --backend cellpose --protocol next10 --seeds 0,1
    .venv/bin/python benchmarks/sparse_training.py --selfcheck
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import IO, Any

import numpy as np

import next10
from bench_common import (
    cpu_info,
    load_now,
    megapixels,
    over_seeds,
    parse_seeds,
    torch_threads,
    use_worker_threads,
)

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / ".." / "shared" / "data" / "dsb2018" / "fluo"
BACKENDS = ("unet", "stardist", "cellpose", "stock")
HISTO = DATA.parent / "histo"
PROTOCOLS = ("paper", "full", "user", "histo_user", "histo_full", "next10", "sample")
PAPER_KS = (1, 2, 4, 8)
BAND = 12  # px of background painted around the kept cells
USER_IMAGES, USER_K = 3, 5
NEXT_CELLS = 10  # cells next10 adds, by the map or at random
IOU = 0.5
SAME_SCALE = (0.5, 2.0)
STOCK_PATCH = (128, 128)
SEED = 0

_OUT: IO[str] = sys.stdout  # the real stdout, once main() has pointed fd 1 at stderr
SETTINGS: dict[str, Any] = {}  # --set KEY=VALUE: training settings for our backends


def log(message: str) -> None:
    print(f"[sparse_training] {message}", file=sys.stderr, flush=True)


def emit(obj: dict[str, Any]) -> None:
    """One JSON line on the real stdout."""
    _OUT.write(json.dumps(obj, default=_jsonable) + "\n")
    _OUT.flush()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def r4(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


# -- data ----------------------------------------------------------------------------------


@dataclass
class Split:
    """Images, instance masks (relabelled 1..N) and names, in file-name order."""

    names: list[str]
    images: list[np.ndarray]
    masks: list[np.ndarray]


def _relabel(mask: np.ndarray) -> np.ndarray:
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(np.asarray(mask).astype(np.int32))[0]


def load_split(folder: Path) -> Split:
    """Every ``images/*.tif`` of ``folder`` with its ``masks/`` twin."""
    import tifffile

    paths = sorted((folder / "images").glob("*.tif"))
    if not paths:
        raise SystemExit(f"no images in {folder / 'images'}")
    images = [tifffile.imread(p) for p in paths]
    masks = [_relabel(tifffile.imread(folder / "masks" / p.name)) for p in paths]
    return Split([p.name for p in paths], images, masks)


def load_sample() -> tuple[Split, Split]:
    """StarDist's 2D nuclei image: left half to train, right half to test."""
    from stardist.data import test_image_nuclei_2d

    img, mask = test_image_nuclei_2d(return_mask=True)
    half = img.shape[1] // 2
    left = Split(["nuclei2d_left"], [img[:, :half]], [_relabel(mask[:, :half])])
    right = Split(["nuclei2d_right"], [img[:, half:]], [_relabel(mask[:, half:])])
    return left, right


@dataclass
class Task:
    """One training set: the protocol, k, the images, their annotations (0/1/2+) and their
    full masks (where next10 finds the cells it adds)."""

    protocol: str
    k: int | str
    images: list[np.ndarray]
    annotations: list[np.ndarray]
    test: Split
    truths: list[np.ndarray]

    @property
    def key(self) -> str:
        return f"{self.protocol}-k{self.k}"


def make_task(protocol: str, k: int | None, train: Split, test: Split) -> Task:
    from napari_cellsparse.samples.sparse_annotation import sparse_from_truth

    anns = [
        sparse_from_truth(i, m, k, BAND) for i, m in zip(train.images, train.masks, strict=True)
    ]
    k_name = "full" if k is None else k
    return Task(protocol, k_name, list(train.images), anns, test, list(train.masks))


def head(split: Split, n: int) -> tuple[Split, Split]:
    """The first ``n`` images of a split and the rest."""
    first = Split(split.names[:n], split.images[:n], split.masks[:n])
    return first, Split(split.names[n:], split.images[n:], split.masks[n:])


def build_tasks(protocols: list[str], ks: list[int], data: Path, histo: Path = HISTO) -> list[Task]:
    """The training sets asked for, in the order paper, full, user (also next10's start),
    histo_user, histo_full, sample."""
    tasks: list[Task] = []
    if {"paper", "full", "user", "next10"} & set(protocols):
        train, test = load_split(data / "train"), load_split(data / "test")
        log(f"{len(train.names)} training and {len(test.names)} test images from {data}")
        if "paper" in protocols:
            tasks += [make_task("paper", k, train, test) for k in ks]
        if "full" in protocols:
            tasks.append(make_task("full", None, train, test))
        if {"user", "next10"} & set(protocols):
            tasks.append(make_task("user", USER_K, head(train, USER_IMAGES)[0], test))
    if {"histo_user", "histo_full"} & set(protocols):
        first, rest = head(load_split(histo), USER_IMAGES)
        log(f"histology: {len(first.names)} training and {len(rest.names)} test images")
        if "histo_user" in protocols:
            tasks.append(make_task("histo_user", USER_K, first, rest))
        if "histo_full" in protocols:
            tasks.append(make_task("histo_full", None, first, rest))
    if "sample" in protocols:
        left, right = load_sample()
        tasks += [make_task("stardist_sample", k, left, right) for k in ks]
    return tasks


def cell_areas(annotations: list[np.ndarray]) -> np.ndarray:
    """Areas (px) of the annotated cells (ids >= 2) of layer-convention annotations."""
    found = []
    for ann in annotations:
        counts = np.bincount(np.asarray(ann, np.int64).ravel())[2:]
        found.append(counts[counts > 0])
    return np.concatenate(found) if found else np.zeros(0)


def median_area(mask: np.ndarray) -> float:
    counts = np.bincount(mask.ravel())[1:]
    counts = counts[counts > 0]
    return float(np.median(counts)) if len(counts) else float("nan")


def median_diameter(mask: np.ndarray) -> float:
    from napari_cellsparse.models.scale import equivalent_diameters

    d = equivalent_diameters(mask)
    return float(np.median(d)) if len(d) else float("nan")


# -- evaluation ----------------------------------------------------------------------------


def scores(truths: list[np.ndarray], preds: list[np.ndarray]) -> dict[str, Any]:
    """stardist.matching.matching_dataset at IoU 0.5, summed over the images."""
    from stardist.matching import matching_dataset

    if not truths:
        return {"f1": None, "precision": None, "recall": None, "pq": None}
    s = matching_dataset(truths, preds, thresh=IOU, show_progress=False)
    return {
        "f1": r4(s.f1),
        "precision": r4(s.precision),
        "recall": r4(s.recall),
        "pq": r4(s.panoptic_quality),
        "tp": int(s.tp),
        "fp": int(s.fp),
        "fn": int(s.fn),
        "n_true": int(s.n_true),
        "n_pred": int(s.n_pred),
    }


def same_scale(test: Split, train_area: float) -> list[int]:
    """Indices of the test images whose median area is within 0.5-2x ``train_area``."""
    lo, hi = SAME_SCALE
    return [
        i for i, m in enumerate(test.masks) if lo * train_area <= median_area(m) <= hi * train_area
    ]


def evaluate(test: Split, preds: list[np.ndarray], train_area: float) -> dict[str, Any]:
    """Scores on all test images and on the same-scale ones."""
    pick = same_scale(test, train_area)
    sub = scores([test.masks[i] for i in pick], [preds[i] for i in pick])
    return {
        **scores(test.masks, preds),
        "same_scale_f1": sub["f1"],
        "same_scale_pq": sub["pq"],
        "n_same_scale": len(pick),
        "n_eval": len(test.masks),
    }


def summary(values: list[float]) -> dict[str, float | None]:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if not len(v):
        return {"median": None, "min": None, "max": None}
    return {"median": r4(np.median(v)), "min": r4(v.min()), "max": r4(v.max())}


# -- runs ----------------------------------------------------------------------------------


def default_steps(backend: str) -> int:
    """The backend's default config steps (stock: the stardist backend's)."""
    from napari_cellsparse.training import backend_class
    from napari_cellsparse.training.config import TrainingConfig

    if backend == "stock":
        try:
            return backend_class("stardist").config_class().steps
        except Exception:
            return TrainingConfig().steps
    return backend_class(backend).config_class().steps


def load_framework(backend: str) -> float:
    """Seconds to import the backend's libraries, before any training is timed: the widgets'
    worker loads them when a person picks the backend (stock: StarDist's)."""
    from napari_cellsparse.training import backend_class

    start = time.perf_counter()
    backend_class("stardist" if backend == "stock" else backend).load_framework()
    return round(time.perf_counter() - start, 2)


def check_backend(backend: str) -> None:
    """Raise when the backend cannot run here."""
    if backend == "stock":
        import csbdeep.utils  # noqa: F401
        import stardist.models  # noqa: F401
        import tensorflow  # noqa: F401
    else:
        from napari_cellsparse.training import backend_class

        backend_class(backend)


def base_row(backend: str, task: Task, steps: int, seed: int) -> dict[str, Any]:
    area = float(np.median(cell_areas(task.annotations)))
    return {
        "backend": backend,
        "protocol": task.protocol,
        "k": task.k,
        "seed": seed,
        "steps": steps,
        "loadavg_start": load_now(),
        "n_train_images": len(task.images),
        "n_train_cells": len(cell_areas(task.annotations)),
        "train_median_area": r4(area),
    }


def timing(test: Split, predict_s: float) -> dict[str, Any]:
    """Prediction time, per megapixel of test image, threads and the load at the run's end."""
    return {
        "predict_s": round(predict_s, 2),
        "predict_s_per_mpx": r4(predict_s / megapixels(test.images)),
        "torch_threads": torch_threads(),
        "loadavg_end": load_now(),
    }


def run_ours(backend: str, task: Task, steps: int, seed: int) -> tuple[dict[str, Any], Any]:
    """Train one of our backends through the public API and evaluate it; the row and the
    trained model."""
    from napari_cellsparse.training import train

    row = base_row(backend, task, steps, seed)
    every = max(steps // 10, 1)
    last_step = [0.0]

    def progress(step: int, total: int, info: dict[str, Any]) -> None:
        last_step[0] = time.perf_counter()
        if step % every == 0 or step == total:
            log(f"{backend} {task.key}: step {step}/{total} loss {info['loss']:.4f}")

    start = time.perf_counter()
    model = train(
        backend,
        images=task.images,
        labels=task.annotations,
        name=f"bench-{backend}-{task.key}",
        steps=steps,
        progress=progress,
        cancel=threading.Event(),
        reset=True,
        seed=seed,
        **SETTINGS,
    )
    end = time.perf_counter()
    train_s = end - start
    preds, ratios = [], []
    start = time.perf_counter()
    for img, truth in zip(task.test.images, task.test.masks, strict=True):
        preds.append(model.predict(img, diameter=None))
        used = model.info.get("last_diameters") or [float("nan")]
        ratios.append(float(used[0]) / median_diameter(truth))
    predict_s = time.perf_counter() - start
    sessions = model.info.get("sessions") or [{}]
    row["steps"] = int(sessions[-1].get("steps", steps))
    row.update(
        train_s=round(train_s, 2),
        train_loop_s=r4(model.info.get("train_s")),
        tune_save_s=round(end - last_step[0], 2) if last_step[0] else None,
        final_loss=r4(sessions[-1].get("final_loss")),
        **evaluate(task.test, preds, row["train_median_area"]),
        diam_ratio_median=summary(ratios)["median"],
        diam_ratio_min=summary(ratios)["min"],
        diam_ratio_max=summary(ratios)["max"],
        train_diameter=r4(model.scale.train_diameter),
        self_training_cells=sessions[-1].get("self_training_cells"),
        thresholds=asdict(model.thresholds),
        device=str(model.network.device),
        **timing(task.test, predict_s),
    )
    return row, model


def run_next10(
    backend: str, task: Task, base: dict[str, Any], model: Any, steps: int, seed: int
) -> list[dict[str, Any]]:
    """From the user story's model: 10 cells chosen by the map, then 10 at random; each
    added to the annotation, trained afresh with the same budget and seed, and evaluated."""
    rows = []
    start = time.perf_counter()
    by_map, seen = next10.by_map(model, task.images, task.annotations, task.truths, NEXT_CELLS)
    map_s = time.perf_counter() - start
    at_random = next10.at_random(
        task.annotations, task.truths, NEXT_CELLS, np.random.default_rng(seed)
    )
    for arm, chosen in (("map", by_map), ("random", at_random)):
        anns = [
            next10.add_cells(a, t, ids, BAND)
            for a, t, ids in zip(task.annotations, task.truths, chosen, strict=True)
        ]
        grown = Task(f"next10_{arm}", task.k, task.images, anns, task.test, task.truths)
        log(f"{backend} {grown.key} seed {seed}: {sum(map(len, chosen))} cells added")
        row, _ = run_ours(backend, grown, steps, seed)
        row.update(
            added_cells=[len(c) for c in chosen],
            base_f1=base.get("f1"),
            gain=r4(row["f1"] - base["f1"]) if None not in (row["f1"], base.get("f1")) else None,
        )
        if arm == "map":
            row.update(map_s=round(map_s, 2), **seen)
        rows.append(row)
    return rows


def stock_labels(annotation: np.ndarray) -> np.ndarray:
    """Layer convention (0 unannotated / 1 background / 2+ cells) → upstream (-1 / 0 / 1+)."""
    return np.asarray(annotation, np.int32) - 1


def epochs_for(steps: int) -> tuple[int, int]:
    """(epochs, steps_per_epoch) with epochs x steps_per_epoch == steps, at most 100 a epoch."""
    per = max(d for d in range(1, min(steps, 100) + 1) if steps % d == 0)
    return steps // per, per


def run_stock(task: Task, steps: int, seed: int) -> dict[str, Any]:
    """Upstream StarDist2D, default config, trained on the same sparse labels."""
    import keras
    from csbdeep.utils import normalize
    from stardist.models import Config2D, StarDist2D

    row = base_row("stock", task, steps, seed)
    keras.utils.set_random_seed(seed)
    x = [normalize(img, 1, 99.8).astype(np.float32) for img in task.images]
    y = [stock_labels(a) for a in task.annotations]
    channels = int(x[0].shape[-1]) if x[0].ndim == 3 else 1
    config = Config2D(n_channel_in=channels, train_patch_size=STOCK_PATCH, train_tensorboard=False)
    model = StarDist2D(config, name="stock", basedir=None)
    fit = model.keras_model.fit

    def quiet_fit(*args: Any, **kwargs: Any) -> Any:
        return fit(*args, **{**kwargs, "verbose": 0})

    model.keras_model.fit = quiet_fit
    epochs, per_epoch = epochs_for(steps)
    log(f"stock {task.key}: {epochs} epoch(s) x {per_epoch} steps")
    start = time.perf_counter()
    history = model.train(
        x, y, validation_data=(x[:1], y[:1]), epochs=epochs, steps_per_epoch=per_epoch, seed=seed
    )
    train_s = time.perf_counter() - start
    preds = []
    start = time.perf_counter()
    for img in task.test.images:
        labels, _ = model.predict_instances(normalize(img, 1, 99.8), verbose=False)
        preds.append(np.asarray(labels, np.int32))
    predict_s = time.perf_counter() - start
    losses = history.history.get("loss") or [float("nan")]
    row.update(
        steps=epochs * per_epoch,
        epochs=epochs,
        steps_per_epoch=per_epoch,
        train_s=round(train_s, 2),
        final_loss=r4(losses[-1]),
        **evaluate(task.test, preds, row["train_median_area"]),
        diam_ratio_median=None,
        thresholds={"prob": model.thresholds.prob, "nms": model.thresholds.nms},
        batch_size=config.train_batch_size,
        **timing(task.test, predict_s),
    )
    return row


# -- self-check ----------------------------------------------------------------------------


def selfcheck(data: Path, histo: Path = HISTO) -> dict[str, Any]:
    """The F1 plumbing and the annotations, without training anything."""
    checks: dict[str, bool] = {}
    test = load_split(data / "test")
    area = float(np.median([median_area(m) for m in test.masks]))
    perfect = evaluate(test, [m.copy() for m in test.masks], area)
    checks["truth_as_prediction_f1_1"] = (
        perfect["f1"] == perfect["precision"] == perfect["recall"] == perfect["pq"] == 1.0
        and perfect["same_scale_f1"] == 1.0
        and 0 < perfect["n_same_scale"] <= perfect["n_eval"] == len(test.masks)
    )
    rng = np.random.default_rng(SEED)
    shuffled = []
    for m in test.masks:
        ids = np.concatenate([[0], rng.permutation(int(m.max())) + 1])
        shuffled.append(ids[m])
    checks["permuted_ids_f1_1"] = evaluate(test, shuffled, area)["f1"] == 1.0
    empty = evaluate(test, [np.zeros_like(m) for m in test.masks], area)
    checks["empty_prediction_f1_0"] = empty["f1"] == 0.0 and empty["fn"] == empty["n_true"]
    halves = [np.where(m % 2 == 1, m, 0) for m in test.masks]
    half = evaluate(test, halves, area)
    kept = sum(int((np.unique(h) > 0).sum()) for h in halves)
    checks["odd_ids_precision_1_recall"] = (
        half["precision"] == 1.0 and half["tp"] == kept and half["fn"] == half["n_true"] - kept
    )
    shifted = [np.roll(m, 40, axis=1) for m in test.masks]
    checks["shifted_prediction_worse"] = evaluate(test, shifted, area)["f1"] < 0.5

    protocols = ["paper", "full", "user", "histo_user", "histo_full", "sample"]
    tasks = build_tasks(protocols, [2], data, histo)
    by_key = {t.key: t for t in tasks}
    paper, full, user = by_key["paper-k2"], by_key["full-kfull"], by_key["user-k5"]
    train = load_split(data / "train")
    checks["paper_k2_at_most_4_cells"] = all(
        len(np.unique(a[a >= 2])) == min(4, int(m.max()))
        for a, m in zip(paper.annotations, train.masks, strict=True)
    )
    checks["full_every_cell"] = all(
        len(np.unique(a[a >= 2])) == int(m.max()) and ((a == 1) == (m == 0)).all()
        for a, m in zip(full.annotations, train.masks, strict=True)
    )
    checks["user_first_3_images_10_cells"] = (
        len(user.images) == USER_IMAGES
        and all(
            len(np.unique(a[a >= 2])) == min(2 * USER_K, int(m.max()))
            for a, m in zip(user.annotations, train.masks[:USER_IMAGES], strict=True)
        )
        and all(
            np.array_equal(i, j)
            for i, j in zip(user.images, train.images[:USER_IMAGES], strict=True)
        )
    )
    converted = stock_labels(paper.annotations[0])
    checks["stock_labels_ignore_bg_cells"] = (
        ((converted == -1) == (paper.annotations[0] == 0)).all()
        and ((converted == 0) == (paper.annotations[0] == 1)).all()
        and ((converted > 0) == (paper.annotations[0] >= 2)).all()
    )
    checks["sample_halves"] = by_key["stardist_sample-k2"].test.images[0].shape[1] > 0
    checks["epochs_for"] = epochs_for(600) == (6, 100) and epochs_for(5) == (1, 5)
    histology = load_split(histo)
    checks.update(check_histo_and_next10(by_key["histo_user-k5"], user, histology))
    checks["histo_full_every_cell_same_test"] = by_key[
        "histo_full-kfull"
    ].test.names == histology.names[USER_IMAGES:] and all(
        len(np.unique(a[a >= 2])) == int(m.max()) and ((a == 1) == (m == 0)).all()
        for a, m in zip(
            by_key["histo_full-kfull"].annotations, histology.masks[:USER_IMAGES], strict=True
        )
    )
    return {"selfcheck": all(checks.values()), "checks": checks}


def check_histo_and_next10(histo_task: Task, user: Task, histo: Split) -> dict[str, bool]:
    """histo_user's split and annotations; next10's random draw and added cells."""
    checks = {
        "histo_user_3_train_13_test": len(histo_task.images) == USER_IMAGES
        and len(histo_task.test.images) == len(histo.names) - USER_IMAGES
        and histo_task.test.images[0].shape == histo.images[USER_IMAGES].shape
        and all(
            len(np.unique(a[a >= 2])) == min(2 * USER_K, int(m.max()))
            for a, m in zip(histo_task.annotations, histo.masks[:USER_IMAGES], strict=True)
        )
    }
    picks = next10.at_random(user.annotations, user.truths, NEXT_CELLS, np.random.default_rng(SEED))
    again = next10.at_random(user.annotations, user.truths, NEXT_CELLS, np.random.default_rng(SEED))
    known = [
        next10.annotated_truth_ids(a, t) for a, t in zip(user.annotations, user.truths, strict=True)
    ]
    checks["next10_random_10_new_cells_seeded"] = (
        sum(map(len, picks)) == NEXT_CELLS
        and picks == again
        and all(not set(p) & k for p, k in zip(picks, known, strict=True))
    )
    grown = [
        next10.add_cells(a, t, ids, BAND)
        for a, t, ids in zip(user.annotations, user.truths, picks, strict=True)
    ]
    checks["next10_adds_cells_keeps_the_rest"] = all(
        len(np.unique(g[g >= 2])) == len(np.unique(a[a >= 2])) + len(ids)
        and ((a == 0) | (g == a)).all()
        and set(ids) == next10.annotated_truth_ids(g, t) - next10.annotated_truth_ids(a, t)
        and not (g[t == 0] >= 2).any()
        and not ((g == 1) & (t > 0)).any()
        for a, g, t, ids in zip(user.annotations, grown, user.truths, picks, strict=True)
    )
    return checks


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per backend x protocol x k: F1, PQ, train_s and predict_s_per_mpx over the seeds;
    per backend, next10's gains per seed with their mean and spread."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in runs:
        if "error" not in row:
            groups.setdefault(f"{row['backend']}/{row['protocol']}-k{row['k']}", []).append(row)
    table = {
        key: {
            "seeds": [row["seed"] for row in rows],
            **{
                name: over_seeds([row.get(name) for row in rows])
                for name in ("f1", "pq", "train_s", "predict_s_per_mpx")
            },
        }
        for key, rows in groups.items()
    }
    gains: dict[str, Any] = {}
    for row in runs:
        if "error" not in row and row["protocol"] in ("next10_map", "next10_random"):
            arm = "gain_" + row["protocol"].removeprefix("next10_")
            per = gains.setdefault(row["backend"], {"gain_map": {}, "gain_random": {}})
            per[arm][str(row["seed"])] = row["gain"]
    for per in gains.values():
        for arm in ("gain_map", "gain_random"):
            per[f"{arm}_over_seeds"] = over_seeds(list(per[arm].values()))
    return {"f1_over_seeds": table, "next10": gains}


# -- main ----------------------------------------------------------------------------------


def machine_info(began: float, load_start: tuple[float, ...]) -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        **cpu_info(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }
    for package in ("napari-cellsparse", "torch", "tensorflow", "stardist", "csbdeep", "cellpose"):
        try:
            info[package] = version(package)
        except PackageNotFoundError:
            continue
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    if "tensorflow" in sys.modules:
        tf = sys.modules["tensorflow"]
        info["tf_gpus"] = len(tf.config.list_physical_devices("GPU"))
    info["loadavg_start"] = [round(x, 2) for x in load_start]
    info["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    info["total_s"] = round(time.perf_counter() - began, 1)
    return info


def _csv(values: list[str]) -> list[str]:
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    summary_line = " ".join(__doc__.split("\n\n")[0].split())
    parser = argparse.ArgumentParser(
        description=summary_line, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--backend",
        action="append",
        default=[],
        help=f"repeatable or comma list of {', '.join(BACKENDS)} (default: all). 'stock' is "
        "upstream StarDist2D with its default config, trained on the same labels",
    )
    parser.add_argument(
        "--protocol",
        action="append",
        default=[],
        help="repeatable or comma list (default: all): 'paper' (k darkest + k brightest "
        "cells of every training image, 12 px background band, one run per --k), 'full' "
        "(every cell, background everywhere else), 'user' (first 3 training images, k=5), "
        "'histo_user' (first 3 of the histology images, k=5; test: the other 13), "
        "'histo_full' (every cell of the same 3 histology images), 'next10' "
        "(the user story, then + 10 cells by the where-to-annotate map vs + 10 random, "
        "each retrained from scratch), 'sample' (StarDist's test_image_nuclei_2d, left half "
        "train, right half test, one run per --k; reported as 'stardist_sample')",
    )
    parser.add_argument(
        "--k", default=",".join(map(str, PAPER_KS)), help="comma list of k (default 1,2,4,8)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps for every run (default: each "
        "backend's default config steps; stock: the stardist backend's)",
    )
    parser.add_argument(
        "--seeds",
        default=str(SEED),
        help="comma list of seeds; every run is repeated per seed (training seed and "
        "next10's random cells; default 0)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="thread count for torch / OpenMP / TensorFlow (default: the widgets' worker's, "
        "all cores but one)",
    )
    parser.add_argument("--data", type=Path, default=DATA, help="the dsb2018 fluo folder")
    parser.add_argument(
        "--histo", type=Path, default=HISTO, help="the dsb2018 histo folder (histo_user)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a training setting for unet/stardist/cellpose, e.g. self_training=0.5 or "
        "flip_average=True, read as the widget's Backend settings (repeatable; default: each "
        "backend's defaults)",
    )
    parser.add_argument("--out", type=Path, help="also write the final JSON object here")
    parser.add_argument(
        "--selfcheck", action="store_true", help="check the F1 plumbing and annotations, then exit"
    )
    args = parser.parse_args(argv)
    args.backend = _csv(args.backend) or list(BACKENDS)
    protocols = [("sample" if p == "stardist_sample" else p) for p in _csv(args.protocol)]
    args.protocol = protocols or list(PROTOCOLS)
    bad = [b for b in args.backend if b not in BACKENDS]
    bad += [p for p in args.protocol if p not in PROTOCOLS]
    if bad:
        parser.error(f"unknown backend or protocol: {', '.join(bad)}")
    try:
        args.k = [int(k) for k in _csv([args.k])]
    except ValueError:
        parser.error("--k must be a comma list of positive integers")
    if not args.k or min(args.k) < 1:
        parser.error("--k must be a comma list of positive integers")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    try:
        args.seeds = parse_seeds(args.seeds)
    except ValueError as err:
        parser.error(str(err))
    from napari_cellsparse.core.errors import BadInputError
    from napari_cellsparse.core.limits import check_training
    from napari_cellsparse.core.settings_text import parse_settings

    try:
        args.set = parse_settings(", ".join(args.set))
        check_training(None, args.set)  # steps, name...: the benchmark's own arguments
    except BadInputError as err:
        parser.error(f"--set: {err}")
    args.data = args.data.resolve()
    args.histo = args.histo.resolve()
    return args


def run_task(
    backend: str, task: Task, steps: int, seed: int, with_next10: bool, runs: list[dict[str, Any]]
) -> None:
    """One task's run, and next10's two after the user story when asked; each row is
    printed and added to ``runs`` as it ends."""

    def done(row: dict[str, Any]) -> None:
        emit(row)
        runs.append(row)

    log(f"{backend} {task.key} seed {seed}: training {steps} steps")
    next10_too = with_next10 and task.protocol == "user"
    if backend == "stock":
        done(run_stock(task, steps, seed))
        if next10_too:
            done(
                {
                    "backend": backend,
                    "protocol": "next10",
                    "k": task.k,
                    "seed": seed,
                    "error": "stock has no where-to-annotate map",
                    "skipped": True,
                }
            )
        return
    row, model = run_ours(backend, task, steps, seed)
    done(row)
    if next10_too:
        for grown in run_next10(backend, task, row, model, steps, seed):
            done(grown)


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    began, load_start = time.perf_counter(), os.getloadavg()
    if args.selfcheck:
        result = selfcheck(args.data, args.histo)
        result["machine"] = machine_info(began, load_start)
        return result
    tasks = build_tasks(args.protocol, args.k, args.data, args.histo)
    with_next10 = "next10" in args.protocol
    runs: list[dict[str, Any]] = []
    loads: dict[str, float] = {}
    for backend in args.backend:
        try:
            check_backend(backend)
            steps = args.steps or default_steps(backend)
            loads[backend] = load_framework(backend)
        except Exception as err:  # a backend not written or not installed here
            row = {"backend": backend, "error": f"{type(err).__name__}: {err}", "skipped": True}
            emit(row)
            runs.append(row)
            continue
        for seed in args.seeds:
            for task in tasks:
                try:
                    run_task(backend, task, steps, seed, with_next10, runs)
                except Exception as err:
                    log(traceback.format_exc())
                    row = {
                        "backend": backend,
                        "protocol": task.protocol,
                        "k": task.k,
                        "seed": seed,
                        "steps": steps,
                        "error": f"{type(err).__name__}: {err}",
                    }
                    emit(row)
                    runs.append(row)
    return {
        "runs": runs,
        "summary": summarise(runs),
        "framework_load_s": loads,
        "settings": {
            "data": str(args.data),
            "backends": args.backend,
            "protocols": args.protocol,
            "k": args.k,
            "steps": args.steps,
            "training_settings": args.set,
            "band_px": BAND,
            "iou": IOU,
            "same_scale": list(SAME_SCALE),
            "user": {"images": USER_IMAGES, "k": USER_K},
            "histo": str(args.histo),
            "seeds": args.seeds,
            "next10_cells": NEXT_CELLS,
            "threads": args.thread_settings,
            "stock": {"train_patch_size": list(STOCK_PATCH), "normalize": [1, 99.8]},
        },
        "machine": machine_info(began, load_start),
    }


def main(argv: list[str] | None = None) -> int:
    global _OUT
    args = parse_args(argv)
    SETTINGS.update(args.set)
    args.thread_settings = use_worker_threads(args.threads)  # before torch / TF are imported
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")  # leave GPU memory to torch too
    # Only JSON goes to stdout: anything else written there (Keras, C code) goes to stderr.
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    _OUT = os.fdopen(real_stdout, "w")
    with tempfile.TemporaryDirectory(prefix="cellsparse-bench-") as home:
        os.environ["NAPARI_CELLSPARSE_HOME"] = home
        result = run_all(args)
    emit(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")
    return 0 if result.get("selfcheck", True) else 1


if __name__ == "__main__":
    sys.exit(main())
