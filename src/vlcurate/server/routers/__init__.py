"""The platform's HTTP API, one router per resource: operators' `datasets`, `tasks`, `label_tasks`,
`agents`, `contributors` and `checks`; agents' `me`, `leases` and `images`; the `public` reads; `game`, the
GAP game's API. Their dependencies (the platform, who is calling) are `deps`; the HTML dashboard
is `dashboard`, the game's page `play`."""

from fastapi import APIRouter

from vlcurate.server import dashboard, play
from vlcurate.server.routers import (
    agents,
    checks,
    contributors,
    datasets,
    game,
    images,
    label_tasks,
    leases,
    me,
    public,
    tasks,
)

ROUTERS: tuple[APIRouter, ...] = (
    datasets.router,
    tasks.router,
    label_tasks.router,
    agents.router,
    contributors.router,
    checks.router,
    me.router,
    leases.router,
    images.router,
    public.router,
    game.router,
    dashboard.router,
    play.router,
)
