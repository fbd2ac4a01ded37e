"""Files in and out: images read by region, polygons, GeoJSON, OME-Zarr and QuPath projects."""
