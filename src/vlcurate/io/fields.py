"""Turning raw fields (caption bytes, a json uid, image bytes or a reference) into a `Sample`.

Every reader goes through `make_sample` so that all input kinds agree on uids, caption decoding
and the status given to a sample with no image or no caption.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from vlcurate.records import Sample, Status, derive_uid, normalize_uid

# Preference order when a sample has several image members.
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "avif")
TEXT_EXTS: tuple[str, ...] = ("txt", "text", "caption")
# Fields of an img2dataset/DataComp json (or parquet) worth keeping in `Sample.meta`.
META_KEYS: tuple[str, ...] = ("url", "original_width", "original_height", "width", "height", "sha256")


def decode_text(raw: bytes) -> tuple[str, str | None]:
    """Decode a caption as UTF-8; on bad bytes decode with U+FFFD and return a warning.

    A caption with a few broken bytes is still mostly a caption, so it is kept (status OK) and the
    warning is recorded in `meta["text_warning"]` for the report rather than dropping the pair.
    """
    try:
        text = raw.decode("utf-8")
        warning = None
    except UnicodeDecodeError as exc:
        text = raw.decode("utf-8", errors="replace")
        warning = f"caption is not valid UTF-8 ({exc.reason} at byte {exc.start}); decoded with replacement"
    return text.lstrip("\ufeff").strip(), warning


def make_sample(
    *,
    key: str,
    text: str | None,
    image: bytes | None = None,
    image_ref: str | None = None,
    uid_ref: str | None = None,
    image_ext: str | None = None,
    raw_uid: object = None,
    meta: dict[str, Any] | None = None,
    fallback_ref: str | None = None,
    missing_image_detail: str = "no image",
) -> Sample:
    """Build a sample, choosing its uid and status.

    uid: the source's DataComp uid when valid, else `derive_uid` of the image bytes, or of the
    reference string as written in the input (`uid_ref`, default `image_ref`) so that the uid does
    not depend on a fetch succeeding, or of `fallback_ref` (shard URL + key) when there is no image.
    Status: MISSING_IMAGE when there is no image at all, else MISSING_TEXT for a missing/blank caption.
    """
    meta = dict(meta or {})
    if text is not None:
        text = text.strip()
    uid = normalize_uid(raw_uid)
    if uid is None:
        if raw_uid is not None and raw_uid != "":
            meta["uid_warning"] = f"malformed uid {str(raw_uid)[:64]!r}; derived one"
        basis: bytes | str | None
        if image is not None:
            basis = image
        elif image_ref:
            basis = uid_ref or image_ref
        else:
            basis = fallback_ref
        uid = derive_uid(basis, text)
    status, error = Status.OK, None
    if image is None and not image_ref:
        status, error = Status.MISSING_IMAGE, missing_image_detail
    elif text is None:
        status, error = Status.MISSING_TEXT, "no caption"
    elif text == "":
        status, error = Status.MISSING_TEXT, "empty caption"
    return Sample(
        uid=uid,
        key=key,
        text=text,
        image=image,
        image_ref=image_ref or None,
        image_ext=image_ext,
        meta=meta,
        status=status,
        error=error,
    )


def ext_of(path: str) -> str:
    """Lower-case extension without the dot ('' when none), ignoring a URL's query string."""
    base = path.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[1].lower() if "." in base else ""


def sniff_image_ext(data: bytes) -> str | None:
    """The image format from magic bytes, for naming members when the source did not say."""
    if data.startswith(b"\xff\xd8\xff"):
        return "jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data.startswith(b"BM"):
        return "bmp"
    return None


def pick_column(names: Sequence[str], explicit: str | None, candidates: Sequence[str]) -> str | None:
    """The column to read: the one the user named (if present), else the first known name found
    (case-insensitive)."""
    if explicit is not None:
        return explicit if explicit in names else None
    lower = {n.lower(): n for n in names}
    return next((lower[c] for c in candidates if c in lower), None)
