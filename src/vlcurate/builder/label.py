"""Labelling: classification by zero-shot CLIP (or a VLM), detection and segmentation by region
proposals or an open-vocabulary detector plus a box-prompted segmenter. Every label keeps its
confidence and the model that made it.

Offline the bundled tiny-synth scorer labels whole images and region crops; `hf_models` holds the
real OWLv2 / Grounding DINO / SAM code behind the same `Labeller.label` call.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
from PIL import Image

from vlcurate.builder.regions import Box, background_colour, propose_regions, segment_in_box
from vlcurate.builder.spec import DatasetSpec

TEMPERATURE = 100.0  # CLIP's logit scale: softmax(100 * cosine) over the classes


@dataclass
class Label:
    """One label: the class, how sure the model was, which model, and for detection its box/mask."""

    cls: str
    confidence: float
    model: str
    box: Box | None = None
    mask: np.ndarray | None = field(default=None, repr=False)
    verified: bool | None = None
    verifier: str | None = None
    verifier_confidence: float | None = None
    probs: list[float] | None = field(default=None, repr=False)  # over spec classes, for label-issue search
    corrected_from: str | None = None  # the model's class, when the crowd's verified label replaced it

    def to_json(self) -> dict[str, Any]:
        return {
            "class": self.cls,
            "confidence": round(self.confidence, 4),
            "model": self.model,
            "box": list(self.box) if self.box else None,
            "verified": self.verified,
            "verifier": self.verifier,
            "verifier_confidence": None
            if self.verifier_confidence is None
            else round(self.verifier_confidence, 4),
            **({"corrected_from": self.corrected_from} if self.corrected_from else {}),
        }


def open_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=-1, keepdims=True))


def crop_canvas(a: np.ndarray, box: Box, size: int, side: float | None = None) -> np.ndarray:
    """The box's pixels centred on a `size` canvas of the image's background colour.

    `side`: scale the crop so its longer side is this many pixels (default: as it is, shrunk to fit)."""
    x0, y0, x1, y1 = box
    crop = Image.fromarray(a[y0:y1, x0:x1])
    longest = max(crop.size)
    target = side if side is not None else min(longest, 0.9 * size)
    if round(target) != longest:
        k = target / longest
        crop = crop.resize(
            (max(1, round(crop.width * k)), max(1, round(crop.height * k))), Image.Resampling.NEAREST
        )
    bg = tuple(int(v) for v in background_colour(a))
    canvas = Image.new("RGB", (size, size), bg)
    canvas.paste(crop, ((size - crop.width) // 2, (size - crop.height) // 2))
    return np.asarray(canvas, dtype=np.uint8)


class ZeroShot:
    """A CLIP-style scorer as a zero-shot classifier over the spec's classes (probabilities per class)."""

    def __init__(self, scorer: Any, spec: DatasetSpec, text: np.ndarray | None = None) -> None:
        from vlcurate.builder.collect import class_text_embeddings

        self.scorer = scorer
        self.model = f"zero-shot:{scorer.name}"
        self.size = int(scorer.preprocessing.image_size)
        self.text = class_text_embeddings(scorer, spec) if text is None else text
        # the spec's `other` things compete with the classes, so a region that is one is left alone
        self.other = (
            scorer.encode_texts([f"a {o}." for o in spec.other]).cpu().numpy() if spec.other else None
        )

    def probs(self, arrays: list[np.ndarray]) -> np.ndarray:
        """Probabilities over the classes (renormalised without the `other` things)."""
        return self.probs_open(arrays)[0]

    def probs_open(self, arrays: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities over the classes, whether an `other` thing scored above every class)."""
        k = len(self.text)
        if not arrays:
            return np.zeros((0, k), dtype=np.float32), np.zeros(0, dtype=bool)
        text = self.text if self.other is None else np.concatenate([self.text, self.other])
        logits = []
        for start in range(0, len(arrays), 512):
            emb = self.scorer.encode_images(np.stack(arrays[start : start + 512])).cpu().numpy()
            logits.append(TEMPERATURE * emb @ text.T)
        z = np.concatenate(logits)
        return softmax(z[:, :k]).astype(np.float32), np.asarray(z.argmax(1) >= k)

    def image_arrays(self, datas: list[bytes]) -> list[np.ndarray]:
        from vlcurate.base.images import decode_image

        arrays = []
        for d in datas:
            dec = decode_image(d, self.size)
            arrays.append(
                dec.array if dec.array is not None else np.zeros((self.size, self.size, 3), np.uint8)
            )
        return arrays


class Labeller(Protocol):
    model: str

    def label(self, datas: list[bytes]) -> list[list[Label]]: ...


class ClipClassifier:
    """Whole-image zero-shot classification: one label per image."""

    def __init__(self, zero_shot: ZeroShot, classes: list[str]) -> None:
        self.zs, self.classes, self.model = zero_shot, classes, zero_shot.model

    def label(self, datas: list[bytes]) -> list[list[Label]]:
        p, other = self.zs.probs_open(self.zs.image_arrays(datas))
        return [
            [] if o else [Label(self.classes[int(r.argmax())], float(r.max()), self.model, probs=r.tolist())]
            for r, o in zip(p, other, strict=True)
        ]


class RegionLabeller:
    """Detection (and segmentation) offline: colour-segmentation proposals, each crop classified zero-shot.

    `segment=True` keeps each proposal's mask (the stand-in for SAM prompted with the box)."""

    def __init__(
        self, zero_shot: ZeroShot, classes: list[str], *, segment: bool = False, min_pixels: int = 12
    ) -> None:
        self.zs, self.classes, self.segment = zero_shot, classes, segment
        self.min_pixels = min_pixels
        self.model = f"regions+{zero_shot.model}" + ("+mask" if segment else "")

    def label(self, datas: list[bytes]) -> list[list[Label]]:
        regions: list[tuple[int, Box, np.ndarray]] = []
        crops: list[np.ndarray] = []
        for i, d in enumerate(datas):
            try:
                a = np.asarray(open_rgb(d), dtype=np.uint8)
            except Exception:
                continue
            for box, mask in propose_regions(a, min_pixels=self.min_pixels):
                regions.append((i, box, mask))
                crops.append(crop_canvas(a, box, self.zs.size))
        probs, other = self.zs.probs_open(crops)
        out: list[list[Label]] = [[] for _ in datas]
        for (i, box, mask), r, o in zip(regions, probs, other, strict=True):
            if o:  # one of the spec's `other` things: background for this dataset
                continue
            out[i].append(
                Label(
                    self.classes[int(r.argmax())],
                    float(r.max()),
                    self.model,
                    box=box,
                    mask=mask if self.segment else None,
                    probs=r.tolist(),
                )
            )
        return out


class HfLabeller:
    """Detection with OWLv2 / Grounding DINO and, for segmentation, SAM from those boxes."""

    def __init__(
        self, detector: str, spec: DatasetSpec, *, segment: bool = False, allow_download: bool = False
    ) -> None:
        from vlcurate.builder.hf_models import SAM, HfDetector, PhraseMap, SamSegmenter

        self.detector = HfDetector(detector, allow_download=allow_download)
        self.segmenter = SamSegmenter(SAM, allow_download=allow_download) if segment else None
        self.phrases = PhraseMap.from_prompts(
            {c.name: [p.rstrip(".") for p in c.prompts()] for c in spec.classes}
        )
        self.model = self.detector.model_name + (f"+{SAM}" if segment else "")

    def label(self, datas: list[bytes]) -> list[list[Label]]:
        out: list[list[Label]] = []
        for d in datas:
            img = open_rgb(d)
            found = self.detector.detect(img, self.phrases)
            masks = (
                self.segmenter.segment(img, [b for b, _, _ in found])
                if self.segmenter
                else [None] * len(found)
            )
            out.append(
                [Label(c, s, self.model, box=b, mask=m) for (b, c, s), m in zip(found, masks, strict=True)]
            )
        return out


def box_masks(datas: list[bytes], labels: list[list[Label]]) -> None:
    """Fill missing masks from boxes with the offline box-prompted segmenter (SAM's stand-in)."""
    for d, labs in zip(datas, labels, strict=True):
        if any(lab.mask is None and lab.box is not None for lab in labs):
            a = np.asarray(open_rgb(d), dtype=np.uint8)
            for lab in labs:
                if lab.mask is None and lab.box is not None:
                    lab.mask = segment_in_box(a, lab.box)


def make_labeller(
    spec: DatasetSpec,
    scorer: Any,
    *,
    detector: str | None = None,
    allow_download: bool = False,
    zero_shot: ZeroShot | None = None,
) -> Labeller:
    """The labeller for the spec's task: zero-shot CLIP, or regions, or a transformers detector by name."""
    classes = spec.class_names
    if spec.task == "classify":
        return ClipClassifier(zero_shot or ZeroShot(scorer, spec), classes)
    if detector:
        return HfLabeller(detector, spec, segment=spec.task == "segment", allow_download=allow_download)
    return RegionLabeller(zero_shot or ZeroShot(scorer, spec), classes, segment=spec.task == "segment")
