"""Many and large images: block-wise segmentation, batches on Dask, workspace layouts and
per-cell measurement tables."""
