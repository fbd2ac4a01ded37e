"""``python -m napari_cellsparse.demo``: napari with the plugin docked and sample data loaded.

``--smoke PATH`` opens everything, saves a screenshot of the whole window to PATH and quits
(for checks and docs).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "open_demo", "widget_names"]

PLUGIN = "napari-cellsparse"


def widget_names() -> list[str]:
    """The plugin's dock widgets, as its manifest (napari.yaml) lists them."""
    import npe2

    manifest = npe2.PluginManifest.from_distribution(PLUGIN)
    return [widget.display_name for widget in manifest.contributions.widgets]


def open_demo(viewer=None, sample: str = "nuclei"):
    """Load the sample into ``viewer`` (a new one when None) and dock every widget (the
    first two side by side, the others as tabs behind the second), the image in full view."""
    import napari
    from qtpy.QtCore import QTimer

    viewer = viewer or napari.Viewer(title="napari-cellsparse demo")
    viewer.open_sample(PLUGIN, sample)
    docked = []
    for k, name in enumerate(widget_names()):
        dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name, tabify=k > 1)
        docked.append(widget)
        if k == 1:
            QTimer.singleShot(0, dock.raise_)  # after napari has tabified the docks
    QTimer.singleShot(0, viewer.reset_view)  # the docks took room from the canvas
    return viewer, docked


def main(argv: Sequence[str] | None = None) -> int:
    """Open the demo; with ``--smoke`` take a screenshot and exit."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", metavar="PNG", help="screenshot to this file, then quit")
    parser.add_argument("--sample", default="nuclei", help="sample key (nuclei, stardist_nuclei)")
    args = parser.parse_args(argv)
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
