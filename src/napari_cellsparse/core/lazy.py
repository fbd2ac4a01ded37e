"""Lazy imports of heavy optional dependencies, with one safety guard.

Guard: on Linux, Mesa's OpenGL driver (loaded by napari's canvas) brings ``libLLVM`` into the
process with its symbols visible to everything loaded later. The CUDA build of torch ships
``triton``, whose ``libtriton.so`` bundles its own LLVM and exports unversioned ``llvm::``
symbols; loaded after the GL context, its references bind to Mesa's LLVM and its static
initialisers crash the process (torchvision reaches triton through ``torch._dynamo``). We
pre-load ``libtriton.so`` with ``RTLD_DEEPBIND`` so it binds to its own symbols first; when
that is impossible, triton is marked absent (torch then runs eagerly without it).
"""

from __future__ import annotations

import ctypes
import importlib
import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType

from .errors import BackendUnavailableError

__all__ = [
    "guard_triton",
    "import_mobile_sam",
    "import_segment_anything",
    "import_segmentation_models",
    "import_torch",
]

log = logging.getLogger(__name__)

# A symbol of LLVM's C API: resolvable in the process once Mesa's libLLVM is loaded globally.
_LLVM_PROBE_SYMBOL = "LLVMContextCreate"


def _llvm_symbols_visible() -> bool:
    try:
        return hasattr(ctypes.CDLL(None), _LLVM_PROBE_SYMBOL)
    except OSError:
        return False


def _triton_library() -> Path | None:
    spec = importlib.util.find_spec("triton")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "_C" / "libtriton.so"
        if candidate.exists():
            return candidate
    return None


def guard_triton() -> str:
    """Make importing torchvision safe after an OpenGL context exists.

    Returns what was done: ``"not-needed"``, ``"deepbind"`` or ``"disabled"``.
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return "not-needed"
    if not hasattr(os, "RTLD_DEEPBIND") or not _llvm_symbols_visible():
        return "not-needed"
    library = _triton_library()
    if library is None:
        return "not-needed"
    try:
        ctypes.CDLL(str(library), mode=os.RTLD_LOCAL | os.RTLD_DEEPBIND)
        log.debug("pre-loaded %s with RTLD_DEEPBIND", library)
        return "deepbind"
    except OSError as err:
        log.warning("could not pre-load triton (%s); running torch without triton", err)
        sys.modules["triton"] = None  # type: ignore[assignment]
        return "disabled"


def import_torch() -> ModuleType:
    """Import torch, or raise :class:`BackendUnavailableError` naming the extra."""
    guard_triton()
    try:
        return importlib.import_module("torch")
    except ImportError as err:
        raise BackendUnavailableError("PyTorch", "sam", err) from err


def import_segment_anything() -> ModuleType:
    """Import ``segment_anything`` (SAM vit_h / vit_l / vit_b)."""
    import_torch()
    try:
        return importlib.import_module("segment_anything")
    except ImportError as err:
        raise BackendUnavailableError("segment-anything", "sam", err) from err


def import_mobile_sam() -> ModuleType:
    """Import ``mobile_sam`` (MobileSAM vit_t, from the ``mobilesam-mirror`` package)."""
    import_torch()
    try:
        with warnings.catch_warnings():
            # mobile_sam re-registers timm's TinyViT names and uses deprecated timm paths.
            warnings.simplefilter("ignore", (UserWarning, FutureWarning))
            return importlib.import_module("mobile_sam")
    except ImportError as err:
        raise BackendUnavailableError("MobileSAM (mobilesam-mirror)", "sam", err) from err


def import_segmentation_models() -> ModuleType:
    """Import ``segmentation_models_pytorch`` (the counter's network; it imports timm and
    torchvision, hence the guard)."""
    import_torch()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", (UserWarning, FutureWarning))
            return importlib.import_module("segmentation_models_pytorch")
    except ImportError as err:
        raise BackendUnavailableError("segmentation-models-pytorch", "counting", err) from err
