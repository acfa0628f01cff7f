"""transformers CLIP checkpoints as scorers (`hf-clip:`): loading by name, agreement with transformers
itself, open_clip's token ids from the offline tokenizer files, and clear errors."""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from vlcurate.models.hf_clip_files import save_random_clip, write_clip_tokenizer_files
from vlcurate.models.loader import load_scorer
from vlcurate.models.registry import UnknownModelError, resolve
from vlcurate.models.scorer import WeightsNotFoundError
from vlcurate.models.tv_compat import ensure_torchvision

SMALL = {
    "text": {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 2},
    "vision": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_hidden_layers": 2,
        "patch_size": 16,
        "image_size": 64,
    },
    "projection_dim": 32,
}
CAPTIONS = [
    "A man riding a wave on top of a surfboard.",
    "Two dogs   playing with a FRISBEE in the park!",
    "Café crème, naïve über-cool 123 ... it's fine",
    "",
]


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_clip(tmp_path_factory.mktemp("hf-clip") / "tiny", seed=3, shape=SMALL)


def _jpegs(coco_pairs: list[Any], n: int) -> list[bytes]:
    return [p.path.read_bytes() for p in coco_pairs[:n]]


def test_the_name_resolves_to_a_folder_or_a_hub_repo(tmp_path: Path) -> None:
    spec = resolve(f"hf-clip:{tmp_path}")
    assert spec.backend == "hf-clip" and spec.hf_repo is None
    assert spec.open_clip_name == f"hf-clip:{tmp_path.resolve()}"
    hub = resolve("hf-clip:openai/clip-vit-base-patch32")
    assert hub.backend == "hf-clip" and hub.hf_repo == "openai/clip-vit-base-patch32"
    assert resolve("dfn-b16").backend == "open_clip"
    with pytest.raises(UnknownModelError, match="hf-clip: needs"):
        resolve("hf-clip:")


def test_loads_by_name_and_scores_cosines(hf_dir: Path, coco_pairs: list[Any]) -> None:
    from vlcurate.score.memory import score_pairs

    s = load_scorer(f"hf-clip:{hf_dir}", device="cpu", precision="fp32")
    assert s.preprocessing.image_size == 64 and s.preprocessing.interpolation == "bicubic"
    assert s.embed_dim == 32 and s.context_length == 77
    jpegs = _jpegs(coco_pairs, 6)
    results = score_pairs(s, jpegs, [p.caption for p in coco_pairs[:6]], batch_size=4)
    scores = np.array([r.score for r in results])
    assert all(r.status == "ok" for r in results)
    assert np.all(np.abs(scores) <= 1.0) and np.unique(scores.round(6)).size == 6
    # the fingerprint is of the weights as loaded, so bf16 and fp32 loads share it
    bf16 = load_scorer(f"hf-clip:{hf_dir}", device="cpu", precision="bf16")
    assert bf16.fingerprint == s.fingerprint and len(s.fingerprint) == 64
    img = bf16.images_to_tensor(np.zeros((1, 64, 64, 3), dtype=np.uint8))
    assert img.dtype == torch.bfloat16


def test_scores_equal_running_transformers_directly(hf_dir: Path, coco_pairs: list[Any]) -> None:
    """Same pixels and captions: our cosine equals transformers' own, and its logits / 100 (as
    Data-Juicer reads them; the saved logit scale is 100)."""
    ensure_torchvision()
    from PIL import Image
    from transformers import AutoProcessor, CLIPModel

    s = load_scorer(f"hf-clip:{hf_dir}", device="cpu", precision="fp32")
    model = CLIPModel.from_pretrained(str(hf_dir)).eval()
    processor = AutoProcessor.from_pretrained(str(hf_dir))
    images = [Image.open(io.BytesIO(b)).convert("RGB") for b in _jpegs(coco_pairs, 3)]
    captions = CAPTIONS[:3]
    inputs = processor(text=captions, images=images, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model(**inputs)
        ours = s.cosine(s.encode_pixels(inputs["pixel_values"]), s.encode_texts(captions))
    direct = torch.nn.functional.cosine_similarity(out.image_embeds, out.text_embeds).numpy()
    np.testing.assert_allclose(ours, direct, atol=1e-5)
    np.testing.assert_allclose(ours, out.logits_per_text.diagonal().numpy() / 100.0, atol=1e-5)


def test_text_trimming_is_exact(hf_dir: Path) -> None:
    """The text tower runs only up to the longest caption's end token; padding to 77 changes nothing."""
    s = load_scorer(f"hf-clip:{hf_dir}", device="cpu", precision="fp32")
    tokens = s.tokenize(CAPTIONS)
    with torch.inference_mode():
        trimmed = s.model.encode_text(tokens)
        full = s.model.clip.get_text_features(input_ids=tokens).pooler_output
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)


def test_tokenizer_built_offline_gives_open_clip_token_ids(hf_dir: Path) -> None:
    import open_clip

    ours = load_scorer(f"hf-clip:{hf_dir}", device="cpu", precision="fp32").tokenize([*CAPTIONS, "x " * 100])
    theirs = open_clip.get_tokenizer("ViT-B-32")([*CAPTIONS, "x " * 100])
    for a, b in zip(theirs, ours, strict=True):
        n = int((a != 0).sum())  # open_clip pads with 0, transformers with the end token
        assert a[:n].tolist() == b[:n].tolist()
        assert b[n - 1] == 49407 and a[0] == 49406


def test_tokenizer_files_are_the_classic_vocab_and_merges(tmp_path: Path) -> None:
    vocab, merges = write_clip_tokenizer_files(tmp_path)
    import json

    v = json.loads(vocab.read_text())
    assert len(v) == 49408 and v["<|startoftext|>"] == 49406 and v["<|endoftext|>"] == 49407
    lines = merges.read_text().splitlines()
    assert lines[0].startswith("#version") and len(lines) == 1 + 48894


def test_missing_and_corrupt_folders_fail_clearly(hf_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError, match="not a transformers CLIP folder"):
        load_scorer(f"hf-clip:{tmp_path / 'nope'}")
    corrupt = tmp_path / "corrupt"
    shutil.copytree(hf_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsNotFoundError, match="cannot load it"):
        load_scorer(f"hf-clip:{corrupt}")
    (corrupt / "config.json").write_text("{ broken")
    with pytest.raises(WeightsNotFoundError, match="cannot load it"):
        load_scorer(f"hf-clip:{corrupt}")


def test_a_hub_repo_is_never_downloaded_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(WeightsNotFoundError) as err:
        load_scorer("hf-clip:openai/clip-vit-base-patch32", cache_dir=str(tmp_path))
    assert "--allow-download" in str(err.value) and "openai/clip-vit-base-patch32" in str(err.value)
    assert not any(tmp_path.rglob("*.safetensors"))
