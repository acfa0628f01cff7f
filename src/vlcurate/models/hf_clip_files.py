"""Write transformers CLIP folders offline: tokenizer files from open_clip's bundled BPE, random models.

OpenAI's CLIP vocabulary ships inside open_clip (`bpe_simple_vocab_16e6.txt.gz`), so the tokenizer
files transformers wants (vocab.json + merges.txt) can be built without the hub, with the same
token ids. `save_random_clip` writes a seeded random `CLIPModel` with its tokenizer and image
processor, which is what benchmarks and tests use to give two tools the very same weights.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Any

from vlcurate.models.tv_compat import ensure_torchvision

N_MERGES = 49152 - 256 - 2  # the merges CLIP uses out of the BPE file (as open_clip and transformers)
BOS, EOS = "<|startoftext|>", "<|endoftext|>"

# ViT-B/32 as OpenAI trained it (transformers' defaults are this model's text and vision towers).
VIT_B32: dict[str, Any] = {
    "text": {
        "hidden_size": 512,
        "intermediate_size": 2048,
        "num_attention_heads": 8,
        "num_hidden_layers": 12,
    },
    "vision": {
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "patch_size": 32,
        "image_size": 224,
    },
    "projection_dim": 512,
}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (the base of CLIP's vocabulary)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def open_clip_bpe_path() -> Path:
    ensure_torchvision()
    import open_clip.tokenizer as oct

    return Path(oct.default_bpe())


def clip_bpe(bpe_path: Path | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """OpenAI's CLIP vocabulary (token -> id, open_clip's ids) and BPE merges, from open_clip's file."""
    with gzip.open(bpe_path or open_clip_bpe_path()) as fh:
        lines = fh.read().decode("utf-8").split("\n")
    merges = [(a, b) for a, b in (m.split() for m in lines[1 : N_MERGES + 1])]
    base = list(_bytes_to_unicode().values())
    tokens = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def write_clip_tokenizer_files(folder: Path, bpe_path: Path | None = None) -> tuple[Path, Path]:
    """vocab.json and merges.txt (the files of the hub's CLIP repos) with open_clip's token ids."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_bpe(bpe_path)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False))
    merges_path.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return vocab_path, merges_path


def clip_tokenizer(bpe_path: Path | None = None) -> Any:
    """A transformers CLIPTokenizer with OpenAI's vocabulary, built from open_clip's BPE file."""
    ensure_torchvision()
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe(bpe_path)
    merge_pairs: Any = merges  # tokenizers' BPE takes (a, b) pairs; the stub says strings
    return CLIPTokenizer(vocab=vocab, merges=merge_pairs, pad_token=EOS, model_max_length=77)


def save_random_clip(
    folder: Path, *, seed: int = 0, shape: dict[str, Any] | None = None, logit_scale: float = 100.0
) -> Path:
    """A seeded random CLIPModel (ViT-B/32 by default) with tokenizer and image processor, saved to `folder`.

    `shape` takes "text" / "vision" config overrides and "projection_dim"; the image processor is
    OpenAI's (shorter side to the image size with bicubic filtering, centre crop, OpenAI mean/std).
    """
    ensure_torchvision()
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    shape = shape or VIT_B32
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "max_position_embeddings": 77, **shape["text"]},
        vision_config=dict(shape["vision"]),
        projection_dim=int(shape["projection_dim"]),
    )
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    with torch.no_grad():  # trained CLIPs end at the clamp, 100; tools that read logits / 100 get cosines
        model.logit_scale.fill_(math.log(logit_scale))
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder))
    size = int(shape["vision"].get("image_size", 224))
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size}, resample=3
    )
    CLIPProcessor(image_processor=image_processor, tokenizer=clip_tokenizer()).save_pretrained(str(folder))
    write_clip_tokenizer_files(folder)  # the classic files too, for readers that want them
    return folder
