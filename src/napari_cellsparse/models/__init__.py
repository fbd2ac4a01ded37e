"""Machinery shared by every trainable model (segmentation backends and the counter).

:mod:`~napari_cellsparse.models.session` drives one training session: continue or start
afresh, the stepped loop with cancel, annotation updates and finite checks, and the
versioned save.
"""
