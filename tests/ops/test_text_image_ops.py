"""Caption and image operators on real COCO pairs and hostile input: columns, keep, reasons."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFilter

from vlcurate.ops.image_ops import ImageParams, ImageQuality
from vlcurate.ops.text_ops import (
    CleanCaption,
    ConceptMatch,
    ConceptParams,
    Language,
    LanguageParams,
    LengthParams,
    RepetitionParams,
    TextLength,
    TextRepetition,
)


def _batch(texts: list[str | None], images: list[bytes | None] | None = None) -> pa.Table:
    n = len(texts)
    return pa.table(
        {
            "uid": [f"{i:032x}" for i in range(n)],
            "text": pa.array(texts, pa.string()),
            "image": pa.array(images or [None] * n, pa.binary()),
        }
    )


def _col(t: pa.Table, name: str) -> list[Any]:
    return t.column(name).to_pylist()


def test_caption_operators_chain_and_keep_the_first_reason(coco_pairs: list[Any]) -> None:
    texts = [
        coco_pairs[0].caption,
        "Ein Hund spielt im Park mit einem Ball",
        "dog",
        "buy now buy now buy now buy now buy now buy now buy now buy now buy now buy now buy now buy now",
        None,
        "a tabby cat sleeping next to two golden retrievers",
    ]
    b = _batch(texts)
    b = TextLength(LengthParams(min_words=3, min_chars=6)).process(b)
    b = Language(LanguageParams(keep=["en"])).process(b)
    b = TextRepetition(RepetitionParams(word_n=2, max_word_repetition=0.5)).process(b)
    b = ConceptMatch(ConceptParams(vocabulary="imagenet1k")).process(b)
    keep, reason = _col(b, "keep"), _col(b, "reason")
    assert _col(b, "caption_words")[2] == 1 and reason[2] == "words<3"  # dropped first by length, reason kept
    assert _col(b, "lang")[1] == "de" and reason[1] == "language de"
    assert reason[3].startswith("word_repetition>0.5")
    assert reason[4] == "words<3"  # a missing caption is zero words
    assert keep[5] and {"tabby cat", "golden retriever"} <= {c.lower() for c in _col(b, "concepts")[5]}
    assert all((k and r is None) or (not k and r) for k, r in zip(keep, reason, strict=True))


def test_clean_caption_keeps_the_original() -> None:
    b = CleanCaption().process(
        _batch(["<b>A dog</b> on a beach https://x.com/a.jpg IMG_1234.JPG", "<script>x</script>"])
    )
    assert _col(b, "text")[0] == "A dog on a beach"
    assert _col(b, "text_raw")[0].startswith("<b>A dog</b>")
    assert "<" not in (_col(b, "text")[1] or "")


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_image_quality_on_real_photos_and_broken_bytes(coco_pairs: list[Any]) -> None:
    photo = Image.open(coco_pairs[1].path).convert("RGB")
    sharp = _jpeg(photo)
    blurred = _jpeg(photo.filter(ImageFilter.GaussianBlur(4)))
    tiny = _jpeg(photo.resize((photo.width // 5, photo.height // 5)))
    wide = _jpeg(photo.resize((900, 200)))
    images = [sharp, blurred, tiny, wide, b"not an image", None]
    op = ImageQuality(ImageParams(min_side=150, max_aspect=3.0))
    b = op.process(_batch(["x"] * len(images), images))
    blur = np.asarray(_col(b, "blur"), dtype=float)
    assert blur[1] < 0.2 * blur[0]
    assert _col(b, "width")[0] == coco_pairs[1].width and _col(b, "height")[0] == coco_pairs[1].height
    reason = _col(b, "reason")
    assert reason[:2] == [None, None]
    assert reason[2] == "min_side<150" and reason[3] == "aspect>3"
    assert reason[4] == "image decode_error" and reason[5] == "image missing_image"
    assert _col(b, "phash_valid") == [True, True, True, True, False, False]
    near = bin(int(_col(b, "phash")[0]) ^ int(_col(b, "phash")[2])).count("1")
    assert near <= 8  # a resized copy hashes close to the original
