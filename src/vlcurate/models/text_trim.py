"""Encode captions without running the transformer over padding.

CLIP's text tower is causal and pools at the end-of-text token, so positions after the longest
caption's end in a batch cannot change any caption's embedding. Web captions are far shorter than
the 77-token context (COCO: ~15 tokens), so cutting the batch to its longest caption makes the
text tower several times cheaper with the same result. Used only for open_clip's `CLIP` class with
a causal mask and argmax/eos pooling; anything else goes through the model's own `encode_text`.
"""

from __future__ import annotations

from typing import Any

import torch


def can_trim(model: Any) -> bool:
    """True for open_clip CLIP text towers where trimming the padded tail is exact."""
    return (
        hasattr(model, "token_embedding")
        and hasattr(model, "positional_embedding")
        and getattr(model, "attn_mask", None) is not None
        and getattr(model, "text_pool_type", None) in ("argmax", "eos")
        and hasattr(model, "transformer")
        and hasattr(model, "ln_final")
    )


def encode_text_trimmed(model: Any, tokens: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """`model.encode_text(tokens)` computed on tokens[:, :L], L the longest caption in the batch."""
    from open_clip.transformer import text_global_pool

    lengths = (tokens != pad_id).sum(dim=1)
    seq = max(1, int(lengths.max()))
    text = tokens[:, :seq]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(text).to(cast_dtype)
    x = x + model.positional_embedding[:seq].to(cast_dtype)
    x = model.transformer(x, attn_mask=model.attn_mask[:seq, :seq])
    x = model.ln_final(x)
    x = text_global_pool(x, text, model.text_pool_type, eos_token_id=getattr(model, "text_eos_id", None))
    proj = model.text_projection
    if proj is not None:
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
    return x
