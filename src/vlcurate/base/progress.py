"""The rich progress display of a scoring run: shards with ETA, pairs and pairs/s."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class ScoreProgress:
    """Shards done out of total (bar, ETA) plus a live pairs count and rate; silent when disabled."""

    def __init__(
        self, *, enabled: bool, total_shards: int, done_before: int = 0, label: str = "scoring"
    ) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        self.total = total_shards
        self.done_before = done_before
        if enabled:
            self._progress = Progress(
                TextColumn(f"[bold]{label}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("shards"),
                TextColumn("{task.fields[pairs]:,} pairs"),
                TextColumn("[cyan]{task.fields[rate]:,.1f} pairs/s[/]"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
                transient=False,
            )

    def __enter__(self) -> ScoreProgress:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task("score", total=self.total, pairs=0, rate=0.0)
            if self.done_before:
                self.console.print(f"resuming: {self.done_before} shards already done, {self.total} to go")
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update_pairs(self, pairs: int, elapsed: float) -> None:
        if self._progress is not None and self._task is not None:
            rate = pairs / elapsed if elapsed > 0 else 0.0
            self._progress.update(self._task, pairs=pairs, rate=rate)

    def shard_done(self, rows: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.advance(self._task, 1)

    def warn(self, message: str) -> None:
        """One warning line on stderr, shown even without the progress bar."""
        self.console.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)

    def shard_failed(self, shard: str, error: str) -> None:
        if self.enabled:
            self.console.print(f"[red]shard {shard} failed:[/] {error}")
