"""Where computation runs: one function resolves ``auto`` to CUDA, then Apple MPS, then CPU."""

from __future__ import annotations

from .errors import BadInputError

__all__ = ["ALWAYS_AVAILABLE", "available_devices", "resolve_device"]

# What a user may always ask for, before torch says what else there is: ``auto`` picks the
# best available (:func:`resolve_device`).
ALWAYS_AVAILABLE: tuple[str, ...] = ("auto", "cpu")


def available_devices() -> list[str]:
    """Devices torch can use here, best first (always ends with ``"cpu"``)."""
    from .lazy import import_torch

    torch = import_torch()
    found = []
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    found.append("cpu")
    return found


def resolve_device(device: str | None = "auto") -> str:
    """Turn ``"auto"`` (or None) into the best device; check an explicit one exists."""
    found = available_devices()
    if device in (None, "", "auto"):
        return found[0]
    name = device.split(":")[0]
    if name not in found:
        raise BadInputError(
            f"Device {device!r} is not available on this computer; available: {', '.join(found)}."
        )
    return device
