"""A faster, equivalent forward for the attention pool that ends CLIP's ModifiedResNet towers.

open_clip's `AttentionPool2d` runs full self-attention over the (H*W + 1) tokens of the last
feature map and then keeps only the output of token 0 (the mean token). The other tokens' queries
and outputs are computed and thrown away; at tiny-synth's 2x2 final map that is 4/5 of the
pool's query projection, attention and output projection. Here only token 0 is the query, which
gives the same embedding up to floating-point rounding. The module keeps its parameters and
state-dict keys, so weights, fingerprints and checkpoints are unchanged.
"""

from __future__ import annotations

import types
from typing import Any

import torch
import torch.nn.functional as F


def _pool_first_token(pool: Any, x: torch.Tensor) -> torch.Tensor:
    n, c, h, w = x.shape
    tokens = x.reshape(n, c, h * w).permute(2, 0, 1)  # (HW)NC
    tokens = torch.cat([tokens.mean(dim=0, keepdim=True), tokens], dim=0)  # (HW+1)NC
    tokens = tokens + pool.positional_embedding[:, None, :].to(tokens.dtype)
    out, _ = F.multi_head_attention_forward(
        query=tokens[:1],
        key=tokens,
        value=tokens,
        embed_dim_to_check=c,
        num_heads=pool.num_heads,
        q_proj_weight=pool.q_proj.weight,
        k_proj_weight=pool.k_proj.weight,
        v_proj_weight=pool.v_proj.weight,
        in_proj_weight=None,
        in_proj_bias=torch.cat([pool.q_proj.bias, pool.k_proj.bias, pool.v_proj.bias]),
        bias_k=None,
        bias_v=None,
        add_zero_attn=False,
        dropout_p=0.0,
        out_proj_weight=pool.c_proj.weight,
        out_proj_bias=pool.c_proj.bias,
        use_separate_proj_weight=True,
        training=False,
        need_weights=False,
    )
    return out[0]


def use_first_token_attention_pool(model: Any) -> bool:
    """Give an eval-mode open_clip ModifiedResNet tower the query-only pool; True when applied."""
    pool = getattr(getattr(model, "visual", None), "attnpool", None)
    if pool is None or type(pool).__name__ != "AttentionPool2d" or pool.training:
        return False
    if not all(hasattr(pool, a) for a in ("positional_embedding", "q_proj", "k_proj", "v_proj", "c_proj")):
        return False

    # A bound method in the instance (not a closure), so that a deep copy of the model pools with
    # its own weights.
    pool.forward = types.MethodType(_forward, pool)
    return True


def _forward(pool: Any, x: torch.Tensor) -> torch.Tensor:
    if pool.training:  # being trained again: the stock forward
        return type(pool).forward(pool, x)
    return _pool_first_token(pool, x)
