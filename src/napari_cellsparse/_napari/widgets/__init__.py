"""napari dock widgets (Qt front ends of the engine), one widget per module."""
