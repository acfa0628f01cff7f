"""ASGI entry point for uvicorn workers: settings come from `vlcurate serve` via the environment."""

from __future__ import annotations

import os

from vlcurate.server.app import create_app
from vlcurate.server.settings import ServerSettings

app = create_app(ServerSettings.model_validate_json(os.environ.get("VLCURATE_SERVER_SETTINGS", "{}")))
