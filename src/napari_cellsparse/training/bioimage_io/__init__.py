"""bioimage.io model packages: export a trained model, load an exported one back.

``export_model`` writes a package that bioimage.io's tools (and deepImageJ, ilastik, QuPath
through them) run without this plugin; ``load_package`` reads one of ours back, from its
declared weights, as a :class:`~napari_cellsparse.training.model.TrainedModel` with our
post-processing (``load_model("model.zip")`` calls it). Needs the ``bioimageio`` extra.
"""

from __future__ import annotations

from .export import export_model
from .load import is_package, load_package

__all__ = ["export_model", "is_package", "load_package"]
