"""base.html: the one escaping rule, table and page every HTML report is built from."""

from __future__ import annotations

from html.parser import HTMLParser

from vlcurate.base.html import esc, page, table

HOSTILE = "<script>alert('x')</script>\" onerror=\"alert(1)&amp;"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attrs += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(doc: str) -> _Tags:
    p = _Tags()
    p.feed(doc)
    return p


def test_esc_makes_hostile_text_inert_in_text_and_in_attributes() -> None:
    doc = f"<p title='{esc(HOSTILE)}'>{esc(HOSTILE)}</p>"
    p = _parse(doc)
    assert p.tags == ["p"]  # no script tag, no second element
    assert p.attrs == [("title", HOSTILE)]  # the attribute holds the text, whole, not a new attribute
    assert "".join(p.text) == HOSTILE
    assert esc(None) == "" and esc(3) == "3"


def test_table_escapes_the_head_always_and_cells_when_asked() -> None:
    raw = _parse(table([HOSTILE, "b"], [["<b>bold</b>", "x"]]))
    assert "script" not in raw.tags and raw.tags.count("b") == 1  # head escaped, cells are HTML
    assert HOSTILE in "".join(raw.text)
    rows = [[HOSTILE, "<b>bold</b>"]]
    safe = _parse(table(["a", "b"], rows, escape_cells=True))
    assert "script" not in safe.tags and "b" not in safe.tags
    assert HOSTILE in "".join(safe.text) and "<b>bold</b>" in "".join(safe.text)
    assert table(["a"], []).count("<tr>") == 1


def test_page_is_a_whole_document_with_an_escaped_title() -> None:
    doc = page(HOSTILE, ["<h1>one</h1>", "<p>two</p>"], css=".x{color:red}")
    p = _parse(doc)
    assert p.tags[:5] == ["html", "head", "meta", "title", "style"] and "script" not in p.tags
    assert doc.startswith("<!doctype html>") and doc.rstrip().endswith("</body></html>")
    assert ".x{color:red}" in doc and "<h1>one</h1>\n<p>two</p>" in doc
    assert page("t", "<p>x</p>").count("<p>x</p>") == 1
