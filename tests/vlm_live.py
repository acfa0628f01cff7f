"""`vlcurate vlm serve` as a real subprocess for tests and benchmarks.

    from tests.vlm_live import VLMServer
    with VLMServer(["--wrong-rate", "0.5"]) as vlm:
        httpx.post(vlm.base_url + "/chat/completions", json=...)

The server is started with `python -m vlcurate.cli.main vlm serve --port P ...`, is ready when
`GET /v1/models` answers, and is terminated (then killed) on exit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
from tests.platform_live import free_port


class VLMServer:
    """The tiny-synth OpenAI-compatible server on a free port; `.base_url` ends in /v1."""

    def __init__(
        self,
        args: list[str] | None = None,
        *,
        port: int | None = None,
        api_key: str | None = None,
        log: Path | None = None,
        startup_timeout: float = 90.0,
    ) -> None:
        self.args = list(args or [])
        self.port = port or free_port()
        self.api_key = api_key
        self.log = log
        self.startup_timeout = startup_timeout
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.url + "/v1"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def start(self) -> VLMServer:
        cmd = [
            sys.executable,
            "-m",
            "vlcurate.cli.main",
            "vlm",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            *(["--api-key", self.api_key] if self.api_key else []),
            *self.args,
        ]
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"vlm server exited with {self.proc.returncode}; log: {self.log}")
            try:
                if httpx.get(self.base_url + "/models", headers=self.headers, timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"vlm server did not start within {self.startup_timeout}s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)

    def __enter__(self) -> VLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
