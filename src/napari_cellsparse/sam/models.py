"""Build a SAM model of a given type and load its weights, with clear errors."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..core.errors import WeightsError
from ..core.lazy import import_mobile_sam, import_segment_anything, import_torch
from .weights import MODEL_TYPES, _checkpoint, find_weights

__all__ = ["build_sam", "load_sam"]

log = logging.getLogger(__name__)


def build_sam(model_type: str) -> Any:
    """A SAM model of ``model_type`` with randomly initialised weights (in eval mode)."""
    _checkpoint(model_type)
    if model_type == "vit_t":
        registry = import_mobile_sam().sam_model_registry
    else:
        registry = import_segment_anything().sam_model_registry
    model = registry[model_type](checkpoint=None)
    return model.eval()


def load_sam(
    model_type: str, weights: str | os.PathLike | None = None, device: str = "cpu"
) -> tuple[Any, Path]:
    """Load a SAM model with its weights on ``device``; returns ``(model, weights_path)``.

    A file that is not a checkpoint of this model type (corrupted, truncated, another
    architecture) raises :class:`WeightsError` with the path and what to do.
    """
    torch = import_torch()
    path = find_weights(model_type, weights)
    model = build_sam(model_type)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsError(
            f"Could not read the weights file {path}: it is corrupted or not a PyTorch "
            f"checkpoint ({type(err).__name__}). Delete it and download it again."
        ) from err
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    try:
        model.load_state_dict(state)
    except Exception as err:
        others = [t for t in MODEL_TYPES if t != model_type]
        raise WeightsError(
            f"The weights file {path} does not fit a {model_type} model (is it one of "
            f"{', '.join(others)}?): {str(err).splitlines()[0]}"
        ) from err
    log.info("loaded %s weights from %s", model_type, path)
    return model.to(device), path
