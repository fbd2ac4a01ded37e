"""Scale-out: block-wise vs whole-image prediction of one model, and a Dask batch vs a loop.

One tiny U-Net is trained on a 192 x 192 synthetic nuclei image (sparse labels, k = 8). Then:

- ``sizes``: synthetic nuclei images of 1, 4 and 16 megapixels (``--sizes 1,4,16,64``; 1024²,
  2048², 4096², 8192²; about 60 nuclei per 0.26 Mpx, made by tiling 1024² ``make_nuclei``
  images with different seeds) are written once as uncompressed TIFFs. Each (size, mode) runs
  in a fresh process (``--one``), so its peak RSS (``ru_maxrss``) is its own. ``blockwise``
  opens the TIFF with ``open_image`` (memory-mapped), builds a ``ModelSegmenter`` and runs
  ``segment_to_file`` into a tiled ``.tif`` (block ``--block``, halo ``segmenter.halo``);
  ``whole`` reads the TIFF with ``tifffile.imread``, calls ``model.predict`` and writes the
  labels with the same tiled-TIFF writer. Both use the same diameter (estimated once by a
  ``ModelSegmenter`` on the 1 Mpx image). ``seconds`` is file to file, after imports and
  model load; ``baseline_rss_mb`` is the RSS at that point and ``growth_mb`` the peak above
  it. ``peak_anon_mb`` is the largest anonymous RSS seen by a 20 ms sampler (memory-mapped
  image pages count in ``ru_maxrss`` but are page cache, not allocations).
  ``iou_match_frac`` is ``tp / n_true`` of ``stardist.matching.matching(whole, blockwise,
  thresh=0.9)``, whole-image objects as the reference. ``--block2`` (default 2048) repeats
  the block-wise run of the largest size with a larger block.
- ``batch``: ``--batch-n`` images of ``--batch-px`` pixels square through ``run_batch`` (mask
  and table per image): ``scheduler=None`` (a LocalCluster of 2 single-threaded workers,
  started by the run), against a LocalCluster started beforehand (``dask_warm_s``, start-up
  excluded), against ``scheduler="none"`` (a plain loop in one process, torch on both cores).
  Each in a fresh process; the masks must be identical.

Prints one JSON object (``--out`` also writes it). ``os.getloadavg()`` is recorded before and
after every measurement: run on an idle machine, or read the timings with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

TILE = 1024
OBJECTS_PER_TILE = 240  # ~60 nuclei per 0.26 Mpx
RADIUS = (7.0, 9.0)
SIZES = {1: 1024, 4: 2048, 16: 4096, 64: 8192}


def _log(message: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _AnonSampler:
    """The largest anonymous RSS (RssAnon) seen, polled every 20 ms in a thread."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _status_mb("RssAnon"))
            self._stop.wait(0.02)

    def __enter__(self) -> _AnonSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _status_mb("RssAnon"))


# --- images -------------------------------------------------------------------------------


def make_image(side: int, seed0: int) -> tuple[Any, Any]:
    """A ``side`` x ``side`` nuclei image tiled from 1024² ``make_nuclei`` tiles (distinct
    seeds, label ids offset per tile; objects stay 2 px from tile edges, so none touch)."""
    import numpy as np

    from napari_cellsparse.samples.generated import make_nuclei

    if side <= TILE:
        n = max(1, round(OBJECTS_PER_TILE * side * side / TILE**2))
        return make_nuclei((side, side), n, radius=RADIUS, seed=seed0)
    image = np.zeros((side, side), np.uint16)
    truth = np.zeros((side, side), np.int32)
    offset = 0
    k = 0
    for y in range(0, side, TILE):
        for x in range(0, side, TILE):
            img, lab = make_nuclei((TILE, TILE), OBJECTS_PER_TILE, radius=RADIUS, seed=seed0 + k)
            k += 1
            image[y : y + TILE, x : x + TILE] = img
            truth[y : y + TILE, x : x + TILE] = np.where(lab > 0, lab + offset, 0)
            offset += int(lab.max())
    return image, truth


def train_model(steps: int) -> tuple[Any, dict[str, Any]]:
    from napari_cellsparse.samples.generated import make_nuclei
    from napari_cellsparse.samples.sparse_annotation import sparse_from_truth
    from napari_cellsparse.training import train

    image, truth = make_nuclei((192, 192), 30, radius=RADIUS, seed=1)
    sparse = sparse_from_truth(image, truth, k=8, band=10)
    started = time.perf_counter()
    model = train(
        "unet",
        image,
        sparse,
        name="scale-bench",
        steps=steps,
        base_filters=8,
        patch_size=64,
        batch_size=4,
    )
    info = {
        "backend": "unet",
        "train_image": "make_nuclei 192x192, 30 nuclei, radius 7-9, seed 1; sparse k=8, band 10",
        "steps": steps,
        "base_filters": 8,
        "patch_size": 64,
        "batch_size": 4,
        "train_s": round(time.perf_counter() - started, 1),
        "target_diameter": model.config.target_diameter,
        "train_diameter": model.scale.train_diameter,
        "folder": str(model.folder),
    }
    return model, info


# --- one measurement in a fresh process -------------------------------------------------------


def one(
    size: int,
    mode: str,
    image_path: Path,
    out_path: Path,
    model_folder: str,
    diameter: float,
    block: int,
) -> dict[str, Any]:
    """Predict one image in this (fresh) process; peak memory is this process's own."""
    import numpy as np
    import tifffile
    import zarr  # noqa: F401  (imported lazily by the block-wise writer: not timed)

    from napari_cellsparse.core.progress import run_sync
    from napari_cellsparse.formats.image_sources import open_image
    from napari_cellsparse.scale.blockwise import ModelSegmenter, segment_to_file, write_tiff_tiled
    from napari_cellsparse.training import load_model

    model = load_model(model_folder)
    # warm torch up on a tiny image, so neither mode pays for first-call set-up
    model.predict(np.full((64, 64), 300, np.uint16) + np.eye(64, dtype=np.uint16), diameter)
    baseline = _status_mb("VmRSS")
    baseline_anon = _status_mb("RssAnon")
    result: dict[str, Any] = {"load_before": _load()}
    with _AnonSampler() as anon:
        started = time.perf_counter()
        if mode == "blockwise":
            with open_image(image_path) as source:
                segmenter = ModelSegmenter(model, source, diameter=diameter)
                halo = segmenter.halo
                done = run_sync(segment_to_file(source, segmenter, out_path, block, halo))
            result.update(
                block=block,
                halo=halo,
                blocks=done.blocks,
                n_objects=done.n_objects,
                cut_objects=done.cut_objects,
            )
        else:
            image = tifffile.imread(image_path)
            read_s = time.perf_counter() - started
            labels = model.predict(image, diameter=diameter)
            predict_s = time.perf_counter() - started - read_s
            write_tiff_tiled(labels, out_path)
            result.update(
                n_objects=int(labels.max()), read_s=round(read_s, 2), predict_s=round(predict_s, 2)
            )
        seconds = time.perf_counter() - started
    mpx = SIZES[size] ** 2 / 1e6
    peak = _peak_mb()
    result.update(
        seconds=round(seconds, 2),
        mpx_per_s=round(mpx / seconds, 3),
        peak_rss_mb=peak,
        baseline_rss_mb=baseline,
        growth_mb=round(peak - baseline, 1),
        peak_anon_mb=anon.peak,
        baseline_anon_mb=baseline_anon,
        torch_threads=_torch_threads(),
        load_after=_load(),
    )
    return result


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def batch_one(mode: str, in_dir: Path, out_dir: Path, model_folder: str) -> dict[str, Any]:
    """One batch run in this (fresh) process: ``loop``, ``dask`` or ``dask_warm``."""
    from napari_cellsparse.core.progress import run_sync
    from napari_cellsparse.scale.batch import BatchOptions, run_batch
    from napari_cellsparse.scale.workspace import folder_items

    items = folder_items(in_dir, out_dir, geojson=False)
    result: dict[str, Any] = {"load_before": _load()}
    cluster = None
    started = time.perf_counter()
    if mode == "loop":
        summary = run_sync(run_batch(items, model_folder, BatchOptions(), scheduler="none"))
    elif mode == "dask":
        summary = run_sync(
            run_batch(
                items, model_folder, BatchOptions(), scheduler=None, workers=2, threads_per_worker=1
            )
        )
    else:
        from distributed import LocalCluster

        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        )
        result["cluster_start_s"] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()
        summary = run_sync(
            run_batch(items, model_folder, BatchOptions(), scheduler=cluster.scheduler_address)
        )
    wall = time.perf_counter() - started
    if cluster is not None:
        cluster.close()
    result.update(
        seconds=round(wall, 2),
        summary_seconds=round(summary.seconds, 2),
        done=len(summary.of("done")),
        failed=[r.error for r in summary.of("failed")],
        per_image_s_sum=round(sum(r.seconds for r in summary.results), 2),
        scheduler=summary.scheduler,
        load_after=_load(),
    )
    return result


def _child(args: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    command = [sys.executable, __file__, *args]
    _log("child: " + " ".join(args[:3]) + (f" {env}" if env else ""))
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env} if env else None,
    )
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-5:]
        return {"error": f"exit {done.returncode}: " + " | ".join(tail)}
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- comparisons in the parent ------------------------------------------------------------


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run with the median time (of an odd number; the lower middle otherwise), with
    every run's seconds and peak RSS beside it."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return runs[0]
    ordered = sorted(good, key=lambda r: r["seconds"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["runs_s"] = [r["seconds"] for r in good]
    chosen["runs_peak_rss_mb"] = [r["peak_rss_mb"] for r in good]
    chosen["runs_load_before"] = [r["load_before"][0] for r in good]
    chosen["errors"] = [r["error"] for r in runs if "error" in r]
    return chosen


def _match(reference: Any, other: Any, thresh: float) -> Any:
    from stardist.matching import matching

    return matching(reference, other, thresh=thresh)


def _read(path: Path) -> Any:
    import tifffile

    return tifffile.imread(path)


def _goal(value: float | None, target: float, higher: bool) -> dict[str, Any]:
    met = None if value is None else (value >= target if higher else value <= target)
    return {"value": value, "target": (">= " if higher else "<= ") + str(target), "met": met}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1,4,16", help="megapixels: 1, 4, 16, 64")
    parser.add_argument("--block", type=int, default=1024)
    parser.add_argument(
        "--block2",
        type=int,
        default=2048,
        help="a second block size for the largest image (0: skip)",
    )
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3, help="runs per (size, mode); median")
    parser.add_argument("--batch-repeat", type=int, default=2, help="rounds of the 3 batch runs")
    parser.add_argument(
        "--no-malloc-variant",
        dest="malloc_variant",
        action="store_false",
        help="skip the block-wise runs with MALLOC_MMAP_THRESHOLD_=1048576",
    )
    parser.add_argument("--batch-n", type=int, default=20)
    parser.add_argument("--batch-px", type=int, default=512)
    parser.add_argument("--no-batch", action="store_true")
    parser.add_argument("--workdir", type=Path, default=None, help="kept (default: temporary)")
    parser.add_argument("--out", type=Path, default=None)
    # internal: one measurement in a fresh process
    parser.add_argument("--one", nargs=2, metavar=("SIZE", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--batch-one", help=argparse.SUPPRESS)
    parser.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--labels", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--diameter", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.one:
        size, mode = int(args.one[0]), args.one[1]
        print(
            json.dumps(
                one(size, mode, args.image, args.labels, args.model, args.diameter, args.block)
            )
        )
        return 0
    if args.batch_one:
        print(json.dumps(batch_one(args.batch_one, args.image, args.labels, args.model)))
        return 0

    import numpy as np
    import tifffile

    t0 = time.perf_counter()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="scale-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    from napari_cellsparse.core.paths import HOME_ENV

    os.environ[HOME_ENV] = str(work / "home")  # never the user's models
    sizes = [int(s) for s in args.sizes.split(",")]
    out: dict[str, Any] = {
        "benchmark": "scale",
        "block": args.block,
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "load_start": _load(),
    }
    _log("training")
    from napari_cellsparse.formats.image_sources import open_image
    from napari_cellsparse.scale.blockwise import ModelSegmenter

    model, out["model"] = train_model(args.steps)
    folder = str(model.folder)

    out["sizes"] = {}
    truth_1 = None
    diameter = None
    for size in sizes:
        side = SIZES[size]
        path = work / f"image_{size}mpx.tif"
        started = time.perf_counter()
        image, truth = make_image(side, seed0=100)
        tifffile.imwrite(path, image)  # uncompressed, contiguous: memory-mappable
        entry: dict[str, Any] = {
            "shape": [side, side],
            "n_true_objects": int(truth.max()),
            "make_image_s": round(time.perf_counter() - started, 1),
        }
        if diameter is None:
            with open_image(path) as source:
                diameter = ModelSegmenter(model, source).diameter
            out["model"]["diameter_used"] = round(diameter, 2)
        if size == min(sizes):
            truth_1 = truth
        del image, truth
        _log(f"{size} Mpx: {entry['n_true_objects']} objects")
        common = ["--image", str(path), "--model", folder, "--diameter", repr(diameter)]
        runs: dict[str, list[dict[str, Any]]] = {"blockwise": [], "whole": []}
        for _ in range(args.repeat):  # interleaved, so a change of load hits both modes
            for mode in ("blockwise", "whole"):
                run = _child(
                    [
                        "--one",
                        str(size),
                        mode,
                        *common,
                        "--labels",
                        str(work / f"{mode}_{size}.tif"),
                        "--block",
                        str(args.block),
                    ],
                    timeout=1800,
                )
                runs[mode].append(run)
                _log(f"{size} Mpx {mode}: {run}")
        for mode in ("blockwise", "whole"):
            entry[mode] = _median_run(runs[mode])
        if size in (min(sizes), max(sizes)) and args.malloc_variant:
            # the same block-wise run with glibc's dynamic mmap threshold pinned at 1 MiB:
            # shows which part of the growth is freed memory the allocator keeps
            entry["blockwise_mmap_threshold_1mib"] = _child(
                [
                    "--one",
                    str(size),
                    "blockwise",
                    *common,
                    "--labels",
                    str(work / f"variant_{size}.tif"),
                    "--block",
                    str(args.block),
                ],
                timeout=1800,
                env={"MALLOC_MMAP_THRESHOLD_": "1048576"},
            )
        if "error" not in entry["blockwise"] and "error" not in entry["whole"]:
            whole = _read(work / f"whole_{size}.tif")
            blockwise = _read(work / f"blockwise_{size}.tif")
            m = _match(whole, blockwise, 0.9)
            entry["iou_match_frac"] = round(m.tp / max(m.n_true, 1), 4)
            entry["iou_match"] = {
                "n_whole": m.n_true,
                "n_blockwise": m.n_pred,
                "tp": m.tp,
                "mean_matched_iou": round(float(m.mean_matched_score), 4),
            }
            entry["identical_labels_fg"] = bool(np.array_equal(whole > 0, blockwise > 0))
            entry["throughput_ratio"] = round(
                entry["blockwise"]["mpx_per_s"] / entry["whole"]["mpx_per_s"], 3
            )
            if size == min(sizes) and truth_1 is not None:
                entry["f1_vs_truth_iou05"] = {
                    "whole": round(float(_match(truth_1, whole, 0.5).f1), 4),
                    "blockwise": round(float(_match(truth_1, blockwise, 0.5).f1), 4),
                }
            del whole, blockwise
        out["sizes"][f"{size}mpx"] = entry
        print(json.dumps(out["sizes"][f"{size}mpx"]), file=sys.stderr, flush=True)

    largest = max(sizes)
    if args.block2:
        path = work / f"image_{largest}mpx.tif"
        label_path = work / f"blockwise2_{largest}.tif"
        extra = _child(
            [
                "--one",
                str(largest),
                "blockwise",
                "--image",
                str(path),
                "--model",
                folder,
                "--diameter",
                repr(diameter),
                "--labels",
                str(label_path),
                "--block",
                str(args.block2),
            ],
            timeout=1800,
        )
        if "error" not in extra and (work / f"whole_{largest}.tif").exists():
            m = _match(_read(work / f"whole_{largest}.tif"), _read(label_path), 0.9)
            extra["iou_match_frac"] = round(m.tp / max(m.n_true, 1), 4)
        out["sizes"][f"{largest}mpx"][f"blockwise_block{args.block2}"] = extra
        _log(f"block {args.block2}: {extra}")

    if not args.no_batch:
        out["batch"] = run_batch_bench(args, work, folder)

    _summarise(out, sizes)
    out["load_end"] = _load()
    out["total_s"] = round(time.perf_counter() - t0, 1)
    out["note"] = (
        "Shared 2-core machine, not idle (other jobs, one training a model, ran alongside): "
        "load averages (1, 5, 15 min) are recorded before/after every measurement; timings "
        "are pessimistic and noisy. peak_rss_mb is ru_maxrss of a fresh process per "
        "measurement (after imports, model load and a 64x64 warm-up: baseline_rss_mb); it "
        "counts the memory-mapped input pages the block-wise run touched, peak_anon_mb does "
        "not. Images are tiled from 1024x1024 make_nuclei tiles (the background ramp repeats "
        "per tile)."
    )
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def run_batch_bench(args: argparse.Namespace, work: Path, folder: str) -> dict[str, Any]:
    import numpy as np
    import tifffile

    from napari_cellsparse.samples.generated import make_nuclei

    in_dir = work / "batch_in"
    in_dir.mkdir(exist_ok=True)
    n_obj = max(1, round(OBJECTS_PER_TILE * args.batch_px**2 / TILE**2))
    for k in range(args.batch_n):
        image, _ = make_nuclei((args.batch_px, args.batch_px), n_obj, radius=RADIUS, seed=500 + k)
        tifffile.imwrite(in_dir / f"img_{k:02d}.tif", image)
    result: dict[str, Any] = {
        "n_images": args.batch_n,
        "image_shape": [args.batch_px] * 2,
        "outputs": "labels .tif + objects .csv per image",
    }
    modes = ["dask", "dask_warm", "loop"]
    runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
    for round_ in range(args.batch_repeat):
        for mode in modes[round_ % 3 :] + modes[: round_ % 3]:  # rotate the order per round
            out_dir = work / f"batch_{mode}"
            shutil.rmtree(out_dir, ignore_errors=True)  # else resume skips every image
            run = _child(
                [
                    "--batch-one",
                    mode,
                    "--image",
                    str(in_dir),
                    "--labels",
                    str(out_dir),
                    "--model",
                    folder,
                ],
                timeout=1800,
            )
            run["round"] = round_
            runs[mode].append(run)
            _log(f"batch {mode}: {run}")
    result["runs"] = runs
    if all("error" not in r for rs in runs.values() for r in rs):
        from statistics import median

        def med(mode: str, key: str = "seconds") -> float:
            return round(median(r[key] for r in runs[mode]), 2)

        result["dask_s"] = med("dask")
        result["dask_warm_s"] = med("dask_warm")
        result["cluster_start_s"] = med("dask_warm", "cluster_start_s")
        result["loop_s"] = med("loop")
        result["ratio"] = round(result["dask_s"] / result["loop_s"], 3)
        result["ratio_warm"] = round(result["dask_warm_s"] / result["loop_s"], 3)
        result["ratio_per_round"] = [
            round(d["seconds"] / lp["seconds"], 3)
            for d, lp in zip(runs["dask"], runs["loop"], strict=True)
        ]
        same = True
        for image in sorted(in_dir.iterdir()):
            name = f"{image.stem}_labels.tif"
            ref = tifffile.imread(work / "batch_loop" / name)
            for mode in ("dask", "dask_warm"):
                same &= bool(np.array_equal(ref, tifffile.imread(work / f"batch_{mode}" / name)))
        result["outputs_identical"] = same
    return result


def _summarise(out: dict[str, Any], sizes: list[int]) -> None:
    entries = out["sizes"]
    small, large = f"{min(sizes)}mpx", f"{max(sizes)}mpx"

    def get(key: str, *path: str) -> float | None:
        node: Any = entries.get(key, {})
        for p in path:
            if not isinstance(node, dict) or p not in node:
                return None
            node = node[p]
        return node

    peak_small, peak_large = (
        get(small, "blockwise", "peak_rss_mb"),
        get(large, "blockwise", "peak_rss_mb"),
    )
    ratio = round(peak_large / peak_small, 3) if peak_small and peak_large else None
    out[f"memory_ratio_{max(sizes)}_vs_{min(sizes)}"] = ratio
    anon_small = get(small, "blockwise", "peak_anon_mb")
    anon_large = get(large, "blockwise", "peak_anon_mb")
    out[f"anon_memory_ratio_{max(sizes)}_vs_{min(sizes)}"] = (
        round(anon_large / anon_small, 3) if anon_small and anon_large else None
    )
    throughput = [get(f"{s}mpx", "throughput_ratio") for s in sizes]
    ious = [get(f"{s}mpx", "iou_match_frac") for s in sizes]
    batch = out.get("batch", {})
    out["goals"] = {
        "blockwise_peak_memory_16_vs_1": _goal(ratio, 1.5, higher=False),
        "throughput_ratio_min": _goal(
            min(throughput) if None not in throughput else None, 0.9, higher=True
        ),
        "throughput_ratio_by_size": dict(zip([f"{s}mpx" for s in sizes], throughput, strict=True)),
        "iou_match_frac_min": _goal(min(ious) if None not in ious else None, 0.98, higher=True),
        "batch_dask_vs_loop": _goal(batch.get("ratio"), 1.1, higher=False),
    }


if __name__ == "__main__":
    raise SystemExit(main())
