"""The sample record, uid derivation and the Arrow schemas every part agrees on.

Identity is the uid: DataComp's 32-hex (128-bit) uid when the input has one, otherwise a
stable 128-bit hash of the image (its bytes, or its path/URL when only a reference is known)
and the caption. Nothing here imports the rest of vlcurate.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import pyarrow as pa

_HEX32 = re.compile(r"^[0-9a-f]{32}$")


class Status(str, Enum):
    """Outcome of one sample in a scoring run."""

    OK = "ok"
    DECODE_ERROR = (
        "decode_error"  # bytes present but not a readable image (zero-byte, truncated, not an image)
    )
    TOO_LARGE = "too_large"  # decompression bomb guard
    MISSING_IMAGE = "missing_image"  # no image member / empty path
    MISSING_TEXT = "missing_text"  # no caption (scored with an empty caption would be meaningless)
    FETCH_ERROR = "fetch_error"  # URL could not be fetched (status code or network error in `error`)
    READ_ERROR = "read_error"  # the container (tar member, parquet row) could not be read


def is_transient_failure(status: str | None, error: str | None) -> bool:
    """A failed row that `--retry-failed` fetches again: a failed download (HTTP error, timeout,
    network error, a path not found), not a body over the size limit, an undecodable image or a
    missing caption."""
    return status == Status.FETCH_ERROR.value and not (error or "").startswith("too large")


def is_datacomp_uid(value: object) -> bool:
    """True for DataComp's uid form: 32 lowercase hex digits."""
    return isinstance(value, str) and bool(_HEX32.match(value))


def normalize_uid(value: object) -> str | None:
    """Return a DataComp-style uid from `value` if it is one (case-insensitive), else None."""
    if isinstance(value, str):
        v = value.strip().lower()
        if _HEX32.match(v):
            return v
    return None


def derive_uid(image: bytes | str | None, text: str | None) -> str:
    """A stable 128-bit uid (32 hex) from the image bytes (or its path/URL) and the caption."""
    h = hashlib.blake2b(digest_size=16)
    if isinstance(image, bytes):
        h.update(b"b:")
        h.update(image)
    elif isinstance(image, str):
        h.update(b"r:")
        h.update(image.encode("utf-8"))
    h.update(b"\x00t:")
    h.update((text or "").encode("utf-8", errors="surrogatepass"))
    return h.hexdigest()


def uid_to_pair(uid: str) -> tuple[int, int]:
    """Split a 32-hex uid into (high, low) unsigned 64-bit halves, DataComp's subset layout."""
    return int(uid[:16], 16), int(uid[16:32], 16)


def pair_to_uid(hi: int, lo: int) -> str:
    """Inverse of `uid_to_pair`."""
    return f"{int(hi):016x}{int(lo):016x}"


@dataclass
class Sample:
    """One image-caption pair as read from any source.

    `image` holds the encoded bytes when the source has them; otherwise `image_ref` is a local
    path or URL that is resolved lazily (fetched or read by the decode stage). `status`/`error`
    are set by a reader that could not read the sample properly; such samples still carry a uid
    so that they appear in the output with their reason. `source` says where the pair is in the
    input, for tracing a row back: `SHARD#MEMBER` for a tar member, `FILE#row=N` (and
    `&caption=I`) for a table, manifest or JSON row, `FILE#annotation=ID` for a COCO caption, the
    image's path for an image folder.
    """

    uid: str
    key: str
    text: str | None
    image: bytes | None = None
    image_ref: str | None = None
    image_ext: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    status: Status = Status.OK
    error: str | None = None
    source: str | None = None


# The per-shard score table written by `vlcurate score` (and by the platform's export).
SCORE_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("score", pa.float32()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("text", pa.string()),
        pa.field("width", pa.int32()),
        pa.field("height", pa.int32()),
        # where the pair came from, so a failed row can be found and retried: the sample's key and
        # its location (shard#member, file#row=N, a path or URL)
        pa.field("key", pa.string()),
        pa.field("source", pa.string()),
    ]
)


def embedding_field(name: str, dim: int) -> pa.Field:
    """A float16 fixed-size-list column holding one embedding per row."""
    return pa.field(name, pa.list_(pa.float16(), dim))
