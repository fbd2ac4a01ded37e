"""samapi's endpoints on our SAM engine: prompts, automask, weights, progress.

One :class:`SamService` per server. SAM models are loaded on first use per model type and
checkpoint and kept; image embeddings go through the same
:class:`~napari_cellsparse.sam.embedding.EmbeddingCache` the widget uses (memory and disk),
so the same field of view sent again is not embedded again. A large image is prompted tile
by tile (:mod:`napari_cellsparse.sam.large_images`). Requests that use SAM run one at a time
(a lock); training requests do not wait for them. Weights are downloaded one at a time
under the server's :class:`~napari_cellsparse.sam.fetch.DownloadPolicy`, each with its own
cancel flag: cancelling a download stops nobody's prompt.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..core.errors import BadInputError, CancelledError, WeightsError
from ..core.masks import PromptMask
from ..core.progress import Progress, run_sync
from ..formats.geojson import polygons_to_geometry
from ..formats.polygons import mask_polygons
from ..sam.automask import AutoMask, AutomaskParams, generate_masks, nms
from ..sam.embedding import EmbeddingCache
from ..sam.fetch import DownloadPolicy, check_url
from ..sam.large_images import TiledImage, needs_tiles
from ..sam.registry import checkpoint_file, read_entries, register_entry
from ..sam.weights import CHECKPOINTS, MODEL_TYPES, download_weights, weights_dir
from .bodies import OUTPUT_TYPES, SAMAutoMaskBody, SAMBody, SAMWeightsBody
from .images import decode_image

if TYPE_CHECKING:
    from ..sam.prompting import Promptable, SamPrompter

__all__ = ["ProgressBoard", "SamService", "mask_features"]

T = TypeVar("T")
log = logging.getLogger(__name__)
EDGE_TOLERANCE = 20  # px: a mask this close to all four image edges covers the image


@dataclass
class ProgressBoard:
    """The latest progress of SAM work, as samapi's ``/sam/progress/`` reports it."""

    message: str | None = None
    percent: int = -1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def update(self, event: Progress) -> None:
        with self.lock:
            self.message = event.message or None
            self.percent = int(100 * event.step / event.total) if event.total else -1

    def as_dict(self) -> dict[str, Any]:
        with self.lock:
            return {"message": self.message, "percent": self.percent}


def mask_features(masks: list[PromptMask], model_type: str) -> list[dict[str, Any]]:
    """samapi's response: one GeoJSON Feature per mask (empty masks left out), with
    ``object_idx``, ``label``, ``quality`` (SAM's predicted IoU) and ``sam_model``."""
    features = []
    for index, mask in enumerate(masks):
        polygons = mask_polygons(mask.mask, (mask.x0, mask.y0))
        if not polygons:
            continue
        features.append(
            {
                "type": "Feature",
                "geometry": polygons_to_geometry(polygons),
                "properties": {
                    "object_idx": index,
                    "label": "object",
                    "quality": round(float(mask.score), 6),
                    "sam_model": model_type,
                },
            }
        )
    return features


def _model_type(name: str) -> str:
    if name not in MODEL_TYPES:
        raise BadInputError(
            f"Unknown SAM model type {name!r}; this server has {', '.join(MODEL_TYPES)}."
        )
    return name


def _per_point(masks: list[AutoMask], output_type: str, thresh: float) -> list[AutoMask]:
    """Of each point's masks keep those that survive NMS scored as ``output_type`` says."""
    if output_type in ("Multi-mask (all)", "Single mask"):
        return masks
    groups: dict[tuple[float, float], list[AutoMask]] = {}
    for m in masks:
        groups.setdefault(m.point, []).append(m)
    kept: list[AutoMask] = []
    for group in groups.values():
        if output_type == "Multi-mask (largest)":
            scores = [float(m.area) for m in group]
        elif output_type == "Multi-mask (smallest)":
            scores = [-float(m.area) for m in group]
        else:
            scores = [m.predicted_iou for m in group]
        kept.extend(group[i] for i in nms([m.box() for m in group], scores, thresh))
    order = {id(m): i for i, m in enumerate(masks)}
    return sorted(kept, key=lambda m: order[id(m)])


class SamService:
    """SAM behind samapi's request and response bodies."""

    def __init__(self, cache: EmbeddingCache | None = None, device: str = "auto") -> None:
        self.cache = cache if cache is not None else EmbeddingCache()
        self.device = device
        self.progress = ProgressBoard()
        self.lock = threading.Lock()  # SAM work, one request at a time
        self._download_lock = threading.Lock()  # one weights download at a time
        self._cancel_lock = threading.Lock()
        self._downloads: set[threading.Event] = set()  # cancel flags of running downloads
        self._prompters: dict[tuple[str, str], SamPrompter] = {}
        self._tiled: tuple[str, TiledImage] | None = None  # the last large image

    # -- weights ---------------------------------------------------------------------------
    def weights(self, model_type: str | None = None) -> list[dict[str, str]]:
        """Weights ready to use: cached official checkpoints and registered ones."""
        out = []
        for ckpt in CHECKPOINTS.values():
            if (weights_dir() / ckpt.filename).is_file():
                out.append({"type": ckpt.model_type, "name": ckpt.model_type, "url": ckpt.url})
        out += [{k: e[k] for k in ("type", "name", "url")} for e in read_entries()]
        if model_type is not None:
            _model_type(model_type)
            out = [e for e in out if e["type"] == model_type]
        return out

    def register(self, body: SAMWeightsBody, policy: DownloadPolicy | None = None) -> str:
        """Download ``body.url`` as ``body.type`` weights named ``body.name`` (samapi's
        messages). The official URL is checked against its checksum; any other file is
        checked by loading it into the architecture before it is kept. ``policy`` (default:
        public http(s) addresses only) limits what is fetched; one download at a time.

        A refused URL is a :class:`BadInputError`; every failure after that gets the same
        message (the reason goes to the log), so answers do not tell an open port from a
        closed one."""
        model_type = _model_type(body.type)
        policy = policy or DownloadPolicy()
        check_url(body.url, policy)
        if any(e["name"] == body.name or e["url"] == body.url for e in self.weights(model_type)):
            return f"Model file with the name/url '{body.name}' already exists. Skip registration."
        official = CHECKPOINTS[model_type].url == body.url
        target = None if official else checkpoint_file(model_type, body.name)
        check = None if official else functools.partial(_loads, model_type)
        cancel = threading.Event()
        with self._download_lock:
            with self._cancel_lock:
                self._downloads.add(cancel)
            try:
                work = download_weights(
                    model_type, body.url, target=target, verify=official, policy=policy,
                    check=check,
                )  # fmt: skip
                path = run_sync(work, progress=self.progress.update, cancel=cancel)
            except CancelledError:
                return f"Cancelled to register {body.name} ({body.url})."
            except WeightsError as err:
                log.warning("registering %s weights from %s failed: %s", model_type, body.url, err)
                raise WeightsError(_not_downloaded(body.url, model_type, policy)) from None
            finally:
                with self._cancel_lock:
                    self._downloads.discard(cancel)
        if not official and not register_entry(model_type, body.name, body.url, path):
            path.unlink(missing_ok=True)
            return f"Model file with the name/url '{body.name}' already exists. Skip registration."
        return f"{body.name} ({body.url}) is registered."

    def cancel_downloads(self) -> int:
        """Cancel the running weights download (prompts and automask are not affected);
        returns how many were running."""
        with self._cancel_lock:
            for cancel in self._downloads:
                cancel.set()
            return len(self._downloads)

    def _weights_path(self, model_type: str, checkpoint_url: str | None) -> str | None:
        if not checkpoint_url or checkpoint_url == CHECKPOINTS[model_type].url:
            return None  # the official checkpoint (a clear message if it is missing)
        for entry in read_entries():
            if entry["type"] == model_type and entry["url"] == checkpoint_url:
                return entry["path"]
        raise BadInputError(
            f"The checkpoint {checkpoint_url} is not registered for {model_type}; "
            "register it first with POST /sam/weights/ (or, for a local file, with "
            "cellsparse weights add FILE on the server's machine)."
        )

    # -- running SAM ---------------------------------------------------------------------
    def _run(self, work: Generator[Progress, None, T]) -> T:
        return run_sync(work, progress=self.progress.update)

    def _prompter(self, model_type: str, checkpoint_url: str | None) -> SamPrompter:
        from ..sam.prompting import SamPrompter

        model_type = _model_type(model_type)
        weights = self._weights_path(model_type, checkpoint_url)
        key = (model_type, weights or "")
        if key not in self._prompters:
            self.progress.update(Progress(0, 1, f"loading SAM {model_type}"))
            self._prompters = {key: SamPrompter.load(model_type, weights, self.device, self.cache)}
        return self._prompters[key]

    def _source(self, prompter: SamPrompter, image: np.ndarray) -> Promptable:
        """The prompter with ``image`` set, or a tiled view of it when it is large."""
        if not needs_tiles(image.shape):
            self._run(prompter.set_image(image))
            return prompter
        return self._tiled_image(prompter, image)

    def _tiled_image(self, prompter: SamPrompter, image: np.ndarray) -> TiledImage:
        """A large image's tiled view, kept for the next request on the same image."""
        signature = prompter.signature(image)
        if (
            self._tiled is None
            or self._tiled[0] != signature
            or self._tiled[1].prompter is not prompter
        ):
            self._tiled = (signature, TiledImage(prompter, image))
        return self._tiled[1]

    def prompt(self, body: SAMBody) -> list[dict[str, Any]]:
        """``POST /sam/``: the mask(s) of one box and/or point prompt."""
        image = decode_image(body.b64img)
        points = np.asarray(body.point_coords or [], dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(body.point_labels or [], dtype=np.int64)
        if len(points) != len(labels):
            raise BadInputError("point_coords and point_labels must have the same length.")
        if body.bbox is None and not len(points):
            raise BadInputError("Give bbox, or point_coords with point_labels.")
        if body.b64mask:
            raise BadInputError("b64mask (a low-resolution mask input) is not supported.")
        with self.lock:
            prompter = self._prompter(body.type, body.checkpoint_url)
            source = self._source(prompter, image)
            masks = source.prompt(
                points if len(points) else None,
                labels if len(points) else None,
                body.bbox,
                body.multimask_output,
            )
        return mask_features(masks, body.type)

    def automask(self, body: SAMAutoMaskBody) -> list[dict[str, Any]]:
        """``POST /sam/automask/``: every object, per samapi's ``output_type``."""
        output_type = "Single mask" if body.output_type == "Single Mask" else body.output_type
        if output_type not in OUTPUT_TYPES:
            raise BadInputError(
                f"Unknown output_type {body.output_type!r}; use one of {', '.join(OUTPUT_TYPES)}."
            )
        names = set(AutomaskParams().as_dict())
        params = AutomaskParams.from_dict(
            {k: v for k, v in body.model_dump().items() if k in names}
        )
        image = decode_image(body.b64img)
        multimask = output_type != "Single mask"
        with self.lock:
            prompter = self._prompter(body.type, body.checkpoint_url)
            if needs_tiles(image.shape):
                tiled = self._tiled_image(prompter, image)
                result = self._run(tiled.automask(params, multimask=multimask))
            else:
                result = self._run(generate_masks(prompter, image, params, multimask=multimask))
        masks = _per_point(result.masks, output_type, params.box_nms_thresh)
        if not body.include_image_edge:
            h, w = result.shape
            masks = [m for m in masks if not _covers_image(m.box(), w, h)]
        return mask_features(masks, body.type)


def _covers_image(box: tuple[int, int, int, int], width: int, height: int) -> bool:
    x0, y0, x1, y1 = box
    return (
        x0 <= EDGE_TOLERANCE
        and y0 <= EDGE_TOLERANCE
        and x1 >= width - 1 - EDGE_TOLERANCE
        and y1 >= height - 1 - EDGE_TOLERANCE
    )


def _loads(model_type: str, path: Path) -> None:
    """Raise :class:`WeightsError` unless ``path`` loads into a ``model_type`` model."""
    from ..sam.models import load_sam

    load_sam(model_type, path, "cpu")


def _not_downloaded(url: str, model_type: str, policy: DownloadPolicy) -> str:
    cap = policy.max_bytes(CHECKPOINTS[model_type].size_mb) / 2**20
    return (
        f"Could not download a SAM checkpoint from {url}: it could not be reached, did not "
        f"serve a {model_type} checkpoint, was larger than {cap:.0f} MB or took longer than "
        f"{policy.deadline_s:.0f} s. The server's log gives the reason."
    )
