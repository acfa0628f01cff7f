"""Operators by name: `@register` on the class, `get_operator(name)` to build one."""

from __future__ import annotations

import difflib
from typing import TypeVar

from vlcurate.ops.base import Operator

_OPERATORS: dict[str, type[Operator]] = {}
T = TypeVar("T", bound=type[Operator])


class UnknownOperatorError(KeyError):
    def __init__(self, name: str) -> None:
        close = difflib.get_close_matches(name, list(_OPERATORS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        super().__init__(f"unknown operator {name!r}{hint} (`vlcurate ops` lists them)")
        self.message = self.args[0]

    def __str__(self) -> str:
        return self.message


def register(cls: T) -> T:
    """Class decorator: make the operator available to recipes under `cls.name`."""
    if cls.name in _OPERATORS and _OPERATORS[cls.name] is not cls:
        raise ValueError(f"two operators are named {cls.name!r}")
    _OPERATORS[cls.name] = cls
    return cls


def get_operator(name: str) -> type[Operator]:
    _load_builtins()
    if name not in _OPERATORS:
        raise UnknownOperatorError(name)
    return _OPERATORS[name]


def operators() -> dict[str, type[Operator]]:
    _load_builtins()
    return dict(sorted(_OPERATORS.items()))


def _load_builtins() -> None:
    import vlcurate.ops.builtin  # noqa: F401 - registers on import
