"""Load a bioimage.io package exported by this plugin back as a model that predicts labels.

The network comes from the package's declared weights (not from a copy of our model folder):
U-Net and Cellpose from the PyTorch state dict and architecture file, rebuilt by
``bioimageio.core`` as any consumer would; StarDist from the Keras v3 file, whose nested
StarDist network gives its weights to upstream StarDist (so its NMS runs as before). The
post-processing settings come from the package's config. Like every
``pytorch_state_dict`` package, loading runs the package's architecture code: load packages
you trust.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from ...core.errors import BackendUnavailableError, BadInputError
from ...models.torch_io import to_device
from ..backend import backend_class
from ..model import TrainedModel
from ..stored import StoredSettings
from .export import CONFIG_KEY

__all__ = ["is_package", "load_package"]


def is_package(path: str | Path) -> bool:
    """Whether ``path`` is a zip file (so, maybe a bioimage.io package, not a model folder)."""
    p = Path(path).expanduser()
    return p.suffix.lower() == ".zip" and p.is_file()


def load_package(path: str | Path, device: str | None = None) -> TrainedModel:
    """The model of a package written by
    :func:`~napari_cellsparse.training.bioimage_io.export_model`."""
    path = Path(path).expanduser()
    if not zipfile.is_zipfile(path):
        raise BadInputError(f"{path} is not a zip file, so not a bioimage.io package.")
    try:
        from bioimageio.spec import InvalidDescr, load_model_description
    except ImportError as err:
        raise BackendUnavailableError(
            "bioimage.io packages (bioimageio.spec)", "bioimageio", err
        ) from err
    try:
        descr = load_model_description(path, perform_io_checks=False)
    except Exception as err:
        raise BadInputError(f"{path} is not a bioimage.io model package ({err}).") from err
    if isinstance(descr, InvalidDescr):
        raise BadInputError(
            f"{path} is not a valid bioimage.io model package: {descr.validation_summary.format()}"
        )
    ours = _our_config(descr, path)
    backend = str(ours["backend"])
    cls = backend_class(backend)
    try:
        stored = StoredSettings.from_flat(cls, {**ours["config"], "n_channels": ours["n_channels"]})
    except (KeyError, TypeError, ValueError) as err:
        raise BadInputError(f"{path} has a damaged {CONFIG_KEY!r} config ({err}).") from err
    network = cls(stored.config, stored.n_channels, device, stored.thresholds)
    if backend == "stardist":
        from .keras_package import load_stardist_weights

        load_stardist_weights(descr, network, path)
    else:
        _load_torch(descr, network, path)
    info = {
        **ours.get("metadata", {}),
        "name": descr.name,
        "package": str(path),
        "stopped_early": False,
    }
    return TrainedModel(network, None, info, stored.scale)


def _load_torch(descr: Any, network: Any, path: Path) -> None:
    """Give ``network`` the module ``bioimageio.core`` builds from the declared state dict."""
    try:
        from bioimageio.core.backends.pytorch_backend import load_torch_model
    except ImportError as err:
        raise BackendUnavailableError(
            "bioimage.io packages (bioimageio.core)", "bioimageio", err
        ) from err
    weights = descr.weights.pytorch_state_dict
    if weights is None:
        raise BadInputError(f"{path} has no PyTorch state dict weights.")
    net = load_torch_model(weights, load_state=True, devices=[str(network.device)])
    network.net = to_device(net, network.device).eval()  # the layout our own models run in


def _our_config(descr: Any, path: Path) -> dict[str, Any]:
    extra = descr.config.model_extra or {}
    ours = extra.get(CONFIG_KEY)
    if not isinstance(ours, dict) or not {"backend", "n_channels", "config"} <= set(ours):
        raise BadInputError(
            f"{path} was not exported by napari-cellsparse (its config has no "
            f"{CONFIG_KEY!r} entry); run it with bioimage.io's own tools instead."
        )
    return ours
