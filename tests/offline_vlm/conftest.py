"""A shared tiny-synth VLM server for this directory's tests (one process per session)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.vlm_live import VLMServer


@pytest.fixture(scope="session")
def vlm_server() -> Iterator[VLMServer]:
    with VLMServer() as server:
        yield server
