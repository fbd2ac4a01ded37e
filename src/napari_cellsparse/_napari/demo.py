"""``python -m napari_cellsparse._napari.demo``: napari with the plugin docked and sample
data loaded.

``--smoke PATH`` opens everything, saves a screenshot of the whole window to PATH and quits
(for checks and docs).
"""

from __future__ import annotations

import argparse
import ctypes.util
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["display_problem", "main", "open_demo", "widget_names"]

PLUGIN = "napari-cellsparse"


def widget_names() -> list[str]:
    """The plugin's dock widgets, as its manifest (napari.yaml) lists them."""
    import npe2

    manifest = npe2.PluginManifest.from_distribution(PLUGIN)
    return [widget.display_name for widget in manifest.contributions.widgets]


def open_demo(viewer=None, sample: str = "nuclei", front: str = "Sparse training"):
    """Load the sample into ``viewer`` (a new one when None) and dock every widget as tabs of
    one dock area, ``front`` shown, the image in full view. Two docks stacked made the window
    taller than a laptop's screen (about 1,400 px) and the canvas a third of its width."""
    import napari
    from qtpy.QtCore import QTimer

    viewer = viewer or napari.Viewer(title="napari-cellsparse demo")
    viewer.open_sample(PLUGIN, sample)
    docked = []
    for k, name in enumerate(widget_names()):
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=k > 0)
        docked.append(widget)
        if name == front:
            QTimer.singleShot(0, dock.raise_)  # after napari has tabified the docks
    _fit_screen(viewer)
    QTimer.singleShot(0, viewer.reset_view)  # the docks took room from the canvas
    return viewer, docked


def _fit_screen(viewer) -> None:
    """Size the window to 90 % of the screen: napari restores the last session's size, which
    may be larger than this screen (the window then runs off it) or leave the canvas narrow."""
    from qtpy.QtWidgets import QApplication

    screen = QApplication.primaryScreen()
    if screen is not None:
        room = screen.availableGeometry()
        viewer.window.resize(int(0.9 * room.width()), int(0.9 * room.height()))


def display_problem(env: Mapping[str, str] | None = None) -> str | None:
    """What keeps napari from opening a window on this Linux machine, in words; None when
    nothing is known to (Qt's own message names a library, not the missing screen)."""
    env = os.environ if env is None else env
    if not sys.platform.startswith("linux") or env.get("QT_QPA_PLATFORM"):
        return None
    if not env.get("DISPLAY") and not env.get("WAYLAND_DISPLAY"):
        return (
            "No display: napari needs a screen (DISPLAY is not set). Run the demo on a "
            "desktop, or `make demo SMOKE=1` for a screenshot taken in a virtual screen "
            "(xvfb-run)."
        )
    if env.get("DISPLAY") and _qt6() and ctypes.util.find_library("xcb-cursor") is None:
        return (
            "Qt needs the library xcb-cursor to open a window on this X display: install it "
            "(Debian/Ubuntu: apt install libxcb-cursor0) and run the demo again."
        )
    return None


def _qt6() -> bool:
    """Whether napari's Qt is Qt 6 (whose X11 plugin needs xcb-cursor)."""
    import qtpy

    return bool(getattr(qtpy, "QT6", False))


def main(argv: Sequence[str] | None = None) -> int:
    """Open the demo; with ``--smoke`` take a screenshot and exit."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", metavar="PNG", help="screenshot to this file, then quit")
    parser.add_argument("--sample", default="nuclei", help="sample key (nuclei, stardist_nuclei)")
    args = parser.parse_args(argv)
    problem = display_problem()
    if problem:
        print(problem, file=sys.stderr)
        return 2
    import napari

    viewer, _ = open_demo(sample=args.sample)
    if args.smoke:
        from qtpy.QtWidgets import QApplication

        for _ in range(3):  # the docks settle, then the view fits the canvas
            QApplication.processEvents()
        out = Path(args.smoke)
        out.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(out), canvas_only=False)
        layers = ", ".join(layer.name for layer in viewer.layers)
        viewer.close()
        print(f"demo ok: layers [{layers}]; screenshot {out}")
        return 0
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
