"""A segmentation model's settings as files: ``config.json`` and ``thresholds.json``.

``config.json`` holds the configuration, the number of channels and the measured object
scale; ``thresholds.json`` (beside it) the thresholds ``tune()`` found. Folders written
before the thresholds had a file of their own keep them inside ``config.json``: both layouts
read the same, as do the flat settings of a bioimage.io package.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.errors import BadInputError, WeightsError
from ..models.store import CONFIG_FILE, read_json, write_json
from .config import ObjectScale, Thresholds, TrainingConfig

if TYPE_CHECKING:
    from .backend import Network

__all__ = [
    "THRESHOLDS_FILE",
    "StoredSettings",
    "read_stored",
    "settings_for",
    "write_thresholds",
]

THRESHOLDS_FILE = "thresholds.json"
UNSETTABLE = ("tuned_annotated_f1",)  # found by tune(), never chosen by a person


@dataclass(frozen=True)
class StoredSettings:
    """What a model's files say: configuration, thresholds, object scale, channels."""

    config: TrainingConfig
    thresholds: Thresholds
    scale: ObjectScale
    n_channels: int

    def config_file(self) -> dict[str, Any]:
        """The content of ``config.json``."""
        return {**self.config.as_dict(), **self.scale.as_dict(), "n_channels": self.n_channels}

    def flat(self) -> dict[str, Any]:
        """Every setting in one mapping (a bioimage.io package's config)."""
        return {**self.config_file(), **self.thresholds.as_dict()}

    @classmethod
    def from_flat(cls, network: type[Network], stored: Mapping[str, Any]) -> StoredSettings:
        """Read from ``stored`` (old or new layout; keys of neither kind are left aside).
        KeyError, TypeError or ValueError (BadInputError) when it is damaged."""
        return cls(
            config=network.config_class.from_stored(stored),
            thresholds=network.thresholds_class.from_stored(stored),
            scale=ObjectScale.from_stored(stored),
            n_channels=int(stored["n_channels"]),
        )


def read_stored(network: type[Network], folder: Path) -> StoredSettings:
    """The settings in a model version's ``folder``; WeightsError when they are damaged."""
    path = folder / CONFIG_FILE
    stored = read_json(path)
    if (folder / THRESHOLDS_FILE).is_file():
        path = folder / THRESHOLDS_FILE
        stored = {**stored, **read_json(path)}
    try:
        return StoredSettings.from_flat(network, stored)
    except (KeyError, TypeError, ValueError) as err:
        raise WeightsError(f"{path} is damaged ({err}).") from err


def write_thresholds(folder: Path, thresholds: Thresholds) -> None:
    """Write ``thresholds.json`` into a model version's ``folder``."""
    write_json(folder / THRESHOLDS_FILE, thresholds.as_dict())


def settings_for(
    network: type[Network],
    settings: Mapping[str, Any],
    stored: Mapping[str, Any] | None = None,
    config: TrainingConfig | None = None,
) -> tuple[TrainingConfig, Thresholds]:
    """The configuration and starting thresholds of a training: ``config`` (or the defaults
    overridden by a stored model's ``stored`` settings) overridden by a person's
    ``settings``. BadInputError names an unknown or out-of-range setting."""
    config_names = network.config_class.names()
    threshold_names = [n for n in network.thresholds_class.names() if n not in UNSETTABLE]
    unknown = sorted(set(settings) - {*config_names, *threshold_names})
    if unknown:
        raise BadInputError(
            f"Unknown setting(s) for {network.name}: {', '.join(unknown)}; "
            f"known: {', '.join(sorted([*config_names, *threshold_names]))}."
        )
    if config is not None and not isinstance(config, network.config_class):
        raise BadInputError(
            f"The {network.name} backend takes a {network.config_class.__name__}, "
            f"not a {type(config).__name__}."
        )
    base = dict(stored or {}) if config is None else config.as_dict()
    merged = {**base, **settings}
    return (
        network.config_class.from_settings(**{k: merged[k] for k in config_names if k in merged}),
        network.thresholds_class.from_stored(
            {k: v for k, v in {**dict(stored or {}), **settings}.items() if k in threshold_names}
        ),
    )
