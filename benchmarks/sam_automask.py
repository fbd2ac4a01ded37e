"""SAM automatic masks: our generator against ``segment_anything.SamAutomaticMaskGenerator``.

Prints one JSON object with a sub-object per run:

* ``speed_512`` / ``speed_1024``: the real vit_t model (same seeded random weights on both
  sides), a synthetic nuclei image, default parameters. ``ref_s`` / ``ours_s`` are whole
  ``generate`` calls; ``*_stages`` split them into the image encoder, the decoder (prompt
  encoder + mask decoder) and upsampling + scoring (everything else).
* ``same_default`` / ``same_crop1`` / ``same_minarea20``: both decoders replaced by the same
  :class:`~napari_cellsparse.samples.generated.LabelOracle` (random weights decode noise that no
  threshold keeps), so at least 100 real objects survive; everything after the decoder runs
  for real. ``matched_frac`` is the share of reference masks matched by one of ours at
  IoU >= 0.9; ``post_ref_s`` / ``post_ours_s`` the time after the encoder, oracle excluded.

* ``large``: a 4096 x 4096 image tiled for SAM (1024 px tiles, at least 128 px overlap),
  each step in a process of its own so that ``peak_rss_mb`` is that step's: a box in the
  middle of the last tile on a fresh image (``large_box_ms``, ``tiles_embedded_for_box``),
  a second box there (``large_box_warm_ms``), and embedding every tile up front as the peer
  tools do (``embed_all_s``, its ``embed_all_peak_rss_mb`` with the default cache of 8
  embeddings). ``rss_before_*`` is the resident memory (model and image loaded) just before
  the step; a peak includes what the process needed before it (e.g. making the image).
* ``slide_10k``: the box step on a 10000 x 10000 x 2 uint16 slide stored as zarr on disk:
  memory follows the tiles in use, not the 400 MB image.

Run on an otherwise idle machine: ``.venv/bin/python benchmarks/sam_automask.py``
(``--device cuda`` on a GPU; ``--only same``, ``speed`` or ``large`` for a part).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np


def log(message: str) -> None:
    print(f"[sam_automask] {message}", file=sys.stderr, flush=True)


class Clock:
    """Cumulative wall time of wrapped callables, by stage name."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.sync = sync

    def wrap(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            self.sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.sync()
                self.seconds[stage] += time.perf_counter() - start

        return timed

    def wrap_generator(self, stage: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        """Like :meth:`wrap` for a generator function: times the iteration, not the call."""

        def timed(*args: Any, **kwargs: Any) -> Any:
            self.sync()
            start = time.perf_counter()
            try:
                return (yield from fn(*args, **kwargs))
            finally:
                self.sync()
                self.seconds[stage] += time.perf_counter() - start

        return timed


def _model(device: str) -> Any:
    import torch

    from napari_cellsparse.sam.models import build_sam

    torch.manual_seed(0)
    return build_sam("vit_t").to(device).eval()


def _image(size: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    from napari_cellsparse.samples.generated import make_nuclei

    return make_nuclei((size, size), n_objects=n, radius=(7.0, 12.0), seed=1)


def _reference(sam: Any, params: dict[str, Any], clock: Clock, oracle: Any = None) -> Any:
    from segment_anything import SamAutomaticMaskGenerator

    from napari_cellsparse._testing import oracle_predict_torch

    generator = SamAutomaticMaskGenerator(sam, output_mode="binary_mask", **params)
    predictor = generator.predictor
    predictor.set_image = clock.wrap("encoder", predictor.set_image)
    if oracle is not None:
        oracle_call = clock.wrap("oracle", oracle)
        predictor.predict_torch = oracle_predict_torch(predictor, oracle_call)
    sam.prompt_encoder.forward = clock.wrap("decoder", sam.prompt_encoder.forward)
    sam.mask_decoder.forward = clock.wrap("decoder", sam.mask_decoder.forward)
    return generator


def _unwrap(sam: Any) -> None:
    for module in (sam.prompt_encoder, sam.mask_decoder):
        module.__dict__.pop("forward", None)


def _ours(sam: Any, clock: Clock, oracle: Any = None) -> Any:
    import napari_cellsparse.sam.automask as automask
    import napari_cellsparse.sam.prompting as prompting
    from napari_cellsparse._testing import OracleDecoder
    from napari_cellsparse.sam.prompting import SamPrompter

    device = next(sam.parameters()).device
    prompter = SamPrompter(sam, "bench", batch_size=1 if device.type == "cpu" else 16)
    prompting.compute_embedding = clock.wrap_generator("encoder", _original_embedding)
    if oracle is not None:
        prompter.decoder = OracleDecoder(prompter.decoder, clock.wrap("oracle", oracle))
    else:
        for name in ("embed_prompts", "decode_scores", "decode_masks"):
            setattr(prompter.decoder, name, clock.wrap("decoder", getattr(prompter.decoder, name)))
    automask.upsample_window = clock.wrap("upsample", _original_upsample)
    return prompter


def _original_embedding(*args: Any, **kwargs: Any) -> Any:
    from napari_cellsparse.sam.embedding import compute_embedding

    return (yield from compute_embedding(*args, **kwargs))


def _original_upsample(*args: Any, **kwargs: Any) -> Any:
    from napari_cellsparse.sam.upsample import upsample_window

    return upsample_window(*args, **kwargs)


def speed(size: int, device: str) -> dict[str, Any]:
    import torch

    from napari_cellsparse.core.images import to_rgb_uint8
    from napari_cellsparse.core.progress import run_sync
    from napari_cellsparse.sam.automask import generate_masks

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    image, _ = _image(size, 60)
    rgb = to_rgb_uint8(image)
    sam = _model(device)
    ref_clock = Clock(sync)
    generator = _reference(sam, {}, ref_clock)
    log(f"speed {size}: reference")
    start = time.perf_counter()
    ref = generator.generate(rgb)
    ref_s = time.perf_counter() - start
    _unwrap(sam)
    ours_clock = Clock(sync)
    prompter = _ours(sam, ours_clock)
    log(f"speed {size}: ours")
    start = time.perf_counter()
    result = run_sync(generate_masks(prompter, image))
    ours_s = time.perf_counter() - start
    ref_stages = {k: round(v, 3) for k, v in ref_clock.seconds.items()}
    ref_stages["upsample_score_other"] = round(ref_s - sum(ref_clock.seconds.values()), 3)
    our_stages = {k: round(v, 3) for k, v in ours_clock.seconds.items()}
    our_stages["other"] = round(ours_s - sum(ours_clock.seconds.values()), 3)
    return {
        "size": size,
        "ref_s": round(ref_s, 2),
        "ours_s": round(ours_s, 2),
        "ratio": round(ours_s / ref_s, 3),
        "n_ref": len(ref),
        "n_ours": len(result),
        "ref_stages": ref_stages,
        "ours_stages": our_stages,
    }


def same(params: dict[str, Any], device: str) -> dict[str, Any]:
    import torch

    from napari_cellsparse._testing import LabelOracle
    from napari_cellsparse.core.images import to_rgb_uint8
    from napari_cellsparse.core.progress import run_sync
    from napari_cellsparse.sam.automask import generate_masks

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    image, labels = _image(512, 150)
    sam = _model(device)
    ref_clock = Clock(sync)
    generator = _reference(sam, params, ref_clock, LabelOracle(labels))
    start = time.perf_counter()
    ref = generator.generate(to_rgb_uint8(image))
    ref_s = time.perf_counter() - start
    _unwrap(sam)
    ours_clock = Clock(sync)
    prompter = _ours(sam, ours_clock, LabelOracle(labels))
    start = time.perf_counter()
    result = run_sync(generate_masks(prompter, image, params))
    ours_s = time.perf_counter() - start
    ours = [m.full() for m in result.masks]
    boxes = [m.box() for m in result.masks]
    matched = 0
    for record in ref:
        seg = record["segmentation"]
        x, y, w, h = record["bbox"]
        best = 0.0
        for mask, (bx0, by0, bx1, by1) in zip(ours, boxes, strict=True):
            if bx0 > x + w or bx1 < x or by0 > y + h or by1 < y:
                continue
            best = max(best, np.logical_and(seg, mask).sum() / np.logical_or(seg, mask).sum())
        matched += best >= 0.9
    post = ("encoder", "oracle")
    return {
        "params": params,
        "n_ref": len(ref),
        "n_ours": len(result),
        "matched_frac": round(matched / max(len(ref), 1), 4),
        "post_ref_s": round(ref_s - sum(ref_clock.seconds[k] for k in post), 2),
        "post_ours_s": round(ours_s - sum(ours_clock.seconds[k] for k in post), 2),
    }


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _rss_mb() -> float:
    """Resident memory now (Linux), for the baseline before a step."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def _large_image(size: int) -> np.ndarray:
    """A size x size nuclei image made of flipped copies of a 1024 x 1024 one."""
    base, _ = _image(1024, 300)
    reps = -(-size // 1024)
    rows = [
        np.hstack([base[:: 1 - 2 * (i % 2), :: 1 - 2 * (j % 2)] for j in range(reps)])
        for i in range(reps)
    ]
    return np.ascontiguousarray(np.vstack(rows)[:size, :size])


def large_step(step: str, device: str, path: str | None = None) -> dict[str, Any]:
    """One step of the large-image run (called in a child process of its own)."""
    import torch

    from napari_cellsparse.core.progress import run_sync
    from napari_cellsparse.sam.large_images import TiledImage
    from napari_cellsparse.sam.prompting import SamPrompter

    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sam = _model(device)
    if step == "slide":
        import zarr

        image = zarr.open_array(path, mode="r")
    else:
        image = _large_image(4096)
    base_rss = _rss_mb()
    start = time.perf_counter()
    tiled = TiledImage(SamPrompter(sam, "bench", batch_size=1 if device == "cpu" else 16), image)
    setup_s = time.perf_counter() - start
    out: dict[str, Any] = {"shape": list(image.shape), "tiles": len(tiled.tiles)}
    if step == "embed_all":
        sync()
        start = time.perf_counter()
        run_sync(tiled.embed_all())
        sync()
        out["embed_all_s"] = round(time.perf_counter() - start, 2)
        out["embed_all_per_tile_s"] = round(out["embed_all_s"] / len(tiled.tiles), 3)
        out["embed_all_rss_before_mb"] = base_rss
        out["embed_all_peak_rss_mb"] = _peak_rss_mb()
    else:
        last = tiled.tiles[-1]
        cy, cx = (last.y0 + last.y1) / 2, (last.x0 + last.x1) / 2
        box = [cx - 20, cy - 20, cx + 20, cy + 20]
        sync()
        start = time.perf_counter()
        (mask,) = tiled.boxes([box])
        sync()
        out["large_box_ms"] = round(1000 * (time.perf_counter() - start), 1)
        out["tiles_embedded_for_box"] = tiled.computed
        out["mask_shape"] = list(mask.shape)
        start = time.perf_counter()
        tiled.boxes([[box[0] + 30, box[1] + 30, box[2] + 30, box[3] + 30]])
        sync()
        out["large_box_warm_ms"] = round(1000 * (time.perf_counter() - start), 1)
        out["setup_s"] = round(setup_s, 2)  # intensity range of the whole image
        out["rss_before_prompt_mb"] = base_rss
        out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _child(step: str, device: str, path: str | None = None) -> dict[str, Any]:
    command = [sys.executable, __file__, "--device", device, "--large-step", step]
    if path:
        command += ["--path", path]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def large(device: str) -> dict[str, Any]:
    """The large-image run: every step in a fresh process."""
    out = _child("box", device)
    embed = _child("embed_all", device)
    out.update({k: v for k, v in embed.items() if k.startswith("embed_all")})
    out["box_vs_embed_all"] = round(out["large_box_ms"] / 1000 / embed["embed_all_s"], 3)
    return out


def slide(device: str) -> dict[str, Any]:
    """A box in the far corner of a 10000 x 10000 x 2 uint16 zarr slide on disk."""
    import zarr

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "slide.zarr")
        array = zarr.create_array(
            path, shape=(10000, 10000, 2), chunks=(1024, 1024, 2), dtype="uint16"
        )
        tile = _large_image(2048)
        for y in range(0, 10000, 2048):
            for x in range(0, 10000, 2048):
                part = tile[: min(2048, 10000 - y), : min(2048, 10000 - x)]
                array[y : y + part.shape[0], x : x + part.shape[1]] = np.dstack([part, part[::-1]])
        return _child("slide", device, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", choices=["speed", "same", "large"], default=None)
    parser.add_argument(
        "--large-step", choices=["box", "embed_all", "slide"], help=argparse.SUPPRESS
    )
    parser.add_argument("--path", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="512,1024")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.large_step:
        print(json.dumps(large_step(args.large_step, args.device, args.path)))
        return 0
    out: dict[str, Any] = {"device": args.device, "loadavg_start": os.getloadavg()[0]}
    if args.only in (None, "same"):
        for key, params in (
            ("same_default", {}),
            ("same_crop1", {"crop_n_layers": 1}),
            ("same_minarea20", {"min_mask_region_area": 20}),
        ):
            log(key)
            out[key] = same(params, args.device)
            log(json.dumps(out[key]))
    if args.only in (None, "speed"):
        for size in (int(s) for s in args.sizes.split(",")):
            out[f"speed_{size}"] = speed(size, args.device)
            log(json.dumps(out[f"speed_{size}"]))
    if args.only in (None, "large"):
        log("large")
        out["large"] = large(args.device)
        log(json.dumps(out["large"]))
        log("slide_10k")
        out["slide_10k"] = slide(args.device)
        log(json.dumps(out["slide_10k"]))
    out["loadavg_end"] = os.getloadavg()[0]
    text = json.dumps(out)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
