"""What the sparse-training and counting benchmarks share: the widgets' worker thread
settings, seed lists, the machine load, and per-seed summaries (mean, min, max, spread).

The widgets run every model job in a worker process whose thread counts come from
``napari_cellsparse.worker.host`` (all cores but one, a passive OpenMP wait policy). The
benchmarks set the same counts in their own process, before torch or TensorFlow is imported,
so ``train_s`` and the prediction times are what a person gets in the viewer.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import numpy as np

THREAD_KEYS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TF_NUM_INTRAOP_THREADS",
    "TF_NUM_INTEROP_THREADS",
    "OMP_WAIT_POLICY",
    "KMP_BLOCKTIME",
)


def use_worker_threads(threads: int | None = None) -> dict[str, Any]:
    """Set this process's thread counts to the widgets' worker's (``threads`` overrides the
    count) and return them for the JSON. Call before torch / TensorFlow are imported; numpy's
    BLAS pool may already be sized (the models' work is torch's or TensorFlow's)."""
    from napari_cellsparse.worker.host import _child_env, worker_threads

    count = int(threads or worker_threads())
    env = _child_env(count)
    for key in THREAD_KEYS:
        os.environ[key] = env[key]
    settings: dict[str, Any] = {
        "threads": count,
        "worker_threads": worker_threads(),
        "env": {key: env[key] for key in THREAD_KEYS},
    }
    if "torch" in sys.modules:  # already imported: its pool size no longer follows the env
        sys.modules["torch"].set_num_threads(count)
    return settings


def cpu_info() -> dict[str, Any]:
    """The processor's name and its widest vector units: TensorFlow's and torch's CPU speed
    follows them (StarDist trained 2.5x slower on one 2-core AVX2 machine than on an
    earlier one)."""
    import platform

    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            text = handle.read()
    except OSError:
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            info["cpu"] = value.strip()
        elif key.strip() == "flags":
            flags = set(value.split())
            info["avx2"] = "avx2" in flags
            info["avx512"] = "avx512f" in flags
            break
    return info


def torch_threads() -> int | None:
    """torch's intra-op thread count, once torch is imported (None before)."""
    torch = sys.modules.get("torch")
    return int(torch.get_num_threads()) if torch is not None else None


def load_now() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded."""
    return [round(x, 2) for x in os.getloadavg()]


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> [0, 1, 2]; a ValueError names the bad entry."""
    seeds = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        if not item.lstrip("-").isdigit():
            raise ValueError(f"--seeds: {item!r} is not an integer")
        seeds.append(int(item))
    if not seeds:
        raise ValueError("--seeds: give at least one seed, e.g. 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"--seeds: repeated seed in {text!r}")
    return seeds


def over_seeds(values: list[float | None]) -> dict[str, Any]:
    """Mean, min, max and spread (max - min) of the finite values; ``n`` counts them."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], np.float64)
    if not len(v):
        return {"n": 0, "mean": None, "min": None, "max": None, "spread": None}
    return {
        "n": len(v),
        "mean": round(float(v.mean()), 4),
        "min": round(float(v.min()), 4),
        "max": round(float(v.max()), 4),
        "spread": round(float(v.max() - v.min()), 4),
    }


def megapixels(images: list[np.ndarray]) -> float:
    """Pixels (Y x X, channels not counted) of the images, in millions."""
    return sum(int(img.shape[0]) * int(img.shape[1]) for img in images) / 1e6
