"""train_counter: learn to count cells from sparse, rough centre points.

``train_counter_iter`` is the generator form (yields
:class:`~napari_cellsparse.core.progress.Progress`,
returns the :class:`~napari_cellsparse.counting.counter.Counter`) that the widget runs in a
worker; ``train_counter`` drains it and calls ``progress(step, total, info)``. As in sparse
training, ``cancel`` (a :class:`threading.Event`) stops before the next step and the counter
trained so far is tuned, saved and returned with ``info["stopped_early"] = True``; training
under an existing name continues from its weights unless ``reset=True``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Any

import numpy as np

from ..core.devices import resolve_device
from ..core.errors import BadInputError
from ..core.images import as_list, as_yxc, normalize
from ..core.limits import check_settings, check_training
from ..core.progress import Progress, on_steps, run_sync
from ..models.schedule import rate_schedule
from ..models.session import TrainingSession
from ..models.store import model_folder
from .counter import BACKEND, Counter, CounterConfig
from .evaluate import match_centres
from .patches import CountingData
from .training_data import CounterAnnotation, check_masks, point_sets

__all__ = ["train_counter", "train_counter_iter"]

ProgressFn = Callable[[int, int, dict[str, Any]], None]
TUNE_PIXELS = 1_000_000  # canonical-scale pixels on which the peak threshold is tuned
MIN_TUNE_SIDE = 128
PEAK_THRESHOLDS = (0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
TUNE_TOLERANCE = 2  # detections: F1 this close to the best is as good (see choose_threshold)


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
    updates: Callable[[], dict[str, Any] | None] | None = None,
    update_every: int = 25,
    **settings: Any,
) -> Generator[Progress, None, Counter]:
    """Train (or continue training) counter ``name``; see :func:`train_counter`.

    ``updates()`` is asked every ``update_every`` steps for changed annotation: None, or a
    dict with any of ``points`` (one array per image, or one array for one image),
    ``background`` and ``regions``. Training goes on from the current weights on the new
    targets; that step's ``info["annotation"]`` has ``cells`` (the points) and
    ``trusted_pixels`` (the first step's has the starting ones); an update that cannot be
    used is reported in ``info["annotation_error"]``.
    """
    check_training(steps, settings)
    folder = model_folder(name)
    imgs = [as_yxc(img) for img in as_list(images, "images")]
    pts = point_sets(points, imgs, isinstance(images, (list, tuple)))
    bgs = check_masks(background, imgs, "background")
    regs = check_masks(regions, imgs, "regions")
    n_channels = int(imgs[0].shape[-1])
    if any(img.shape[-1] != n_channels for img in imgs):
        raise BadInputError("All training images must have the same number of channels.")

    session = TrainingSession(folder, BACKEND, n_channels, reset, "a counter", "counter")
    previous = session.previous_config
    config = (CounterConfig.from_dict(previous) if previous else CounterConfig()).with_settings(
        **settings
    )
    check_settings(config.to_dict())  # a stored counter's settings, too
    total = int(steps if steps is not None else config.steps)

    yield Progress(0, total, "Preparing the training data")
    normalized = [normalize(img) for img in imgs]
    annotation = CounterAnnotation(imgs, normalized, pts, bgs, regs, config)
    config = annotation.config

    from ..core.lazy import import_torch
    from ..models.torch_io import load_state, to_device
    from .counter import WEIGHTS_FILE
    from .network import build_network

    torch = import_torch()
    where = resolve_device(device)
    if session.source is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            net = to_device(build_network(config.to_dict(), n_channels), where)
    else:
        net = load_state(
            session.source, WEIGHTS_FILE, lambda: build_network(config.to_dict(), n_channels), where
        )
    counter = Counter(net, config, n_channels, where, folder, session.meta)

    rng = session.rng(config.seed)
    stepper = _steps(net, annotation, config, total, rng, where)
    yield from session.run(
        stepper,
        total,
        "Training the counter",
        config.learning_rate,
        cancel=cancel,
        updates=updates,
        update_every=update_every,
        rebuild=annotation.rebuild,
        figures=annotation.figures(),
        unit="points",
    )
    session.check_weights(counter.weights_finite(), config.learning_rate)
    yield Progress(session.done, total, "Tuning the peak threshold on the given points")
    counter.config = annotation.config
    threshold, tuned_f1, count_scale = _tune(
        counter, annotation.data, annotation.scaled_bg, annotation.scaled_regs
    )
    counter.config = config = annotation.config.with_settings(
        peak_threshold=threshold, count_scale=count_scale
    )
    record = session.record(
        images=[list(img.shape) for img in imgs],
        points=int(sum(len(p) for p in annotation.points)),
        tuned_point_f1=round(tuned_f1, 4),
    )
    session.save(
        record,
        {**config.to_dict(), "n_channels": n_channels},
        counter.save,
        images=len(imgs),
        n_channels=n_channels,
        device=str(where),
    )
    counter.info = session.result_info()
    yield Progress(session.done, total, f"Saved counter {name!r}")
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
    info)`` is called after every step (``info["loss"]``). A loss or weights that stop being
    finite numbers raise :class:`~napari_cellsparse.core.errors.TrainingDivergedError` and nothing
    is saved (the previous version stays).
    """
    work = train_counter_iter(
        images, points, name, background, regions, steps=steps, cancel=cancel, **kwargs
    )
    return run_sync(work, on_steps(progress))


def _steps(
    net: Any,
    annotation: CounterAnnotation,
    config: CounterConfig,
    total: int,
    rng: np.random.Generator,
    where: str,
) -> Iterator[dict[str, float]]:
    """``total`` AdamW steps on crops of the annotation's current data: a one-cycle rate, or
    a constant one; the weights end on the mean of the last ``average_tail`` of them."""
    from ..core.lazy import import_torch
    from ..models.torch_io import weight_average
    from .network import counting_loss

    torch = import_torch()
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.learning_rate, weight_decay=1e-4)
    schedule = rate_schedule(torch, optimizer, config.learning_rate, total, 0.15, config.one_cycle)
    average = weight_average(net, total, config.average_tail)
    for step in range(total):
        x, t, m = (
            torch.from_numpy(a).to(where)
            for a in annotation.data.sample(rng, config.batch_size, config.patch_size)
        )
        net.train()
        loss = counting_loss(net(x), t, m, config.mse_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if schedule is not None:
            schedule.step()
        average.after_step(step)
        yield {"loss": float(loss.detach())}


def _tune(
    counter: Counter,
    data: CountingData,
    background: list[np.ndarray | None],
    regions: list[np.ndarray | None],
) -> tuple[float, float, float]:
    """Peak threshold, its F1 and the count scale, from what is known.

    The threshold is scored by the F1 of given points found (within a radius) vs. centres
    detected on (painted or probable) background or, unmatched, in complete regions, and
    chosen by :func:`choose_threshold`. The count scale
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
    table = []
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
        table.append((level, tp, fp, fn, n_found))
    level, f1, found = choose_threshold(table)
    unscaled = Counter(None, counter.config.with_settings(count_scale=1.0), 1, "cpu")
    mass = sum(
        float(unscaled.density(heat, support).sum())
        for heat, support in zip(heats, supports, strict=True)
    )
    scale = float(np.clip(found / mass, 0.8, 1.25)) if mass > 0 and found else 1.0
    return level, f1, round(scale, 4)


def choose_threshold(table: list[tuple[float, int, int, int, int]]) -> tuple[float, float, int]:
    """The peak threshold (with its F1 and number of centres) from rows of ``(level, tp, fp,
    fn, found)`` in rising levels: the lowest whose F1 is within ``TUNE_TOLERANCE``
    detections of the best.

    A few dozen given points decide the tuning, so one or two detections more or less are
    chance: in a DSB 2018 user story run (34 points in the windows) two background peaks
    fewer made 0.3 the best of levels that all found the same 27 points, and on 17
    fluorescence images it had not trained on, that counter counted 3-4 % fewer cells at 0.3
    than at 0.03-0.2 (localisation F1 0.870 vs. 0.882-0.884). The lowest level within the
    margin keeps the cells the network draws faint.
    """
    scored = [
        (level, 2.0 * tp / max(2 * tp + fp + fn, 1), 2 * tp + fp + fn, found)
        for level, tp, fp, fn, found in table
    ]
    best = max(scored, key=lambda row: row[1])
    margin = TUNE_TOLERANCE / max(best[2], 1)
    level, f1, _, found = next(row for row in scored if row[1] >= best[1] - margin - 1e-9)
    return float(level), float(f1), int(found)


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
