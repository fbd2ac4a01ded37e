"""The ground floor: errors, progress, devices, paths, lazy imports, images, bounds,
settings text, tiling and the sparse-label convention. Imports nothing else of the package."""
