"""Agents' images: a leased item's image, to its lease's holder, while the lease is active.

Images have a rate limit of their own per agent (`image_rate_per_minute`): a unit is hundreds of
them, so they are not counted against the agent's request rate, but a token cannot be used to
pull the whole dataset at line speed either.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from vlcurate.server import leasing, schemas
from vlcurate.server.deps import ImageAgent, PlatformDep
from vlcurate.server.errors import NotFound

router = APIRouter(tags=["agents"])

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"BM", "image/bmp"),
)
_EXT = {
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "png": "image/png",
    "webp": "image/webp",
    "gif": "image/gif",
    "bmp": "image/bmp",
    "tif": "image/tiff",
    "tiff": "image/tiff",
}


def image_media_type(data: bytes, ext: str | None) -> str:
    """The bytes decide (a wrong extension is common in web data); the extension only breaks ties.

    Only raster types are named: anything else (an SVG with script, HTML) goes out as
    application/octet-stream with nosniff, so it can never run in this origin.
    """
    for magic, media in _MAGIC:
        if data.startswith(magic):
            return media
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return _EXT.get((ext or "").lower().lstrip("."), "application/octet-stream")


@router.get("/api/v1/leases/{lease_id}/images/{item_id}", response_class=Response)
def lease_image(
    lease_id: Annotated[int, Path(ge=1, le=schemas.MAX_ID)],
    item_id: str,
    p: PlatformDep,
    caller: ImageAgent,
) -> Response:
    """An item of an active lease (404 for another agent's lease or an item not in it; 409 once
    the lease has ended)."""
    view = leasing.lease_view(p, caller, lease_id)
    match = next((v for v in view if v.public_id == item_id), None)
    if match is None:
        raise NotFound(f"item {item_id!r} is not in lease {lease_id}")
    data, ext = leasing.image_bytes(p, match.item_id)
    return Response(
        content=data, media_type=image_media_type(data, ext), headers={"X-Content-Type-Options": "nosniff"}
    )
