"""Hugging Face transformers CLIP checkpoints (`hf-clip:PATH_OR_REPO`) behind the scorer interface.

Many CLIP checkpoints exist only in transformers' format (`CLIPModel.save_pretrained`: config.json,
model.safetensors, tokenizer and preprocessor files), and tools such as Data-Juicer load them that
way. This module wraps such a model so that `ClipScorer` drives it exactly like an open_clip model:
the same uint8 decode path, the same normalisation, cosine scores in [-1, 1], and a weights
fingerprint. Weights are never downloaded unless `allow_download` is set; a hub repo id is read
from the local Hugging Face cache otherwise.

Needs the optional `hf` extra (`pip install 'vlcurate[hf]'`, i.e. transformers).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from vlcurate.models.registry import HF_CLIP_PREFIX, ModelSpec
from vlcurate.models.scorer import (
    ClipScorer,
    Precision,
    Preprocessing,
    WeightsNotFoundError,
    choose_precision,
    hub_offline,
    place_model,
    resolve_device,
    weights_fingerprint,
)
from vlcurate.models.tv_compat import ensure_torchvision

# transformers' CLIPImageProcessor writes PIL resample codes; our decoder knows these two.
_RESAMPLE = {2: "bilinear", 3: "bicubic"}
_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def _features(out: Any) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output is the projected embedding; 4 a tensor."""
    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if not isinstance(pooled, torch.Tensor):
        raise TypeError(f"unexpected output of a CLIP feature call: {type(out).__name__}")
    return pooled


class HFClipModel(torch.nn.Module):
    """A transformers `CLIPModel` with open_clip's `encode_image` / `encode_text` methods.

    `encode_text` runs the text tower only up to the longest caption's end-of-text token: the tower is
    causal and pools at that token, so the padded tail cannot change any embedding (the same trick
    `text_trim` plays for open_clip models), and COCO-length captions cost a fifth of the 77 tokens.
    """

    def __init__(self, clip: Any, eos_token_id: int) -> None:
        super().__init__()
        self.clip = clip
        self.eos_token_id = int(eos_token_id)

    @property
    def text_projection(self) -> torch.nn.Module:
        proj: torch.nn.Module = self.clip.text_projection
        return proj

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        return _features(self.clip.get_image_features(pixel_values=pixels))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        is_eos = tokens == self.eos_token_id
        ends = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), tokens.shape[1] - 1)
        seq = int(ends.max()) + 1
        return _features(self.clip.get_text_features(input_ids=tokens[:, :seq]))


class HFClipTokenizer:
    """Captions -> a (N, context_length) LongTensor padded with the tokenizer's pad id, like open_clip's."""

    def __init__(self, tokenizer: Any, context_length: int) -> None:
        self.tokenizer = tokenizer
        self.context_length = int(context_length)
        pad = tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else tokenizer.eos_token_id)
        self.eos_token_id = int(tokenizer.eos_token_id)

    def __call__(self, texts: Sequence[str] | str) -> torch.Tensor:
        batch = [texts] if isinstance(texts, str) else list(texts)
        enc = self.tokenizer(
            batch,
            truncation=True,
            max_length=self.context_length,
            return_attention_mask=False,
        )
        ids = torch.full((len(batch), self.context_length), self.pad_id, dtype=torch.long)
        for i, row in enumerate(enc["input_ids"]):
            ids[i, : len(row)] = torch.tensor(row[: self.context_length], dtype=torch.long)
        return ids


def _config_file(
    target: str, local: bool, filename: str, cache_dir: str | None, download: bool
) -> Path | None:
    if local:
        path = Path(target) / filename
        return path if path.is_file() else None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(target, filename, cache_dir=cache_dir, local_files_only=not download))
    except Exception:  # not in the repo (or not cached)
        return None


def _preprocessor_config(
    target: str, local: bool, cache_dir: str | None, download: bool = False
) -> dict[str, Any]:
    """The image processor's settings ({} where there are none and OpenAI's defaults apply).

    transformers 4 writes them to preprocessor_config.json, 5 nests them in processor_config.json.
    """
    path = _config_file(target, local, "preprocessor_config.json", cache_dir, download)
    if path is not None:
        cfg: dict[str, Any] = json.loads(path.read_text())
        return cfg
    path = _config_file(target, local, "processor_config.json", cache_dir, download)
    if path is not None:
        nested: dict[str, Any] = json.loads(path.read_text()).get("image_processor") or {}
        return nested
    return {}


def _preprocessing(cfg: dict[str, Any], image_size: int) -> Preprocessing:
    """Size, mean, std and filter from a preprocessor config (OpenAI's values where it is silent)."""
    crop = cfg.get("crop_size", image_size)
    if isinstance(crop, dict):
        crop = crop.get("height", crop.get("shortest_edge", image_size))
    mean = tuple(cfg.get("image_mean", _OPENAI_MEAN))
    std = tuple(cfg.get("image_std", _OPENAI_STD))
    return Preprocessing(
        image_size=int(crop),
        mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        std=(float(std[0]), float(std[1]), float(std[2])),
        interpolation=_RESAMPLE.get(int(cfg.get("resample", 3)), "bicubic"),
    )


def _how_to_get(target: str, local: bool) -> str:
    if local:
        return (
            f"{target} is not a transformers CLIP folder (it needs config.json, model.safetensors or "
            "pytorch_model.bin, and the tokenizer files vocab.json/merges.txt or tokenizer.json); "
            "write one with CLIPModel.save_pretrained and CLIPProcessor.save_pretrained"
        )
    return (
        f"the Hugging Face repo {target} is not in the local cache: on a machine with network run "
        f"`vlcurate models download hf-clip:{target}` (or `huggingface-cli download {target}`) and copy "
        "the cache (HF_HOME) here, or pass --allow-download"
    )


def load_hf_clip_scorer(
    spec: ModelSpec,
    *,
    device: str = "auto",
    precision: Precision = "auto",
    allow_download: bool = False,
    cache_dir: str | None = None,
) -> ClipScorer:
    """Load an `hf-clip:` model as a `ClipScorer`; WeightsNotFoundError with a how-to when it is absent."""
    target = spec.open_clip_name.removeprefix(HF_CLIP_PREFIX)
    local = spec.hf_repo is None
    folder = Path(target) if local else None
    if folder is not None and not (folder / "config.json").is_file():
        raise WeightsNotFoundError(f"{spec.name}: {_how_to_get(target, local)}")
    ensure_torchvision()  # transformers imports torchvision's transforms when it is installed
    try:
        from transformers import AutoTokenizer, CLIPModel
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "hf-clip models need transformers: pip install 'vlcurate[hf]' (or pip install transformers)"
        ) from exc

    dev = resolve_device(device)
    prec = choose_precision(precision, dev)
    kwargs: dict[str, Any] = {"cache_dir": cache_dir, "local_files_only": not allow_download}
    try:
        with hub_offline(not allow_download):
            clip = CLIPModel.from_pretrained(target, dtype=torch.float32, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(target, **kwargs)
            pp_cfg = _preprocessor_config(target, local, cache_dir, allow_download)
    except Exception as exc:  # missing files, a corrupt config or weights file, no network
        raise WeightsNotFoundError(
            f"{spec.name}: cannot load it ({type(exc).__name__}: {str(exc)[:300]}); "
            f"{_how_to_get(target, local)}"
        ) from exc
    clip.eval()
    config: Any = clip.config
    text_cfg = config.text_config
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else text_cfg.eos_token_id
    model = HFClipModel(clip, eos)
    fingerprint = weights_fingerprint(model)
    placed = place_model(model, dev, prec)
    image_size = int(config.vision_config.image_size)
    tok = HFClipTokenizer(tokenizer, int(text_cfg.max_position_embeddings))
    return ClipScorer(spec, placed, tok, _preprocessing(pp_cfg, image_size), dev, prec, fingerprint)
