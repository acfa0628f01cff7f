"""MkDocs hooks: the pages that are generated from the code, so the site can never drift from it.

- `<!-- generated: operators -->`: the operator catalogue from the registry
  (`vlcurate ops --format markdown`);
- `<!-- generated: openapi -->`: the platform's HTTP API from its OpenAPI schema;
- `<!-- include: FILE -->`: a file at the repository root (ARCHITECTURE.md, CHANGELOG.md), its first
  heading dropped (the page has its own).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
_INCLUDE = re.compile(r"<!-- include: ([\w./-]+) -->")


def _operators() -> str:
    from vlcurate.ops.catalogue import catalogue_markdown

    text = catalogue_markdown()
    return text.split("\n", 1)[1]  # the page has its own title


def _openapi() -> str:
    from vlcurate.server.app import create_app
    from vlcurate.server.settings import ServerSettings

    with tempfile.TemporaryDirectory() as tmp:
        settings = ServerSettings(db=str(Path(tmp) / "schema.db"), admin_token="docs")
        schema = create_app(settings).openapi()
    lines = [
        f"Version {schema['info']['version']}. Every route, generated from the server's OpenAPI schema.",
        "",
    ]
    lines += ["| method | path | what it does |", "|---|---|---|"]
    for path, ops in sorted(schema.get("paths", {}).items()):
        for method, op in ops.items():
            summary = " ".join(str(op.get("summary") or op.get("description") or "").split())
            summary = summary.replace("|", "\\|")
            lines.append(f"| `{method.upper()}` | `{path}` | {summary} |")
    return "\n".join(lines) + "\n"


def _include(match: re.Match[str]) -> str:
    name = match.group(1)
    text = (ROOT / name).read_text(encoding="utf-8")
    if text.startswith("# "):
        text = text.split("\n", 1)[1]
    # links written for the repository (README.md at the root) pointed at the site's pages instead
    text = text.replace("](docs/", "](")
    for root_file, page in (("ARCHITECTURE.md", "architecture.md"), ("CHANGELOG.md", "changelog.md")):
        text = text.replace(f"]({root_file})", f"]({page})")
    return text


def on_page_markdown(markdown: str, **_: Any) -> str:
    if "<!-- generated: operators -->" in markdown:
        markdown = markdown.replace("<!-- generated: operators -->", _operators())
    if "<!-- generated: openapi -->" in markdown:
        markdown = markdown.replace("<!-- generated: openapi -->", _openapi())
    return _INCLUDE.sub(_include, markdown)
