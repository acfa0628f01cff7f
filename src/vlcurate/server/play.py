"""The GAP game's web page, `GET /play`: one Jinja template and a plain script (`static/play.js`)
that plays through the JSON API in `routers.game`. Every text from the server or the player goes in
with `textContent`; the page's own policy allows no inline script and nothing from elsewhere, except
Telegram's Mini App script (and Telegram's web client framing the page) when the server has a bot
token."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from vlcurate.server.dashboard import templates

TELEGRAM_SCRIPT = "https://telegram.org/js/telegram-web-app.js"

router = APIRouter()


def _csp(telegram: bool) -> str:
    script = "'self' https://telegram.org" if telegram else "'self'"
    frames = "https://web.telegram.org" if telegram else "'none'"
    return (
        f"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src {script}; "
        f"connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors {frames}"
    )


@router.get("/play", response_class=HTMLResponse, include_in_schema=False)
def play(request: Request) -> HTMLResponse:
    """The game page (guest or Telegram Mini App login, a session, the leaderboard)."""
    settings = getattr(request.app.state, "settings", None)
    telegram = bool(getattr(settings, "telegram_bot_token", None))
    ctx = {"telegram_script": TELEGRAM_SCRIPT if telegram else None}
    resp = templates.TemplateResponse(request, "play.html", ctx)
    resp.headers["Content-Security-Policy"] = _csp(telegram)
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Cache-Control"] = "no-store"
    return resp
