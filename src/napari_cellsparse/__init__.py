"""napari-cellsparse: cell segmentation in napari from very little annotation.

The package root stays light: importing it loads neither Qt, napari, torch nor TensorFlow.
Engine modules (``sam``, ``images``, ``devices``...) are Qt-free; the dock widgets live in
``napari_cellsparse._napari.widgets`` and are imported by napari on demand.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
