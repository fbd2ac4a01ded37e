"""The "SAM annotator" dock widget (napari.yaml names :class:`SamAnnotatorWidget` here)."""

from .state import ANNOTATION
from .widget import SamAnnotatorWidget

__all__ = ["ANNOTATION", "SamAnnotatorWidget"]
