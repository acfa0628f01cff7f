"""Find the elements of a big JSON array without loading it, so it can be read in shards.

`array_elements` walks the raw bytes once (a regex jumps between brackets and strings, so it runs
at memory speed in C most of the time) and yields the byte range of each top-level element; a
shard is then just a byte range that `json.loads` reads element by element. A truncated or
malformed file is a `JsonScanError` that names the line and column where the scan failed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

_WS = re.compile(rb"[ \t\r\n]*")
_SPECIAL = re.compile(rb'["\[\]{}]')
_STRING_REST = re.compile(rb'(?:[^"\\]|\\.)*"', re.S)  # after an opening quote, through the closing one
_SCALAR = re.compile(rb"[^,\]\}\s]+")


class JsonScanError(ValueError):
    """The bytes are not a well-formed JSON array; `pos` is the byte offset of the problem."""

    def __init__(self, message: str, buf: bytes | memoryview | object, pos: int) -> None:
        data = bytes(buf[:pos])  # type: ignore[index]
        line = data.count(b"\n") + 1
        col = pos - (data.rfind(b"\n") + 1) + 1
        super().__init__(f"line {line} column {col} (byte {pos}): {message}")
        self.pos, self.line, self.column = pos, line, col


def _skip_ws(buf: bytes, pos: int) -> int:
    m = _WS.match(buf, pos)
    return m.end() if m else pos


def _value_end(buf: bytes, pos: int) -> int:
    """Byte offset just past the JSON value that starts at `pos` (syntax inside is checked later)."""
    n = len(buf)
    c = buf[pos : pos + 1]
    if c == b'"':
        m = _STRING_REST.match(buf, pos + 1)
        if m is None:
            raise JsonScanError("unterminated string (is the file truncated?)", buf, pos)
        return m.end()
    if c not in (b"{", b"["):
        m = _SCALAR.match(buf, pos)
        if m is None:
            raise JsonScanError(f"expected a value, found {c!r}", buf, pos)
        return m.end()
    depth, i = 0, pos
    while True:
        m = _SPECIAL.search(buf, i)
        if m is None:
            raise JsonScanError("unexpected end of file inside an element (is the file truncated?)", buf, n)
        ch = m.group()
        if ch == b'"':
            s = _STRING_REST.match(buf, m.end())
            if s is None:
                raise JsonScanError("unterminated string (is the file truncated?)", buf, m.start())
            i = s.end()
            continue
        depth += 1 if ch in (b"{", b"[") else -1
        i = m.end()
        if depth == 0:
            return i


def array_elements(buf: bytes, start: int | None = None, end: int | None = None) -> Iterator[tuple[int, int]]:
    """(start, end) byte ranges of the array's elements; with `start`/`end`, only those in that range.

    Without `start` the whole array is scanned from its `[`; with it, `start` must be the first byte
    of an element (as an earlier full scan reported) and scanning stops at `end`.
    """
    n = len(buf)
    if start is None:
        pos = _skip_ws(buf, 0)
        if buf[pos : pos + 3] == b"\xef\xbb\xbf":  # UTF-8 byte order mark
            pos = _skip_ws(buf, pos + 3)
        if buf[pos : pos + 1] != b"[":
            found = buf[pos : pos + 1] or b"end of file"
            raise JsonScanError(f"expected a JSON array '[', found {found!r}", buf, pos)
        pos = _skip_ws(buf, pos + 1)
        if buf[pos : pos + 1] == b"]":
            return
    else:
        pos = start
    stop = n if end is None else end
    while pos < stop:
        if pos >= n:
            raise JsonScanError("unexpected end of file: the array is not closed (truncated?)", buf, n)
        value_end = _value_end(buf, pos)
        yield pos, value_end
        pos = _skip_ws(buf, value_end)
        c = buf[pos : pos + 1]
        if c == b",":
            pos = _skip_ws(buf, pos + 1)
            if buf[pos : pos + 1] == b"]":
                raise JsonScanError("trailing comma before ']'", buf, pos)
        elif c == b"]":
            if end is None and _skip_ws(buf, pos + 1) != n:
                raise JsonScanError("extra data after the array", buf, _skip_ws(buf, pos + 1))
            return
        elif not c:
            raise JsonScanError("unexpected end of file: the array is not closed (truncated?)", buf, n)
        else:
            raise JsonScanError(f"expected ',' or ']' after an element, found {c!r}", buf, pos)
