"""Everything napari.yaml names: the dock widgets, the GeoJSON reader and writers, the sample
data and the demo. The only part of the package that imports Qt or napari."""
