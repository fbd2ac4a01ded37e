"""Segment Anything and MobileSAM: weights, embeddings, box and point prompts, automatic
masks and large images by tiles."""
