"""Open-vocabulary detection and segmentation through transformers: OWLv2, Grounding DINO, SAM.

The real models, loaded by their hub names. Weights are read from the local Hugging Face cache
unless `allow_download`; when they are absent, loading raises ModelUnavailableError saying how to
get them. Detected phrases are mapped back to the spec's classes explicitly (`PhraseMap`); a box
outside the image is clipped, an empty one dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

OWLV2 = "google/owlv2-base-patch16-ensemble"
GROUNDING_DINO = "IDEA-Research/grounding-dino-tiny"
SAM = "facebook/sam-vit-base"
DETECTORS = {"owlv2": OWLV2, "grounding-dino": GROUNDING_DINO}

Box = tuple[int, int, int, int]


class ModelUnavailableError(RuntimeError):
    """A model's weights are not on this machine (or transformers is missing)."""


def how_to(model: str) -> str:
    return (
        f"weights for {model} are not in the local Hugging Face cache; download them on a machine with "
        f"network access (`huggingface-cli download {model}`, then copy ~/.cache/huggingface or set HF_HOME) "
        "or pass --allow-download; offline, use the bundled stand-ins (--labeller tiny-synth)"
    )


def load_pretrained(model: str, kinds: tuple[str, str], *, allow_download: bool = False) -> tuple[Any, Any]:
    """(processor, model) by transformers class names, e.g. ("Owlv2Processor", "Owlv2ForObjectDetection")."""
    from vlcurate.models.tv_compat import ensure_torchvision

    ensure_torchvision()  # a CPU-only torch with PyPI's torchvision: transformers' image processors import it
    try:
        import transformers
    except ImportError as exc:
        raise ModelUnavailableError(
            f"{model} needs transformers: pip install 'vlcurate[hf]' ({exc})"
        ) from None
    try:
        proc_cls, model_cls = (getattr(transformers, k) for k in kinds)
        processor = proc_cls.from_pretrained(model, local_files_only=not allow_download)
        net = model_cls.from_pretrained(model, local_files_only=not allow_download)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(f"{how_to(model)} ({type(exc).__name__})") from None
    except (ImportError, RuntimeError, AttributeError) as exc:
        raise ModelUnavailableError(f"{model} cannot load with this transformers install: {exc}") from None
    net.eval()
    return processor, net


@dataclass
class PhraseMap:
    """Text queries sent to a detector and the spec class each stands for."""

    queries: list[str]
    classes: list[str]
    unknown: list[str] = field(default_factory=list)  # phrases that named no class (counted, dropped)

    @classmethod
    def from_prompts(cls, prompts: dict[str, list[str]]) -> PhraseMap:
        queries, classes = [], []
        for name, texts in prompts.items():
            for t in dict.fromkeys([name, *texts]):
                queries.append(t.rstrip(".").strip())
                classes.append(name)
        return cls(queries, classes)

    def class_of(self, phrase: str) -> str | None:
        p = phrase.strip().lower().rstrip(".")
        if p in self.queries:
            return self.classes[self.queries.index(p)]
        hits = {c for q, c in zip(self.queries, self.classes, strict=True) if q and (q in p or p in q)}
        if len(hits) == 1:
            return hits.pop()
        self.unknown.append(phrase)
        return None


def clip_box(box: Any, width: int, height: int) -> Box | None:
    """A box clipped to the image, or None when nothing of it is inside."""
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = max(0.0, min(x0, x1)), min(float(width), max(x0, x1))
    y0, y1 = max(0.0, min(y0, y1)), min(float(height), max(y0, y1))
    b = (round(x0), round(y0), round(x1), round(y1))
    return b if b[2] > b[0] and b[3] > b[1] else None


class HfDetector:
    """OWLv2 or Grounding DINO over the queries of a PhraseMap: [(box, class, score)] per image."""

    def __init__(self, name: str, *, threshold: float = 0.2, allow_download: bool = False) -> None:
        self.model_name = DETECTORS.get(name, name)
        self.threshold = threshold
        kinds = (
            ("Owlv2Processor", "Owlv2ForObjectDetection")
            if "owl" in self.model_name.lower()
            else ("AutoProcessor", "AutoModelForZeroShotObjectDetection")
        )
        self.processor, self.model = load_pretrained(self.model_name, kinds, allow_download=allow_download)

    def detect(self, image: Image.Image, phrases: PhraseMap) -> list[tuple[Box, str, float]]:
        import torch

        w, h = image.size
        if "owl" in self.model_name.lower():
            inputs = self.processor(text=[phrases.queries], images=image, return_tensors="pt")
            with torch.inference_mode():
                out = self.model(**inputs)
            side = max(w, h)  # OWLv2 pads to a square: boxes are relative to the padded image
            res = self.processor.post_process_object_detection(
                out, threshold=self.threshold, target_sizes=torch.tensor([[side, side]])
            )[0]
            found = [
                (b, phrases.queries[int(i)], float(s))
                for b, i, s in zip(res["boxes"], res["labels"], res["scores"], strict=True)
            ]
        else:
            text = ". ".join(phrases.queries) + "."
            inputs = self.processor(images=image, text=text, return_tensors="pt")
            with torch.inference_mode():
                out = self.model(**inputs)
            res = self.processor.post_process_grounded_object_detection(
                out,
                inputs.input_ids,
                threshold=self.threshold,
                text_threshold=self.threshold,
                target_sizes=[(h, w)],
            )[0]
            labels = res.get("text_labels", res.get("labels"))
            found = [
                (b, str(t), float(s)) for b, t, s in zip(res["boxes"], labels, res["scores"], strict=True)
            ]
        out_boxes = []
        for b, phrase, score in found:
            cls = phrases.class_of(phrase)
            box = clip_box(b.tolist(), w, h)
            if cls is not None and box is not None:
                out_boxes.append((box, cls, score))
        return out_boxes


class SamSegmenter:
    """SAM prompted with boxes: one mask per box."""

    def __init__(self, name: str = SAM, *, allow_download: bool = False) -> None:
        self.model_name = name
        self.processor, self.model = load_pretrained(
            name, ("SamProcessor", "SamModel"), allow_download=allow_download
        )

    def segment(self, image: Image.Image, boxes: list[Box]) -> list[np.ndarray]:
        import torch

        if not boxes:
            return []
        inputs = self.processor(image, input_boxes=[[list(b) for b in boxes]], return_tensors="pt")
        with torch.inference_mode():
            out = self.model(**inputs, multimask_output=False)
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"]
        )[0]
        return [np.asarray(m[0].numpy(), dtype=bool) for m in masks]
