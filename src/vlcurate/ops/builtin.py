"""Imports every built-in operator module so that each registers itself."""

from vlcurate.ops import dedup_ops, embedding_ops, image_ops, pair_ops, score_ops, text_ops  # noqa: F401
