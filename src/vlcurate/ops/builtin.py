"""Imports every built-in operator module so that each registers itself."""

from vlcurate.ops import (  # noqa: F401
    builder_ops,
    dedup_ops,
    embedding_ops,
    image_ops,
    instruct_ops,
    pair_ops,
    rule_ops,
    score_ops,
    text_ops,
    vlm_ops,
)
