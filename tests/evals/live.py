"""The tiny-synth VLM app under real uvicorn servers on loopback, in background threads of the test process.

Several servers with different flags (weaknesses, faults) share one loaded scorer and its caches, so
starting four costs one model load instead of four subprocesses importing torch, and each image is
understood once; requests still go over HTTP.

    with InThreadVLM.many({"plain": {}, "weak": {"weakness": "refuse=count"}}) as servers:
        servers["weak"].base_url
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from tests.platform_live import free_port

_SCORER: Any = None
_FIRST_BRAIN: Any = None


def shared_scorer() -> Any:
    global _SCORER
    if _SCORER is None:
        import torch

        from vlcurate.models.loader import load_scorer

        torch.set_num_threads(1)
        _SCORER = load_scorer("tiny-synth", device="cpu")
    return _SCORER


class InThreadVLM:
    """One `vlcurate vlm serve` app (settings as keyword arguments) on a free port (`.base_url`: .../v1)."""

    def __init__(self, api_key: str | None = None, **settings: Any) -> None:
        import uvicorn

        from vlcurate.synth.offline_vlm.answers import Brain
        from vlcurate.synth.offline_vlm.app import create_app
        from vlcurate.synth.offline_vlm.settings import VLMServerSettings

        self.port = free_port()
        self.api_key = api_key
        s = VLMServerSettings(port=self.port, api_key=api_key, **settings)
        global _FIRST_BRAIN
        brain = Brain(shared_scorer(), wrong_rate=s.wrong_rate, wrong_kinds=s.wrong_kinds)
        if _FIRST_BRAIN is None:
            _FIRST_BRAIN = brain
        else:
            brain.share_caches(_FIRST_BRAIN)  # embeddings and captions are computed once for all servers
        self.app = create_app(s, brain)
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False,
            timeout_graceful_shutdown=1,
        )  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def __enter__(self) -> InThreadVLM:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)

    @staticmethod
    @contextlib.contextmanager
    def many(specs: dict[str, dict[str, Any]]) -> Iterator[dict[str, InThreadVLM]]:
        with contextlib.ExitStack() as stack:
            yield {name: stack.enter_context(InThreadVLM(**kw)) for name, kw in specs.items()}
