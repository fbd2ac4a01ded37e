"""train_counter: learn to count cells from sparse, rough centre points.

``train_counter_iter`` is the generator form (yields :class:`~napari_cellsparse.progress.Progress`,
returns the :class:`~napari_cellsparse.counting.counter.Counter`) that the widget runs in a
worker; ``train_counter`` drains it and calls ``progress(step, total, info)``. As in sparse
training, ``cancel`` (a :class:`threading.Event`) stops before the next step and the counter
trained so far is tuned, saved and returned with ``info["stopped_early"] = True``; training
under an existing name continues from its weights unless ``reset=True``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Sequence
from typing import Any

import numpy as np

from ..devices import resolve_device
from ..errors import BadInputError
from ..images import as_yxc
from ..progress import Progress, on_steps, run_sync
from ..training.inputs import as_list
from ..training.model import normalize
from ..training.scale import foreground_diameter, rescale_image, resize_labels
from ..training.store import CONFIG_FILE, METADATA_FILE, model_folder, now, read_json, save_training
from .counter import BACKEND, MAX_FACTOR, MIN_FACTOR, Counter, CounterConfig
from .evaluate import match_centres
from .patches import CountingData
from .targets import (
    check_points,
    density_targets,
    points_diameter,
    points_polarity,
    probable_background,
    sigma_for,
    spacing_diameter,
    trusted_mask,
)

__all__ = ["train_counter", "train_counter_iter"]

ProgressFn = Callable[[int, int, dict[str, Any]], None]
TUNE_PIXELS = 1_000_000  # canonical-scale pixels on which the peak threshold is tuned
MIN_TUNE_SIDE = 128
PEAK_THRESHOLDS = (0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)


def train_counter_iter(
    images: np.ndarray | Sequence[np.ndarray],
    points: np.ndarray | Sequence[np.ndarray],
    name: str = "counter",
    background: Sequence[np.ndarray | None] | np.ndarray | None = None,
    regions: Sequence[np.ndarray | None] | np.ndarray | None = None,
    steps: int | None = None,
    reset: bool = False,
    device: str | None = None,
    cancel: threading.Event | None = None,
    **settings: Any,
) -> Generator[Progress, None, Counter]:
    """Train (or continue training) counter ``name``; see :func:`train_counter`."""
    folder = model_folder(name)
    imgs = [as_yxc(img) for img in as_list(images, "images")]
    several = isinstance(images, (list, tuple))
    pts = [np.asarray(p) for p in points] if several else [np.asarray(points)]
    if len(pts) != len(imgs):
        raise BadInputError(f"Give one set of points per image ({len(imgs)} images, {len(pts)}).")
    pts = [
        check_points(p, img.shape, f"image {i + 1}")
        for i, (p, img) in enumerate(zip(pts, imgs, strict=True))
    ]
    if not sum(len(p) for p in pts):
        raise BadInputError(
            "No points: click the centres of some cells (a Points layer) before training."
        )
    bgs = _masks(background, imgs, "background")
    regs = _masks(regions, imgs, "regions")
    n_channels = int(imgs[0].shape[-1])
    if any(img.shape[-1] != n_channels for img in imgs):
        raise BadInputError("All training images must have the same number of channels.")

    previous = None if reset else _previous(folder, n_channels)
    config = (previous[0] if previous else CounterConfig()).with_settings(**settings)
    total = int(steps if steps is not None else config.steps)
    if total < 0:
        raise BadInputError(f"steps must be 0 or more, got {total}.")

    yield Progress(0, total, "Preparing the training data")
    normalized = [normalize(img) for img in imgs]
    config, diameters = _calibrate(config, normalized, pts)
    data, scaled_bg, scaled_regs = _dataset(normalized, pts, bgs, regs, diameters, config)

    from .._lazy import import_torch
    from ..training.torch_network import load_state
    from .counter import WEIGHTS_FILE
    from .network import build_network, counting_loss

    torch = import_torch()
    where = resolve_device(device)
    if previous is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            net = build_network(config.to_dict(), n_channels).to(where)
    else:
        net = load_state(
            folder, WEIGHTS_FILE, lambda: build_network(config.to_dict(), n_channels), where
        )
    meta = previous[1] if previous else {"name": name, "backend": BACKEND, "created": now()}
    counter = Counter(net, config, n_channels, where, folder, meta)

    rng = np.random.default_rng(config.seed + int(meta.get("steps", 0)))
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=max(total, 1), pct_start=0.15
    )
    started = time.perf_counter()
    losses: list[float] = []
    done, stopped = 0, False
    while done < total:
        if cancel is not None and cancel.is_set():
            stopped = True
            break
        x, t, m = (
            torch.from_numpy(a).to(where)
            for a in data.sample(rng, config.batch_size, config.patch_size)
        )
        net.train()
        loss = counting_loss(net(x), t, m, config.mse_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        done += 1
        losses.append(float(loss.detach()))
        yield Progress(
            done, total, f"Training the counter: step {done}/{total}", {"loss": losses[-1]}
        )

    loop_s = time.perf_counter() - started
    yield Progress(done, total, "Tuning the peak threshold on the given points")
    threshold, tuned_f1, count_scale = _tune(counter, data, scaled_bg, scaled_regs)
    counter.config = config = config.with_settings(
        peak_threshold=threshold, count_scale=count_scale
    )
    train_s = time.perf_counter() - started
    session = {
        "date": now(),
        "steps": done,
        "images": [list(img.shape) for img in imgs],
        "points": int(sum(len(p) for p in pts)),
        "stopped_early": stopped,
        "train_s": round(train_s, 2),
        "tune_s": round(train_s - loop_s, 2),
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "tuned_point_f1": round(tuned_f1, 4),
    }
    save_training(
        folder,
        meta,
        session,
        {**config.to_dict(), "n_channels": n_channels},
        counter.save,
        name=name,
        backend=BACKEND,
        images=len(imgs),
        n_channels=n_channels,
        device=str(where),
    )
    counter.info = {**meta, "stopped_early": stopped, "train_s": train_s, "losses": losses}
    yield Progress(done, total, f"Saved counter {name!r}")
    return counter


def train_counter(
    images: np.ndarray | Sequence[np.ndarray],
    points: np.ndarray | Sequence[np.ndarray],
    name: str = "counter",
    background: Sequence[np.ndarray | None] | np.ndarray | None = None,
    regions: Sequence[np.ndarray | None] | np.ndarray | None = None,
    steps: int | None = None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    **kwargs: Any,
) -> Counter:
    """Train a cell counter from rough centre points of some cells, and save it in the store.

    ``points``: one (N, 2) array of (y, x) per image (not every cell needs one).
    ``background``: boolean masks of painted background (no cell centre there); ``regions``:
    boolean masks of regions where every cell has a point. Elsewhere, pixels away from the
    points are left out of the loss. ``diameter`` (pixels) sets the Gaussian's scale (default:
    estimated); other settings are :class:`CounterConfig` fields. ``progress(step, total,
    info)`` is called after every step (``info["loss"]``).
    """
    work = train_counter_iter(
        images, points, name, background, regions, steps=steps, cancel=cancel, **kwargs
    )
    return run_sync(work, on_steps(progress))


def _masks(
    masks: Sequence[np.ndarray | None] | np.ndarray | None, images: list[np.ndarray], what: str
) -> list[np.ndarray | None]:
    """One boolean mask (or None) per image, checked to cover the image's pixels."""
    if masks is None:
        return [None] * len(images)
    items = [masks] if isinstance(masks, np.ndarray) else list(masks)
    if len(items) != len(images):
        raise BadInputError(f"Give one {what} mask (or None) per image.")
    out: list[np.ndarray | None] = []
    for i, (mask, img) in enumerate(zip(items, images, strict=True)):
        if mask is None:
            out.append(None)
            continue
        mask = np.asarray(mask)
        if mask.shape != img.shape[:2]:
            raise BadInputError(
                f"The {what} mask of image {i + 1} has shape {mask.shape}; the image is "
                f"{img.shape[:2]}."
            )
        out.append(mask.astype(bool))
    return out


def _previous(folder: Any, n_channels: int) -> tuple[CounterConfig, dict[str, Any]] | None:
    """Config and metadata of the counter to continue, or None when there is none yet."""
    if not (folder / METADATA_FILE).exists():
        return None
    meta = read_json(folder / METADATA_FILE)
    if meta.get("backend") != BACKEND:
        raise BadInputError(
            f"The model {folder.name!r} is a {meta.get('backend')} model, not a counter; "
            "choose another name, or reset it to start afresh."
        )
    raw = read_json(folder / CONFIG_FILE)
    if int(raw.pop("n_channels", n_channels)) != n_channels:
        raise BadInputError(
            f"The counter {folder.name!r} was trained on images with another number of "
            "channels; choose another name, or reset it to start afresh."
        )
    return CounterConfig.from_dict(raw), meta


def _calibrate(
    config: CounterConfig, normalized: list[np.ndarray], points: list[np.ndarray]
) -> tuple[CounterConfig, list[float]]:
    """The config's scale settings and each training image's cell diameter (pixels).

    A training image's diameter is read at its given points (:func:`points_diameter`); when
    the user gave ``diameter``, these readings are scaled to agree with it. Counting has no
    points, so it estimates from the image's blob scale (:func:`foreground_diameter`);
    ``diameter_calibration`` (median of point-read / image-read diameters of the training
    images) makes the two agree. An image with too few points takes its calibrated image
    reading, or the median of the others, or the spacing of the points.
    """
    polarity = points_polarity(normalized, points)
    found = [foreground_diameter(img, polarity) for img in normalized]
    at_points = [
        points_diameter(img, p, polarity) for img, p in zip(normalized, points, strict=True)
    ]
    pairs = [(a, f) for a, f in zip(at_points, found, strict=True) if a and f]
    calibration = float(np.median([a / f for a, f in pairs])) if pairs else 1.0
    read = [
        a if a else (f * calibration if f else None) for a, f in zip(at_points, found, strict=True)
    ]
    known = [d for d in read if d]
    if config.diameter and known:
        ratio = float(config.diameter) / float(np.median(known))
        read = [d * ratio if d else None for d in read]
        known = [d * ratio for d in known]
        calibration *= ratio
    fallback = float(config.diameter) or (float(np.median(known)) if known else 0.0)
    if not fallback:
        spacing = [d for p in points if (d := spacing_diameter(p))]
        fallback = float(np.median(spacing)) if spacing else float(config.target_diameter)
    diameters = [d if d else fallback for d in read]
    updated = config.with_settings(
        polarity=polarity,
        diameter_calibration=round(calibration, 4),
        train_diameter=round(float(np.median(diameters)), 2),
        diameter_range=(round(min(diameters), 2), round(max(diameters), 2)),
        sigma=config.sigma or round(sigma_for(config.target_diameter), 3),
    )
    return updated, diameters


def _dataset(
    normalized: list[np.ndarray],
    points: list[np.ndarray],
    background: list[np.ndarray | None],
    regions: list[np.ndarray | None],
    diameters: list[float],
    config: CounterConfig,
) -> tuple[CountingData, list[np.ndarray | None], list[np.ndarray | None]]:
    """Every image at the canonical scale with its heat-map targets (densities x 2 pi sigma^2)
    and trusted mask; also the background and region masks at that scale."""
    scale = np.float32(2.0 * np.pi * config.sigma**2)
    radius = max(2.0, config.neighbourhood * config.radius)
    images, targets, masks, scaled_points, scaled_bg, scaled_regs = [], [], [], [], [], []
    for img, pts, bg, reg, d in zip(
        normalized, points, background, regions, diameters, strict=True
    ):
        factor = float(np.clip(config.target_diameter / d, MIN_FACTOR, MAX_FACTOR))
        scaled = rescale_image(img, factor)
        shape = scaled.shape[:2]
        ratio = np.array(shape) / np.array(img.shape[:2])
        pts_s = np.clip((pts + 0.5) * ratio - 0.5, 0, np.array(shape) - 1)
        bg_s, reg_s = (_resize_mask(m, shape) for m in (bg, reg))
        images.append(scaled)
        scaled_points.append(pts_s)
        scaled_regs.append(reg_s)
        targets.append(density_targets(pts_s, shape, config.sigma) * scale)
        weight = trusted_mask(pts_s, shape, radius, bg_s, reg_s).astype(np.float32)
        if config.probable_background > 0:
            probable = probable_background(scaled, config.polarity, pts_s, radius, margin=2.0)
            weight[probable & (weight == 0)] = config.probable_background
            bg_s = probable if bg_s is None else bg_s | probable
        masks.append(weight)
        scaled_bg.append(bg_s)
    return CountingData(images, targets, masks, scaled_points), scaled_bg, scaled_regs


def _resize_mask(mask: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray | None:
    if mask is None or mask.shape == shape:
        return mask
    return resize_labels(mask.astype(np.uint8), shape) > 0


def _tune(
    counter: Counter,
    data: CountingData,
    background: list[np.ndarray | None],
    regions: list[np.ndarray | None],
) -> tuple[float, float, float]:
    """Peak threshold, its F1 and the count scale, from what is known.

    The threshold has the best F1 of given points found (within a radius) vs. centres detected
    on (painted or probable) background or, unmatched, in complete regions. The count scale
    makes the density of the training images sum to the number of centres detected there at
    that threshold (kept within 0.8-1.25): the network draws the peaks of rough points lower
    and wider than the targets, so a little of their mass falls under the density cut.
    Both are measured on a window of each training image (see :func:`_tuning_windows`), with
    peaks and density counted only near its cell foreground, as at count time.
    """
    windows = _tuning_windows(data, background, regions)
    heats = [counter.heatmap(image) for image, *_ in windows]
    diameter = counter.config.target_diameter
    supports = [
        counter.support(heat, counter.foreground(image, diameter), diameter)
        for heat, (image, *_) in zip(heats, windows, strict=True)
    ]
    reach = counter.config.radius
    best = (-1.0, counter.config.peak_threshold, 0)
    for level in PEAK_THRESHOLDS:
        tp = fp = fn = n_found = 0
        for heat, support, (_, pts, known) in zip(heats, supports, windows, strict=True):
            found = counter.centres(heat, level, support)
            n_found += len(found)
            matched, _ = match_centres(found, pts, reach)
            tp += len(matched)
            fn += len(pts) - len(matched)
            rest = np.delete(found, matched, axis=0).astype(int)
            fp += int(known[rest[:, 0], rest[:, 1]].sum()) if len(rest) else 0
        f1 = 2.0 * tp / max(2 * tp + fp + fn, 1)
        if f1 > best[0] + 1e-9:
            best = (f1, level, n_found)
    unscaled = Counter(None, counter.config.with_settings(count_scale=1.0), 1, "cpu")
    found = best[2]
    mass = sum(
        float(unscaled.density(heat, support).sum())
        for heat, support in zip(heats, supports, strict=True)
    )
    scale = float(np.clip(found / mass, 0.8, 1.25)) if mass > 0 and found else 1.0
    return best[1], best[0], round(scale, 4)


def _tuning_windows(
    data: CountingData,
    background: list[np.ndarray | None],
    regions: list[np.ndarray | None],
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(image, given points, known-empty mask) in a central window of each training image,
    the windows together at most ``TUNE_PIXELS``: the test-time augmented heat maps of many
    large images would otherwise take longer than the training itself."""
    side = max(MIN_TUNE_SIDE, int(np.sqrt(TUNE_PIXELS / max(len(data.images), 1))))
    out = []
    for image, pts, bg, reg in zip(data.images, data.points, background, regions, strict=True):
        h, w = image.shape[:2]
        y0, x0 = max(0, h - side) // 2, max(0, w - side) // 2
        y1, x1 = min(h, y0 + side), min(w, x0 + side)
        known = np.zeros((y1 - y0, x1 - x0), bool)
        for extra in (bg, reg):
            if extra is not None:
                known |= extra[y0:y1, x0:x1]
        inside = (pts[:, 0] >= y0) & (pts[:, 0] < y1) & (pts[:, 1] >= x0) & (pts[:, 1] < x1)
        out.append((image[y0:y1, x0:x1], pts[inside] - (y0, x0), known))
    return out
