"""The operator catalogue from the registry: what `vlcurate ops` prints (a table, JSON or Markdown) and
what the documentation's operator page is generated from, so neither can drift from the code."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from vlcurate.ops.registry import operators


def _default(value: Any) -> Any:
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


def _type_name(annotation: Any) -> str:
    if annotation is None:
        return "any"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def catalogue() -> list[dict[str, Any]]:
    """Every registered operator: name, kind, a one-line doc, the full doc and its parameters."""
    out = []
    for name, cls in operators().items():
        params = []
        for pname, f in cls.Params.model_fields.items():
            required = f.is_required()
            default = None if required else _default(f.get_default(call_default_factory=True))
            params.append(
                {
                    "name": pname,
                    "type": _type_name(f.annotation),
                    "required": required,
                    "default": default,
                    "description": f.description or "",
                }
            )
        full = " ".join((cls.__doc__ or "").split())
        out.append(
            {
                "name": name,
                "kind": cls.kind,
                "uses_model": bool(cls.uses_model),
                "doc": " ".join(cls.doc().split()),
                "description": full,
                "params": params,
            }
        )
    return out


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def catalogue_markdown(entries: list[dict[str, Any]] | None = None) -> str:
    """The catalogue as Markdown: a summary table, then one section per operator."""
    entries = catalogue() if entries is None else entries
    lines = [
        "# Operator catalogue",
        "",
        "Generated from the operator registry (`vlcurate ops --format markdown`); do not edit by hand.",
        "",
        "| operator | kind | what it does |",
        "|---|---|---|",
    ]
    lines += [f"| [`{e['name']}`](#{e['name']}) | {e['kind']} | {_cell(e['doc'])} |" for e in entries]
    for e in entries:
        lines += [
            "",
            f"## {e['name']}",
            "",
            f"*{e['kind']}*{' (model)' if e['uses_model'] else ''}. {_cell(e['description'])}",
            "",
        ]
        if e["params"]:
            lines += ["| parameter | default | description |", "|---|---|---|"]
            for p in e["params"]:
                default = "required" if p["required"] else f"`{p['default']!r}`"
                lines.append(f"| `{p['name']}` | {_cell(default)} | {_cell(p['description'])} |")
        else:
            lines.append("No parameters.")
    return "\n".join(lines) + "\n"
