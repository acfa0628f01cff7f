"""The CPU speed-ups applied at load (query-only attention pool, folded BatchNorms) keep scores."""

from __future__ import annotations

import copy

import torch

from vlcurate.models.attn_pool import use_first_token_attention_pool
from vlcurate.models.loader import load_scorer
from vlcurate.models.resnet_fold import fold_batchnorms


def test_speedups_keep_fp32_embeddings_and_fingerprint() -> None:
    scorer = load_scorer("tiny-synth", precision="fp32", device="cpu")
    fast = scorer.model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())
    # A stock copy: rebuild the pool's stock forward and unfolded BatchNorms from a fresh load.
    import open_clip

    from vlcurate.models.registry import resolve

    spec = resolve("tiny-synth")
    stock, _, _ = open_clip.create_model_and_transforms(spec.open_clip_name, pretrained=spec.pretrained)
    stock.eval()
    x = torch.randn(5, 3, 64, 64)
    with torch.inference_mode():
        assert torch.allclose(stock.encode_image(x), fast.encode_image(x), atol=1e-4)
        twin = copy.deepcopy(stock)
        assert use_first_token_attention_pool(twin) and fold_batchnorms(twin) > 0
        assert torch.allclose(stock.encode_image(x), twin.encode_image(x), atol=1e-4)
        # A deep copy pools with its own weights.
        clone = copy.deepcopy(twin)
        assert clone.visual.attnpool.forward.__self__ is clone.visual.attnpool
    assert scorer.fingerprint == load_scorer("tiny-synth", precision="bf16", device="cpu").fingerprint
