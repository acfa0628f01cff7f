"""Running async code from synchronous code: one place for the "is a loop already running?" rule."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_sync(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to the end from synchronous code, also when called from inside a running
    event loop (then in a fresh thread with its own loop)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop in this thread (the usual case, also in worker threads)
        return asyncio.run(coro)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()
