"""Turning raw fields (caption bytes, a json uid, image bytes or a reference) into a `Sample`.

Every reader goes through `make_sample` so that all input kinds agree on uids, caption decoding
and the status given to a sample with no image or no caption.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from typing import Any

from vlcurate.base.records import Sample, Status, derive_uid, normalize_uid

# Preference order when a sample has several image members.
IMAGE_EXTS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff", "ppm", "avif")
TEXT_EXTS: tuple[str, ...] = ("txt", "text", "caption", "txt.gz", "text.gz", "caption.gz")
# Fields of a sample's `.json` (or a JSON record) that hold its caption, in preference order.
JSON_TEXT_KEYS: tuple[str, ...] = ("caption", "text")
CAPTION_MODES = ("all", "first")
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


def decode_caption(raw: bytes, suffix: str) -> tuple[str, str | None]:
    """A caption member's text: gunzipped first for `.gz` members (`KEY.txt.gz`)."""
    if suffix.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            return "", f"caption member {suffix!r} is not valid gzip ({exc})"
    return decode_text(raw)


def caption_choices(value: object, captions: str = "all") -> list[tuple[int | None, str | None]]:
    """(caption index, text) pairs of one caption cell: `[(None, text)]` for a single caption;
    for a list of captions one pair per caption (`captions="all"`) or the first only ("first")."""
    if isinstance(value, (list, tuple)):
        texts = [None if v is None else str(v) for v in value]
        if not texts:
            return [(None, None)]
        pairs: list[tuple[int | None, str | None]] = list(enumerate(texts))
        return pairs[:1] if captions == "first" else pairs
    return [(None, None if value is None else str(value))]


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
    source: str | None = None,
    caption_index: int | None = None,
) -> Sample:
    """Build a sample, choosing its uid and status.

    uid: the source's DataComp uid when valid, else `derive_uid` of the image bytes, or of the
    reference string as written in the input (`uid_ref`, default `image_ref`) so that the uid does
    not depend on a fetch succeeding, or of `fallback_ref` (shard URL + key) when there is no image.
    One caption of an image's caption list (`caption_index` I) adds `#caption=I` to that basis and
    `_I` to the key, so each (image, caption index) has its own stable uid and key.
    Status: MISSING_IMAGE when there is no image at all, else MISSING_TEXT for a missing/blank caption.
    `source` is where the pair is in the input (see `Sample.source`).
    """
    meta = dict(meta or {})
    if text is not None:
        text = text.strip()
    if caption_index is not None:
        key = f"{key}_{caption_index}"
        meta["caption_index"] = caption_index
    uid = normalize_uid(raw_uid) if caption_index is None else None
    if caption_index is not None and normalize_uid(raw_uid) is not None:
        meta["record_uid"] = normalize_uid(raw_uid)  # the record's uid names the image, not this pair
    if uid is None:
        if raw_uid is not None and raw_uid != "" and caption_index is None:
            meta["uid_warning"] = f"malformed uid {str(raw_uid)[:64]!r}; derived one"
        basis: bytes | str | None
        if image is not None:
            basis = image
        elif image_ref:
            basis = uid_ref or image_ref
        else:
            basis = fallback_ref
        if caption_index is not None:
            tag = f"#caption={caption_index}"
            basis = basis + tag.encode() if isinstance(basis, bytes) else f"{basis or ''}{tag}"
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
        source=source,
    )


def ext_of(path: str) -> str:
    """Lower-case extension without the dot ('' when none), ignoring a URL's query string."""
    base = path.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    return base.rsplit(".", 1)[1].lower() if "." in base else ""


def pick_column(names: Sequence[str], explicit: str | None, candidates: Sequence[str]) -> str | None:
    """The column to read: the one the user named (if present), else the first known name found
    (case-insensitive)."""
    if explicit is not None:
        return explicit if explicit in names else None
    lower = {n.lower(): n for n in names}
    return next((lower[c] for c in candidates if c in lower), None)
