"""What the PyTorch backends (U-Net, Cellpose) share: device, seeded build, save and load
through :mod:`napari_cellsparse.models.torch_io`."""

from __future__ import annotations

from abc import abstractmethod
from pathlib import Path
from typing import Any

from ..core.devices import resolve_device
from ..core.lazy import import_torch
from ..models import torch_io
from ..models.weight_average import WeightAverage
from .backend import Network
from .config import Thresholds, TrainingConfig

__all__ = ["TorchNetwork"]


class TorchNetwork(Network):
    """A backend whose network is a ``torch.nn.Module`` kept in ``weight_files[0]``."""

    def __init__(
        self,
        config: TrainingConfig,
        n_channels: int,
        device: str | None,
        thresholds: Thresholds | None = None,
    ) -> None:
        super().__init__(config, n_channels, device, thresholds)
        self.device = resolve_device(device)
        self.net: Any = None
        self.optimizer: Any = None

    @abstractmethod
    def _architecture(self) -> Any:
        """A fresh module of this config's architecture (on the CPU)."""

    def build(self) -> None:
        """Fresh weights seeded by ``config.seed``, leaving torch's global RNG as it was."""
        torch = import_torch()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.config.seed)
            self.net = torch_io.to_device(self._architecture(), self.device)
        self.optimizer = None

    def weights_finite(self) -> bool:
        return torch_io.state_finite(self.net)

    def save(self, folder: Path) -> None:
        """Write the state_dict to ``folder/weight_files[0]`` (atomically)."""
        torch_io.save_state(self.net, folder, self.weight_files[0])

    def load(self, folder: Path) -> None:
        """Rebuild the net from the config and read its weights; WeightsError if unusable."""
        self.net = torch_io.load_state(
            folder, self.weight_files[0], self._architecture, self.device
        )
        self.optimizer = None

    def weight_average(self, steps: int, tail: float) -> WeightAverage:
        """Averages the network's floating-point state over the last ``tail`` share of
        ``steps`` (:func:`~napari_cellsparse.models.torch_io.weight_average`)."""
        return torch_io.weight_average(self.net, steps, tail)
