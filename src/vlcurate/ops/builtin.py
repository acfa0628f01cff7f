"""Imports every built-in operator module so that each registers itself."""

from vlcurate.ops import embedding_ops, pair_ops, score_ops  # noqa: F401
