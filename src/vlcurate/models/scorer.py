"""What every CLIP-style scorer backend shares: the scorer object (encode, score), precision and
device choice, the preprocessing it was trained with, weight fingerprints and the missing-weights error.
Backends (`models.clip` for open_clip, `models.hf_clip` for transformers) import this, never each other.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from vlcurate.models.device import cpu_supports_bf16
from vlcurate.models.registry import ModelSpec
from vlcurate.models.text_trim import can_trim, encode_text_trimmed

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class WeightsNotFoundError(RuntimeError):
    """The model's weights are not on this machine and downloading was not allowed (or failed)."""


@dataclass(frozen=True)
class Preprocessing:
    """What a decoder must do to feed this model: resize shortest side, centre crop, normalise."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def as_dict(self) -> dict[str, Any]:
        return {
            "image_size": self.image_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
            "resize_mode": self.resize_mode,
        }


@contextlib.contextmanager
def hub_offline(offline: bool) -> Iterator[None]:
    """Force (or leave) Hugging Face hub offline mode for the duration of a load."""
    if not offline:
        yield
        return
    old_env = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants: Any = None
    old_const = None
    try:
        import huggingface_hub.constants as hub_constants

        old_const = hub_constants.HF_HUB_OFFLINE
        hub_constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - huggingface_hub comes with open_clip
        pass
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = old_const


def how_to_get(spec: ModelSpec) -> str:
    """A user-facing hint on obtaining a model's weights."""
    if spec.bundled:
        return "the bundled weights are missing from the installed package; reinstall vlcurate"
    if spec.hf_repo:
        return (
            f"weights come from the Hugging Face repo {spec.hf_repo}: on a machine with network run "
            f"`vlcurate models download {spec.name}` (or `huggingface-cli download {spec.hf_repo}`), "
            "then copy the Hugging Face cache (HF_HOME) here; or pass --allow-download; or point "
            "--model at a local open_clip folder or checkpoint (open_clip:ARCH:/path/to/ckpt.pt). "
            "To try vlcurate offline, use the bundled --model tiny-synth"
        )
    return "pass a path that exists, or --allow-download for a pretrained tag"


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    return dev


# Below this many parameters a model is cheap next to image decoding: on a CPU, the scoring job
# then gives it one thread and leaves the other cores to the decode workers.
SMALL_MODEL_PARAMS = 20_000_000


def choose_precision(precision: Precision, device: torch.device) -> str:
    """auto: bf16 autocast on CUDA, bf16 weights on CPUs with native bf16 (AMX or AVX512-BF16), else fp32."""
    if precision != "auto":
        if precision == "fp16" and device.type == "cpu":
            raise ValueError("fp16 is not supported on CPU; use bf16 or fp32")
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if cpu_supports_bf16() else "fp32"


@dataclass
class ClipScorer:
    """A loaded CLIP-style model with the tokenizer and preprocessing it was trained with."""

    spec: ModelSpec
    model: Any
    tokenizer: Any
    preprocessing: Preprocessing
    device: torch.device
    precision: str
    _fingerprint: str | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    @property
    def is_small(self) -> bool:
        """Cheap next to decoding its inputs (see SMALL_MODEL_PARAMS)."""
        return self.num_parameters < SMALL_MODEL_PARAMS

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))

    @property
    def embed_dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if isinstance(proj, torch.Tensor):
            return int(proj.shape[-1])
        if isinstance(proj, torch.nn.Linear):
            return int(proj.out_features)
        with torch.inference_mode():
            return int(self.encode_texts(["a"]).shape[-1])

    @property
    def fingerprint(self) -> str:
        """sha256 over the weights as loaded (names, dtypes, bytes), before any precision cast.

        So the same checkpoint has the same fingerprint in bf16 and fp32, on CPU and GPU: the
        platform pins a task to a model, not to the machine that runs it.
        """
        if self._fingerprint is None:
            self._fingerprint = weights_fingerprint(self.model)
        return self._fingerprint

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.device.type == "cuda" and self.precision in ("bf16", "fp16"):
            dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    @property
    def _input_dtype(self) -> torch.dtype:
        if self.device.type == "cpu" and self.precision == "bf16":
            return torch.bfloat16
        return torch.float32

    def images_to_tensor(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """uint8 NHWC (already resized and cropped) -> normalised NCHW on the model's device."""
        x = torch.as_tensor(images)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, H, W, 3), got {tuple(x.shape)} {x.dtype}")
        # One fused pass, (x / 255 - mean) / std as x * scale + shift; the NHWC memory layout is
        # kept (channels-last), which is also the layout oneDNN's convolutions run fastest on.
        x = x.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        mean = torch.tensor(self.preprocessing.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocessing.std, device=self.device).view(1, 3, 1, 1)
        return torch.addcmul(-mean / std, x, 1.0 / (255.0 * std)).to(self._input_dtype)

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer([t if t is not None else "" for t in texts])

    @torch.inference_mode()
    def encode_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised float32 image embeddings from a model-ready NCHW tensor."""
        with self._autocast():
            emb = self.model.encode_image(pixels.to(self.device, self._input_dtype))
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    @torch.inference_mode()
    def encode_images(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """Normalised float32 image embeddings from uint8 NHWC images."""
        return self.encode_pixels(self.images_to_tensor(images))

    @torch.inference_mode()
    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised float32 text embeddings; the padded tail is skipped where that is exact."""
        with self._autocast():
            if can_trim(self.model):
                emb = encode_text_trimmed(self.model, tokens.to(self.device))
            else:
                emb = self.model.encode_text(tokens.to(self.device))
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised float32 text embeddings."""
        return self.encode_tokens(self.tokenize(texts))

    @staticmethod
    def cosine(image_emb: torch.Tensor, text_emb: torch.Tensor) -> np.ndarray:
        """Row-wise cosine similarity of normalised embeddings, float32, clipped to [-1, 1]."""
        s = (image_emb.float() * text_emb.float()).sum(dim=-1).clamp_(-1.0, 1.0)
        return s.cpu().numpy().astype(np.float32)

    def score(self, images: torch.Tensor | np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Cosine similarity for each (image, caption) pair."""
        return self.cosine(self.encode_images(images), self.encode_texts(texts))

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "open_clip_name": self.spec.open_clip_name,
            "pretrained": self.spec.pretrained,
            "random_init": self.spec.random_init,
            "fingerprint": self.fingerprint,
            "device": str(self.device),
            "precision": self.precision,
            "context_length": self.context_length,
        }


def weights_fingerprint(model: Any) -> str:
    """sha256 over a model's state dict: names, dtypes and bytes."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith((".pt", ".pth", ".bin", ".safetensors"))


def place_model(model: torch.nn.Module, dev: torch.device, prec: str) -> torch.nn.Module:
    """Cast to bf16 on CPUs that run it natively (CUDA uses autocast instead), move to `dev`, and let
    torch use every core on CPU; every backend loads its weights in fp32 first and ends here."""
    if dev.type == "cpu" and prec == "bf16":
        model = model.to(torch.bfloat16)
    model = model.to(dev)
    if dev.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    return model
