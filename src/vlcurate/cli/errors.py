"""Turn expected failures into one clear line and exit code 2, never a traceback.

Exit codes of the commands that process data (`score`, `run`, `filter`, `reshard`, `recaption`):
0 everything done; `EXIT_PARTIAL` (3) the run finished but some shards or pairs failed (the report
says which; a re-run or `--retry-failed` picks them up); 2 usage errors (bad options, a recipe or
input that cannot be used); 1 an unexpected error (a bug: please report it)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from pydantic import ValidationError
from rich.console import Console

_err = Console(stderr=True)

EXIT_PARTIAL = 3  # some shards or pairs failed; see the module docstring


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` to stderr and return the Exit to raise."""
    _err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def validation_message(exc: ValidationError) -> str:
    parts = []
    for e in exc.errors():
        loc = ".".join(str(x) for x in e.get("loc", ())) or "value"
        parts.append(f"{loc}: {e.get('msg')}")
    return "; ".join(parts)


@contextlib.contextmanager
def user_errors(*extra: type[BaseException]) -> Iterator[None]:
    """Report ValueError/FileNotFoundError/ValidationError (and `extra`) as one line, exit 2."""
    try:
        yield
    except ValidationError as exc:
        raise fail(validation_message(exc)) from None
    except (FileNotFoundError, ValueError, *extra) as exc:  # type: ignore[misc]
        raise fail(str(exc)) from None
