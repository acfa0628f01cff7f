"""Load CLIP-style scorers through open_clip, offline unless allowed, and score pairs with them.

`load_scorer(name)` hides where a model comes from (bundled folder, Hugging Face hub cache,
OpenAI checkpoint, random weights) behind a name, like open_clip's own factory. Scores are the
cosine similarity of L2-normalised image and text embeddings (never a sigmoid with a bias).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vlcurate.models.attn_pool import use_first_token_attention_pool
from vlcurate.models.registry import ModelSpec, resolve
from vlcurate.models.resnet_fold import fold_batchnorms
from vlcurate.models.scorer import (
    ClipScorer,
    Precision,
    Preprocessing,
    WeightsNotFoundError,
    choose_precision,
    how_to_get,
    hub_offline,
    looks_like_path,
    place_model,
    resolve_device,
    weights_fingerprint,
)
from vlcurate.models.tv_compat import ensure_torchvision


def load_open_clip_scorer(
    spec: ModelSpec,
    *,
    device: str = "auto",
    precision: Precision = "auto",
    allow_download: bool = False,
    cache_dir: str | None = None,
    seed: int = 0,
) -> ClipScorer:
    """Build and load an open_clip scorer; WeightsNotFoundError with a how-to when weights are absent."""
    ensure_torchvision()
    import open_clip

    dev = resolve_device(device)
    prec = choose_precision(precision, dev)
    if (
        spec.bundled
        and not (Path(spec.open_clip_name.removeprefix("local-dir:")) / "open_clip_config.json").exists()
    ):
        raise WeightsNotFoundError(f"{spec.name}: {how_to_get(spec)}")
    if spec.pretrained and looks_like_path(spec.pretrained) and not Path(spec.pretrained).exists():
        raise WeightsNotFoundError(f"{spec.name}: checkpoint file {spec.pretrained} does not exist")
    if spec.random_init:
        torch.manual_seed(seed)
    try:
        with hub_offline(not allow_download):
            model, _, preprocess = open_clip.create_model_and_transforms(
                spec.open_clip_name,
                pretrained=spec.pretrained,
                device="cpu",
                cache_dir=cache_dir,
            )
            tokenizer = open_clip.get_tokenizer(
                spec.open_clip_name.split(":", 1)[0] if spec.random_init else spec.open_clip_name,
                cache_dir=cache_dir,
            )
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        offline_markers = (
            "offline",
            "LocalEntryNotFound",
            "OfflineModeIsEnabled",
            "Cannot find the requested",
            "couldn't connect",
            "Connection",
            "urlopen",
            "Max retries",
        )
        if any(m.lower() in text.lower() for m in offline_markers):
            raise WeightsNotFoundError(
                f"weights for {spec.name!r} ({spec.open_clip_name}"
                f"{', ' + spec.pretrained if spec.pretrained else ''}) are not on this machine and "
                f"downloading is {'not allowed' if not allow_download else 'not possible'}: "
                f"{how_to_get(spec)}"
            ) from exc
        raise
    model.eval()
    fingerprint = weights_fingerprint(model)
    use_first_token_attention_pool(model)  # same scores, less work (ModifiedResNet towers only)
    if dev.type == "cpu":
        fold_batchnorms(model)  # ~20% off a small ResNet tower on CPU; fp32 embeddings move ~1e-5
    model = place_model(model, dev, prec)
    pp = _preprocessing_of(preprocess, model)
    return ClipScorer(spec, model, tokenizer, pp, dev, prec, fingerprint)


def peek_image_size(name: str) -> int | None:
    """The model's input size from its config alone (no weights), or None when that needs a load."""
    try:
        spec = resolve(name)
    except ValueError:
        return None
    cfg: dict[str, Any] | None = None
    if spec.open_clip_name.startswith("local-dir:"):
        path = Path(spec.open_clip_name.removeprefix("local-dir:")) / "open_clip_config.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        size = (raw.get("preprocess_cfg") or {}).get("size")
        cfg = raw.get("model_cfg")
        if size is not None:
            return int(size[0] if isinstance(size, (list, tuple)) else size)
    elif not spec.open_clip_name.startswith("hf-hub:"):
        ensure_torchvision()
        import open_clip

        cfg = open_clip.get_model_config(spec.open_clip_name)
    image_size = ((cfg or {}).get("vision_cfg") or {}).get("image_size")
    if image_size is None:
        return None
    return int(image_size[0] if isinstance(image_size, (list, tuple)) else image_size)


def _preprocessing_of(preprocess: Any, model: Any) -> Preprocessing:
    """Read image size, mean and std from the model's own eval transform (what it was trained with)."""
    cfg = getattr(getattr(model, "visual", None), "preprocess_cfg", None) or {}
    size: Any = cfg.get("size") or getattr(getattr(model, "visual", None), "image_size", None) or 224
    if isinstance(size, (tuple, list)):
        size = size[0]
    mean = tuple(cfg.get("mean", (0.48145466, 0.4578275, 0.40821073)))
    std = tuple(cfg.get("std", (0.26862954, 0.26130258, 0.27577711)))
    for t in getattr(preprocess, "transforms", []):
        if type(t).__name__ == "Normalize":
            mean, std = tuple(t.mean), tuple(t.std)
    return Preprocessing(
        image_size=int(size),
        mean=(float(mean[0]), float(mean[1]), float(mean[2])),
        std=(float(std[0]), float(std[1]), float(std[2])),
        interpolation=str(cfg.get("interpolation", "bicubic")),
        resize_mode=str(cfg.get("resize_mode", "shortest")),
    )


def weights_available(spec: ModelSpec, cache_dir: str | None = None) -> bool | None:
    """Whether loading `spec` would work offline: True/False, or None when it cannot be told cheaply."""
    if spec.random_init:
        return True
    if spec.open_clip_name.startswith("local-dir:"):
        return (Path(spec.open_clip_name.removeprefix("local-dir:")) / "open_clip_config.json").exists()
    if spec.pretrained and looks_like_path(spec.pretrained):
        return Path(spec.pretrained).exists()
    repo = spec.hf_repo
    if repo is None:
        return None
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir(cache_dir) if cache_dir else scan_cache_dir()
        return any(r.repo_id == repo for r in info.repos)
    except Exception:
        return False
