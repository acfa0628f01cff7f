"""Imports every built-in operator module so that each registers itself."""

from vlcurate.ops import pair_ops, score_ops  # noqa: F401
