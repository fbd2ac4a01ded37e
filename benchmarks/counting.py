"""Benchmark cell counting from sparse, noisy centre points on real nuclei (DSB 2018).

Data: ``../shared/data/dsb2018`` relative to the repository root (``--data``). Centres are the
centroids of the true nuclei, each moved by a uniform random offset of up to 3 px in y and in x
("noisy", seeded). Runs:

* ``fluo_25``: train on every image of ``fluo/train/`` with 25 % of the noisy points of each
  image (chosen at random, seeded) plus painted background: pixels more than 15 px from every
  true nucleus; evaluate on every image of ``fluo/test/``;
* ``fluo_100``: the same with every point;
* ``histo_25``: ``histo/`` (RGB brightfield): the first 10 images (file-name order) train with
  25 % of the points, the other 6 test;
* ``user`` (issue 25's user story: what a person clicks): the first 6 images of
  ``fluo/train/`` (file-name order) with 25 % of their noisy points (about 50) and the painted
  background; evaluate on every image of ``fluo/test/``;
* ``histo_user``: the same on ``histo/`` (16 RGB images of 256x320 in ``images/`` and
  ``masks/``, no split of its own): the first 6 train, the other 10 test;
* ``next10`` (asked for by name): the ``user`` run, then 10 more points where the counter is
  least sure (``next10_map``) or at random (``next10_random``), each retrained from scratch
  (``counting_next10.py``); their rows carry ``gain`` (loc. F1 minus the user story's),
  ``added_cells`` per image and, for the map, ``places_per_image``, ``places_used``,
  ``skipped_no_cell``, ``skipped_given`` and ``map_s``;
* ``baseline_fluo_25``: scikit-image's ``blob_log`` on the normalised images, its scale and
  threshold tuned on the fluo training images' given points (the F1 of given points found vs.
  blobs on the painted background, as the counter tunes its peak threshold), count = blobs.

Per run: ``count_true`` / ``count_pred`` (sums over the test images), ``rel_count_error``
(|sum pred - sum true| / sum true), ``mean_abs_rel_error_per_image``, ``loc_f1`` (detected
centres vs. exact true centroids, Hungarian matching, a true positive within 5 px, pooled over
the test images) with ``loc_precision`` and ``loc_recall``, ``per_image`` (``image``, ``true``,
``count``, ``centres``, ``hits``: matched centres), ``train_s`` (wall time of ``train_counter``,
or of the baseline's tuning),
``count_s_per_mpx`` (wall time of counting the test images per megapixel), ``loadavg_start`` /
``loadavg_end`` and ``torch_threads``. The counter is trained with its default settings
through the public API. The fluo_25 counter also counts ``fluo/test/images`` with the batch API
(``count_folder``) into ``--batch-out``.

``--seeds 0,1,2`` repeats every run per seed (default: ``--seed``): the seed draws which points
are given and their jitter, and is the counter's training seed (unless ``--set seed=...``).
The process uses the widgets' model worker's thread counts (``--threads`` overrides them).
Each run prints one JSON line (``run``, ``seed`` and its figures) when it ends; the last line
is one JSON object: ``runs``, ``summary`` (per run name: mean, min, max and spread over the
seeds of ``rel_count_error``, ``mean_abs_rel_error_per_image``, ``loc_f1`` and ``train_s``),
``settings`` and ``machine``; ``--out`` also writes it. Run from the repository root::

    .venv/bin/python benchmarks/counting.py --out benchmarks/results/counting.json
    .venv/bin/python benchmarks/counting.py --only fluo_25 --steps 50
    .venv/bin/python benchmarks/counting.py --only user histo_user --seeds 0,1,2
    .venv/bin/python benchmarks/counting.py --only next10 --seeds 0,1,2
    .venv/bin/python benchmarks/counting.py --merge a.json b.json --out all.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

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
DATA = REPO / ".." / "shared" / "data" / "dsb2018"
RUNS = ("fluo_25", "fluo_100", "histo_25", "baseline_fluo_25", "user", "histo_user", "next10")
DEFAULT_RUNS = RUNS[:-1]  # next10 retrains twice more: asked for by name
NEXT10 = 10  # points the next10 protocol adds
USER_IMAGES = 6  # training images of the user story
SUMMARY_KEYS = ("rel_count_error", "mean_abs_rel_error_per_image", "loc_f1", "train_s", "gain")
NOISE_PX = 3.0
BACKGROUND_PX = 15.0
MATCH_PX = 5.0


def load(folder: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, image, instance mask) of every image of ``folder`` in file-name order."""
    import tifffile

    return [
        (p.name, tifffile.imread(p), tifffile.imread(folder / "masks" / p.name))
        for p in sorted((folder / "images").glob("*.tif"))
    ]


def centroids(mask: np.ndarray) -> np.ndarray:
    """Exact (y, x) centroids of every object of an instance mask."""
    from scipy import ndimage as ndi

    ids = np.unique(mask[mask > 0])
    return np.array(ndi.center_of_mass(mask > 0, mask, ids), np.float64).reshape(-1, 2)


def annotate(
    data: list[tuple[str, np.ndarray, np.ndarray]], fraction: float, rng: np.random.Generator
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Noisy points (``fraction`` of the nuclei of each image) and painted background masks."""
    from scipy import ndimage as ndi

    points, background = [], []
    for _, _, mask in data:
        true = centroids(mask)
        noisy = true + rng.uniform(-NOISE_PX, NOISE_PX, size=true.shape)
        noisy = np.clip(noisy, 0, np.array(mask.shape) - 1)
        k = max(1, round(fraction * len(true)))
        points.append(noisy[np.sort(rng.choice(len(true), k, replace=False))])
        background.append(ndi.distance_transform_edt(mask == 0) > BACKGROUND_PX)
    return points, background


def score(
    found: list[np.ndarray], counts: list[float], data: list[tuple[str, np.ndarray, np.ndarray]]
) -> dict[str, Any]:
    """The run's figures from detected centres and counts per test image."""
    from napari_cellsparse.counting.evaluate import match_centres

    true = [centroids(mask) for _, _, mask in data]
    n_true = np.array([len(t) for t in true], float)
    pred = np.array(counts, float)
    hits = [len(match_centres(f, t, MATCH_PX)[0]) for f, t in zip(found, true, strict=True)]
    matched, n_found = sum(hits), sum(len(f) for f in found)
    return {
        "images": len(data),
        "count_true": int(n_true.sum()),
        "count_pred": round(float(pred.sum()), 2),
        "rel_count_error": round(abs(pred.sum() - n_true.sum()) / n_true.sum(), 4),
        "mean_abs_rel_error_per_image": round(float(np.mean(np.abs(pred - n_true) / n_true)), 4),
        "loc_f1": round(2.0 * matched / (n_found + n_true.sum()), 4),
        "loc_precision": round(matched / max(n_found, 1), 4),
        "loc_recall": round(matched / n_true.sum(), 4),
        "n_centres": int(n_found),
        "per_image": [
            {
                "image": name,
                "true": int(n),
                "count": round(float(c), 2),
                "centres": len(f),
                "hits": h,
            }
            for (name, _, _), n, c, f, h in zip(data, n_true, pred, found, hits, strict=True)
        ],
    }


def run_counter(
    name: str,
    train: list,
    test: list,
    points: list[np.ndarray],
    background: list[np.ndarray],
    seed: int,
    settings: dict[str, Any],
) -> tuple[dict[str, Any], Any]:
    """Train a counter on ``train`` with ``points`` and ``background``, count ``test``."""
    from napari_cellsparse.counting import train_counter

    settings = {"seed": seed, **settings}  # the training seed follows the run's unless set
    load_start = load_now()
    started = time.perf_counter()

    def report(step: int, total: int, info: dict) -> None:
        if step % 50 == 0 or step == total:
            elapsed = time.perf_counter() - started
            print(
                f"{name}: step {step}/{total} loss {info['loss']:.4f} {elapsed:.0f} s",
                file=sys.stderr,
                flush=True,
            )

    counter = train_counter(
        [img for _, img, _ in train],
        points,
        name=name,
        background=background,
        progress=report,
        **settings,
    )
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    results = [counter.count(img) for _, img, _ in test]
    count_s = time.perf_counter() - started
    figures = score([r.centres for r in results], [r.count for r in results], test)
    session = counter.info["sessions"][-1]
    figures.update(
        train_s=round(train_s, 1),
        count_s_per_mpx=round(count_s / megapixels([img for _, img, _ in test]), 4),
        train_seed=settings["seed"],
        torch_threads=torch_threads(),
        loadavg_start=load_start,
        loadavg_end=load_now(),
        steps=session["steps"],
        given_points=int(sum(len(p) for p in points)),
        train_diameter=counter.config.train_diameter,
        sigma=counter.config.sigma,
        peak_threshold=counter.config.peak_threshold,
    )
    print(f"{name}: {json.dumps(figures)}", file=sys.stderr, flush=True)
    return figures, counter


def _blobs(gray: np.ndarray, sigma: float, threshold: float) -> np.ndarray:
    """Centres (y, x) of scikit-image's ``blob_log`` blobs of scale about ``sigma``."""
    from skimage.feature import blob_log

    blobs = blob_log(
        gray, min_sigma=sigma / 1.5, max_sigma=sigma * 1.5, num_sigma=3, threshold=threshold
    )
    return blobs[:, :2].astype(np.float64).reshape(-1, 2)


def run_baseline(train: list, test: list, fraction: float, seed: int) -> dict[str, Any]:
    """blob_log, its sigma range and threshold tuned on the given points of the training set."""
    from napari_cellsparse.core.images import normalize
    from napari_cellsparse.counting.evaluate import match_centres

    points, background = annotate(train, fraction, np.random.default_rng(seed))
    load_start = load_now()
    started = time.perf_counter()
    grays = [normalize(np.atleast_3d(img)).mean(-1) for _, img, _ in train]
    best: tuple[float, float, float] = (-1.0, 3.0, 0.1)
    for sigma in (2.0, 3.0, 4.0, 6.0):
        for threshold in (0.02, 0.05, 0.1, 0.2):
            tp = fp = fn = 0
            for gray, pts, bg in zip(grays, points, background, strict=True):
                found = _blobs(gray, sigma, threshold)
                matched, _ = match_centres(found, pts, 2.0 * sigma)
                tp += len(matched)
                fn += len(pts) - len(matched)
                rest = np.delete(found, matched, axis=0).astype(int)
                fp += int(bg[rest[:, 0], rest[:, 1]].sum()) if len(rest) else 0
            f1 = 2.0 * tp / max(2 * tp + fp + fn, 1)
            if f1 > best[0]:
                best = (f1, sigma, threshold)
    train_s = time.perf_counter() - started
    _, sigma, threshold = best
    found = [_blobs(normalize(np.atleast_3d(img)).mean(-1), sigma, threshold) for _, img, _ in test]
    figures = score(found, [len(f) for f in found], test)
    figures.update(
        train_s=round(train_s, 1),
        sigma=sigma,
        threshold=threshold,
        loadavg_start=load_start,
        loadavg_end=load_now(),
    )
    print(f"baseline: {json.dumps(figures)}", file=sys.stderr, flush=True)
    return figures


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per run name: its seeds and the mean, min, max and spread of the figures over them."""
    names = dict.fromkeys(row["run"] for row in runs)
    return {
        name: {
            "seeds": [row.get("seed") for row in runs if row["run"] == name],
            **{
                key: over_seeds([row.get(key) for row in runs if row["run"] == name])
                for key in SUMMARY_KEYS
            },
        }
        for name in names
    }


def write(result: dict[str, Any], out: Path | None) -> None:
    """The final object as the last stdout line, and indented in ``out``."""
    print(json.dumps(result), flush=True)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")


def merge(files: list[Path], out: Path | None, note: str) -> int:
    """One JSON from runs made in separate processes (e.g. in parallel): every run, the
    summary over all of them, and each file's machine and settings under ``processes``.
    Files of the earlier layout (one object per run name, one seed) are read too."""
    runs: list[dict[str, Any]] = []
    processes = []
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        processes.append(
            {"file": path.name, "machine": data.get("machine"), "settings": data.get("settings")}
        )
        runs += data.get("runs", [])
        runs += [{"run": k, **v} for k, v in data.items() if k in RUNS]
    result: dict[str, Any] = {"runs": runs, "summary": summarise(runs), "processes": processes}
    if note:
        result["note"] = note
    write(result, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--only", nargs="*", choices=RUNS, help="runs to do (default: all)")
    parser.add_argument("--steps", type=int, help="training steps (default: the counter's)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--seeds", help="comma list of seeds, every run repeated per seed (default: --seed)"
    )
    parser.add_argument(
        "--threads", type=int, help="torch / OpenMP threads (default: the widgets' worker's)"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON here")
    parser.add_argument("--batch-out", type=Path, default=REPO / "out" / "counting_fluo_test")
    parser.add_argument("--note", default="", help="a note stored in the JSON")
    parser.add_argument(
        "--merge", nargs="*", type=Path, help="combine the runs of these JSON files (no run)"
    )
    args = parser.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, args.note)
    try:
        seeds = parse_seeds(args.seeds) if args.seeds is not None else [args.seed]
    except ValueError as err:
        parser.error(str(err))
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if not (args.data / "fluo" / "train" / "images").is_dir():
        print(f"no data at {args.data}", file=sys.stderr)
        return 2
    threads = use_worker_threads(args.threads)  # before torch is imported
    load_start = load_now()
    os.environ["NAPARI_CELLSPARSE_HOME"] = tempfile.mkdtemp(prefix="counting-bench-")
    settings: dict[str, Any] = {
        k: json.loads(v) for k, _, v in (s.partition("=") for s in args.set)
    }
    if args.steps is not None:
        settings["steps"] = args.steps
    fluo_train = load(args.data / "fluo" / "train")
    fluo_test = load(args.data / "fluo" / "test")
    histo = load(args.data / "histo")
    plan = {
        "fluo_25": (fluo_train, fluo_test, 0.25),
        "fluo_100": (fluo_train, fluo_test, 1.0),
        "histo_25": (histo[:10], histo[10:], 0.25),
        "user": (fluo_train[:USER_IMAGES], fluo_test, 0.25),
        "histo_user": (histo[:USER_IMAGES], histo[USER_IMAGES:], 0.25),
        "next10": (fluo_train[:USER_IMAGES], fluo_test, 0.25),
    }
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for run in args.only or DEFAULT_RUNS:
            for name, figures in _run(run, plan, seed, settings, args):
                row = {"run": name, "seed": seed, **figures}
                print(json.dumps(row), flush=True)
                runs.append(row)
    import torch

    result: dict[str, Any] = {
        "runs": runs,
        "summary": summarise(runs),
        "machine": {
            "cpu_count": os.cpu_count(),
            **cpu_info(),
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "loadavg_start": load_start,
            "loadavg_end": load_now(),
        },
        "settings": {
            **settings,
            "seeds": seeds,
            "threads": threads,
            "user_images": USER_IMAGES,
        },
    }
    if args.note:
        result["note"] = args.note
    write(result, args.out)
    return 0


def _run(
    run: str, plan: dict[str, tuple], seed: int, settings: dict[str, Any], args: Any
) -> list[tuple[str, dict[str, Any]]]:
    """The (run name, figures) of one run and seed; ``next10`` gives the user story's row
    and its two retrained rows."""
    if run == "baseline_fluo_25":
        train, test, fraction = plan["fluo_25"]
        return [(run, run_baseline(train, test, fraction, seed))]
    train, test, fraction = plan[run]
    points, background = annotate(train, fraction, np.random.default_rng(seed))
    if run != "next10":
        figures, counter = run_counter(run, train, test, points, background, seed, settings)
        if run == "fluo_25":
            figures.update(batch(counter, args.data, args.batch_out))
        return [(run, figures)]
    from counting_next10 import run_next10

    user = run_counter("user", train, test, points, background, seed, settings)
    more = run_next10(train, test, points, background, seed, settings, NEXT10, user, run_counter)
    return [("user", user[0]), *more]


def batch(counter: Any, data: Path, out: Path) -> dict[str, Any]:
    """Count ``fluo/test/images`` with the batch API into ``out``."""
    from napari_cellsparse.counting import count_folder

    done = count_folder(counter, data / "fluo" / "test" / "images", out)
    return {
        "batch_outputs": [str(p) for p in done.outputs],
        "batch_overlay_example": str(done.overlays[0]) if done.overlays else None,
    }


if __name__ == "__main__":
    sys.exit(main())
