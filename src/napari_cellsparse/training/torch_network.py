"""What the PyTorch backends (U-Net, Cellpose) share: device, seeded build, save and load.

Weights are written to a temporary file and renamed, and read with ``weights_only=True``;
a missing, damaged or mismatched file becomes a :class:`WeightsError` naming it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.devices import resolve_device
from ..core.errors import WeightsError
from ..core.lazy import import_torch
from ..core.paths import atomic_target
from .backend import Network

__all__ = ["TorchNetwork", "load_state", "save_state", "state_finite"]


def save_state(net: Any, folder: Path, filename: str) -> None:
    """Write ``net``'s state_dict to ``folder/filename`` atomically."""
    torch = import_torch()
    with atomic_target(Path(folder) / filename) as temp:
        torch.save(net.state_dict(), temp)


def state_finite(net: Any) -> bool:
    """Whether every floating-point tensor of ``net``'s state is finite (no NaN or inf)."""
    torch = import_torch()
    return all(
        bool(torch.isfinite(t).all()) for t in net.state_dict().values() if t.is_floating_point()
    )


def load_state(folder: Path, filename: str, architecture: Callable[[], Any], device: str) -> Any:
    """A network from ``architecture()`` with the weights of ``folder/filename``, on ``device``."""
    torch = import_torch()
    path = Path(folder) / filename
    if not path.is_file():
        raise WeightsError(f"The model folder {folder} has no weights file {filename}.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net = architecture()
        net.load_state_dict(state)
    except Exception as err:
        raise WeightsError(
            f"{path} is damaged or belongs to another network and cannot be loaded ({err})."
        ) from err
    return net.to(device)


class TorchNetwork(Network):
    """A backend whose network is a ``torch.nn.Module`` kept in ``weight_files[0]``."""

    def __init__(self, config: dict[str, Any], n_channels: int, device: str | None) -> None:
        super().__init__(config, n_channels, device)
        self.device = resolve_device(device)
        self.net: Any = None
        self.optimizer: Any = None

    @abstractmethod
    def _architecture(self) -> Any:
        """A fresh module of this config's architecture (on the CPU)."""

    def build(self) -> None:
        """Fresh weights seeded by ``config["seed"]``, leaving torch's global RNG as it was."""
        torch = import_torch()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.config["seed"]))
            self.net = self._architecture().to(self.device)
        self.optimizer = None

    def weights_finite(self) -> bool:
        return state_finite(self.net)

    def save(self, folder: Path) -> None:
        """Write the state_dict to ``folder/weight_files[0]`` (atomically)."""
        save_state(self.net, folder, self.weight_files[0])

    def load(self, folder: Path) -> None:
        """Rebuild the net from the config and read its weights; WeightsError if unusable."""
        self.net = load_state(folder, self.weight_files[0], self._architecture, self.device)
        self.optimizer = None
