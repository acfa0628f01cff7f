"""Named scoring models: how each name is built and where its weights come from.

A name resolves to a `ModelSpec`. Besides the fixed entries, four forms are open-ended:
`random:ARCH` (an open_clip architecture with random weights, for benchmarks), `local-dir:PATH`
or a plain directory path (an open_clip folder with `open_clip_config.json` and weights),
`open_clip:ARCH:PRETRAINED` where PRETRAINED is an open_clip tag or a checkpoint file path, and
`hf-clip:PATH_OR_REPO` (a Hugging Face transformers `CLIPModel` folder or hub repo id, loaded by
`vlcurate.models.hf_clip` rather than open_clip).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TINY_SYNTH_DIR = WEIGHTS_DIR / "tiny-synth"


class UnknownModelError(ValueError):
    """The model name is not in the registry and is not one of the open-ended forms."""


@dataclass(frozen=True)
class ModelSpec:
    """How to build one scorer with open_clip.

    `open_clip_name` is what `open_clip.create_model_and_transforms` takes as its model name
    (an architecture, `hf-hub:org/repo` or `local-dir:PATH`); `pretrained` is an open_clip tag or
    a checkpoint path (None for hub/local-dir names and for random weights).
    """

    name: str
    open_clip_name: str
    pretrained: str | None
    description: str
    hf_repo: str | None = None  # where the weights live on the Hugging Face hub, when they do
    bundled: bool = False
    random_init: bool = False
    note: str = ""
    backend: str = "open_clip"  # "hf-clip": a transformers CLIPModel (see vlcurate.models.hf_clip)


_FIXED: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "tiny-synth",
            f"local-dir:{TINY_SYNTH_DIR}",
            None,
            "CLIP-style model trained on vlcurate's synthetic scene world (bundled; 1.3M-parameter ResNet "
            "image tower, 2-layer text transformer)",
            bundled=True,
        ),
        ModelSpec(
            "dfn-b16",
            "hf-hub:apple/DFN2B-CLIP-ViT-B-16",
            None,
            "ViT-B/16 CLIP trained on DFN-2B (Apple); the default real scorer",
            hf_repo="apple/DFN2B-CLIP-ViT-B-16",
            note="A CLIP trained on DFN-filtered data, used as the scorer by choice: the DFN paper "
            "notes that ImageNet accuracy does not predict filtering quality.",
        ),
        ModelSpec(
            "dfn-l14",
            "hf-hub:apple/DFN2B-CLIP-ViT-L-14",
            None,
            "ViT-L/14 CLIP trained on DFN-2B (Apple)",
            hf_repo="apple/DFN2B-CLIP-ViT-L-14",
        ),
        ModelSpec(
            "openai-b32",
            "ViT-B-32-quickgelu",
            "openai",
            "OpenAI CLIP ViT-B/32 (DataComp's clip_b32_similarity_score)",
            hf_repo="timm/vit_base_patch32_clip_224.openai",
        ),
        ModelSpec(
            "openai-l14",
            "ViT-L-14-quickgelu",
            "openai",
            "OpenAI CLIP ViT-L/14 (DataComp's clip_l14_similarity_score)",
            hf_repo="timm/vit_large_patch14_clip_224.openai",
        ),
        ModelSpec(
            "datacomp-l14",
            "ViT-L-14",
            "datacomp_xl_s13b_b90k",
            "ViT-L/14 trained on DataComp-1B (13B samples seen)",
            hf_repo="laion/CLIP-ViT-L-14-DataComp.XL-s13B-b90K",
        ),
    )
}

OPEN_FORMS = {
    "random:ARCH": "any open_clip architecture with random weights, e.g. random:ViT-B-32 (benchmarks)",
    "local-dir:PATH": "an open_clip model folder (open_clip_config.json + open_clip_model.safetensors)",
    "open_clip:ARCH:PRETRAINED": "an open_clip architecture with a pretrained tag or a checkpoint file path",
    "hf-clip:PATH_OR_REPO": "a transformers CLIPModel folder (save_pretrained) or hub repo id, e.g. "
    "hf-clip:openai/clip-vit-base-patch32 (needs the `hf` extra)",
}

HF_CLIP_PREFIX = "hf-clip:"


def _looks_like_local(value: str) -> bool:
    """A filesystem path rather than a hub repo id (`org/name`)."""
    return value.startswith(("/", ".", "~")) or Path(value).expanduser().exists() or value.count("/") != 1


def _hf_clip_spec(name: str) -> ModelSpec:
    target = name.removeprefix(HF_CLIP_PREFIX).strip()
    if not target:
        raise UnknownModelError(
            "hf-clip: needs a folder or a hub repo id, e.g. hf-clip:/models/clip-b32 or "
            "hf-clip:openai/clip-vit-base-patch32"
        )
    if _looks_like_local(target):
        path = Path(target).expanduser().resolve()
        return ModelSpec(
            name, f"{HF_CLIP_PREFIX}{path}", None, f"transformers CLIP folder {path}", backend="hf-clip"
        )
    return ModelSpec(
        name,
        f"{HF_CLIP_PREFIX}{target}",
        None,
        f"transformers CLIP from the Hugging Face repo {target}",
        hf_repo=target,
        backend="hf-clip",
    )


def fixed_specs() -> list[ModelSpec]:
    """The named entries of the registry, in a stable order."""
    return list(_FIXED.values())


def resolve(name: str) -> ModelSpec:
    """Turn a model name (or an open-ended form) into a `ModelSpec`."""
    name = name.strip()
    if name in _FIXED:
        return _FIXED[name]
    if name.startswith(HF_CLIP_PREFIX):
        return _hf_clip_spec(name)
    if name.startswith("random:"):
        arch = name.removeprefix("random:")
        if not arch:
            raise UnknownModelError("random: needs an architecture, e.g. random:ViT-B-32")
        return ModelSpec(name, arch, None, f"{arch} with random weights", random_init=True)
    if name.startswith("local-dir:") or (
        Path(name).is_dir() and (Path(name) / "open_clip_config.json").exists()
    ):
        path = Path(name.removeprefix("local-dir:")).expanduser().resolve()
        if not (path / "open_clip_config.json").exists():
            raise UnknownModelError(f"{path} has no open_clip_config.json; not an open_clip model folder")
        return ModelSpec(name, f"local-dir:{path}", None, f"open_clip model folder {path}")
    if name.startswith("open_clip:"):
        parts = name.split(":", 2)
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise UnknownModelError(
                "use open_clip:ARCH:PRETRAINED, e.g. open_clip:ViT-B-32:/ckpt/epoch_32.pt"
            )
        return ModelSpec(name, parts[1], parts[2], f"open_clip {parts[1]} with {parts[2]}")
    known = ", ".join(_FIXED)
    raise UnknownModelError(
        f"unknown model {name!r}. Known names: {known}; or one of: {', '.join(OPEN_FORMS)}. "
        "Run `vlcurate models` for the list."
    )
