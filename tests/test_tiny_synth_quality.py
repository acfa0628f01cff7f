"""The bundled tiny-synth model loads through open_clip and tells true captions from corrupted ones."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlcurate.models.tv_compat import ensure_torchvision
from vlcurate.synth.scorer_eval import evaluate, make_eval_set, roc_auc

WEIGHTS = Path(__file__).resolve().parents[1] / "src/vlcurate/models/weights/tiny-synth"
EVAL_SEED = 424_242  # not a training stream (training uses seed 0) nor the script's eval seed
MIN_AUC = 0.95

ensure_torchvision()
import open_clip  # noqa: E402


def test_roc_auc_helper() -> None:
    assert roc_auc(np.array([2.0, 3.0]), np.array([0.0, 1.0])) == 1.0
    assert roc_auc(np.array([0.0]), np.array([1.0])) == 0.0
    assert roc_auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5
    with pytest.raises(ValueError):
        roc_auc(np.array([]), np.array([1.0]))


def test_bundled_folder_is_an_open_clip_local_dir() -> None:
    config = json.loads((WEIGHTS / "open_clip_config.json").read_text())
    assert config["preprocess_cfg"]["size"] == 64 and len(config["preprocess_cfg"]["mean"]) == 3
    weights = WEIGHTS / "open_clip_model.safetensors"
    assert weights.stat().st_size < 10e6  # 6.3 MB of it is the 49408-token embedding
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(str(weights)).values()} == {torch.float16}
    name = f"local-dir:{WEIGHTS}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    # The saved preprocessing turns any image into the 64 px input the model was trained on.
    assert preprocess(Image.new("RGB", (100, 80))).shape == (3, 64, 64)
    # The tokenizer open_clip derives from the saved config is the one the model was trained with.
    tokenizer = open_clip.get_tokenizer(name)
    trained_with = open_clip.tokenizer.SimpleTokenizer(
        context_length=config["model_cfg"]["text_cfg"]["context_length"]
    )
    probe = ["a picture of two small red circles and a blue star on the left", "an orange cross"]
    assert torch.equal(tokenizer(probe), trained_with(probe))
    with torch.no_grad():
        x = preprocess(Image.new("RGB", (64, 64), (200, 30, 30))).unsqueeze(0)
        assert model.encode_image(x).shape == model.encode_text(tokenizer(probe[:1])).shape


def _pair_scorer() -> tuple[str, object]:
    """The project's scorer when it exists (the real code path), else open_clip directly."""
    try:
        from vlcurate.models.loader import load_scorer
    except ImportError:
        load_scorer = None
    if load_scorer is not None:
        scorer = load_scorer("tiny-synth", device="cpu")

        def score(images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
            pixels = np.stack([np.asarray(im.convert("RGB")) for im in images])
            return np.asarray(scorer.score(pixels, list(texts)))

        return f"load_scorer ({scorer.precision})", score

    name = f"local-dir:{WEIGHTS}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)

    @torch.no_grad()
    def score_direct(images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        a = model.encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
        t = model.encode_text(tokenizer(list(texts)), normalize=True)
        return (a * t).sum(-1).numpy()

    return "open_clip local-dir", score_direct


def test_true_captions_score_above_corrupted_ones() -> None:
    how, score = _pair_scorer()
    aucs = evaluate(score, make_eval_set(600, EVAL_SEED))  # type: ignore[arg-type]
    print(f"\ntiny-synth ROC AUC via {how} on 600 fresh scenes:")
    for kind, auc in aucs.items():
        print(f"  {kind:13s} {auc:.4f}")
    assert aucs["overall"] >= MIN_AUC, aucs
    # Every kind is learnt, not just the easy ones.
    assert min(aucs.values()) >= 0.8, aucs
