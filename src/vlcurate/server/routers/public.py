"""The public read API (no authentication): progress, contributors, the ledger, the feed of verified
pairs and their images. Everything here only reads (see `queries`), so it can never change what
agents are paid; the dashboard (`dashboard`) shows the same reads as HTML."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, Request
from fastapi.responses import Response

from vlcurate.server import queries
from vlcurate.server.deps import read
from vlcurate.server.routers.images import image_media_type
from vlcurate.server.schemas import MAX_ID, ContributorOut, LedgerEntryOut

router = APIRouter(prefix="", tags=["public"])


@router.get("/api/v1/stats", response_model=queries.StatsOut)
def api_stats(request: Request) -> queries.StatsOut:
    """Datasets and tasks with progress, units by state, and platform totals."""
    return read(request, queries.stats)


@router.get("/api/v1/contributors", response_model=list[ContributorOut])
def api_contributors(request: Request, limit: int = Query(500, ge=1, le=5000)) -> list[ContributorOut]:
    """Contributors, most points first, with reputation and trust."""
    return read(request, lambda c: queries.contributors(c, limit=limit))


@router.get("/api/v1/flagged", response_model=list[ContributorOut])
def api_flagged(request: Request) -> list[ContributorOut]:
    """Paused contributors with the reason they were paused."""
    return read(request, queries.flagged)


@router.get("/api/v1/versions", response_model=list[queries.VersionOut])
def api_versions(request: Request) -> list[queries.VersionOut]:
    """Reputation per agent software version (hidden checks and agreement, all contributors)."""
    return read(request, queries.versions)


@router.get("/api/v1/ledger", response_model=list[LedgerEntryOut])
def api_ledger(
    request: Request,
    limit: int = Query(100, ge=1, le=1000),
    before_id: int | None = Query(
        None, ge=1, le=MAX_ID, description="Page back: entries older than this id."
    ),
    after_id: int | None = Query(None, ge=0, le=MAX_ID, description="Only entries newer than this id."),
    contributor: str | None = Query(None, max_length=200, description="Contributor name."),
    submission_id: int | None = Query(None, ge=1, le=MAX_ID),
) -> list[LedgerEntryOut]:
    """Credits and reversals, newest first."""
    return read(
        request,
        lambda c: queries.ledger(
            c,
            limit=limit,
            before_id=before_id,
            after_id=after_id,
            contributor=contributor,
            submission_id=submission_id,
        ),
    )


@router.get("/api/v1/feed", response_model=list[queries.FeedEntry])
def api_feed(
    request: Request,
    after_id: int = Query(
        0, ge=0, le=MAX_ID, description="Only pairs with a larger feed id (pass the largest seen)."
    ),
    limit: int = Query(50, ge=1, le=500),
) -> list[queries.FeedEntry]:
    """Verified pairs, newest first: every item of a verified unit, shown alike."""
    return read(request, lambda c: queries.feed(c, after_id=after_id, limit=limit))


@router.get("/feed/images/{item_id}", response_class=Response)
def feed_image(request: Request, item_id: Annotated[int, Path(ge=1, le=MAX_ID)]) -> Response:
    """The image of a verified pair; 404 for anything not verified."""
    got = read(request, lambda c: queries.public_image(c, item_id))
    if got is None:
        raise HTTPException(status_code=404, detail=f"no public image for item {item_id}")
    data, ext = got
    return Response(
        content=data,
        media_type=image_media_type(data, ext),
        headers={
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": "public, max-age=300",
        },
    )
