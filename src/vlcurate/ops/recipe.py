"""YAML recipes: a source, ordered operator steps with parameters, and a sink, validated before
anything runs. Every error names the file and line of the step it is about.

    source: {input: "shards/{00000..00009}.tar"}
    steps:
      - op: score_threshold
        column: clip_score
        min: 0.25
    sink: {out: runs/basic}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlcurate.ops.base import Operator, problem
from vlcurate.ops.registry import UnknownOperatorError, get_operator

SOURCE_COLUMNS = ("uid", "key", "text", "image", "shard", "source", "keep", "reason", "dropped_by")
# What an instruct source adds (io.instruct_reader.INSTRUCT_COLUMNS, less keep/reason).
INSTRUCT_SOURCE_COLUMNS = ("messages", "meta", "image_paths", "extra_images")
# What a score-table source gives (io.score_tables), besides its score column.
SCORES_SOURCE_COLUMNS = (
    "uid",
    "key",
    "text",
    "status",
    "width",
    "height",
    "shard",
    "keep",
    "reason",
    "dropped_by",
    "reasons",
    "score",
    "clip_l14_similarity_score",
    "clip_b32_similarity_score",
)


class RecipeError(ValueError):
    """A recipe that cannot run, with where in the file the problem is."""


class FetchSpec(BaseModel):
    """How images given by path or URL are loaded (`io.fetch`, as `vlcurate score` loads them)."""

    model_config = ConfigDict(extra="forbid")
    concurrency: int = Field(default=32, ge=1, le=1024, description="Reads and downloads in flight.")
    timeout: float = Field(default=10.0, gt=0, le=600, description="Seconds per attempt.")
    retries: int = Field(default=2, ge=0, le=10, description="Extra attempts after a network error.")


class SourceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str | list[str] = Field(description="Shards as `vlcurate score` reads them.")
    kind: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    fetch: FetchSpec = Field(default_factory=FetchSpec)


class SinkSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    out: str
    write_shards: bool = Field(default=False, description="Also reshard the kept pairs into WebDataset tars.")
    samples_per_shard: int = Field(default=10_000, ge=1)
    instruct_format: Literal["llava", "sharegpt", "openai", "hf"] | None = Field(
        default=None,
        description="Instruct sources: also write the kept samples in this format, with their images.",
    )


class Step(BaseModel):
    op: str
    params: dict[str, Any]
    line: int


class Recipe(BaseModel):
    """A validated recipe; `operators()` builds fresh operator instances from it."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    source: SourceSpec
    steps: list[Step]
    sink: SinkSpec
    path: str = "<recipe>"

    def operators(self) -> list[Operator]:
        """Fresh operators; a model step whose columns a later step reads on dropped rows (a top
        fraction over every pair) computes every row (`Operator.all_rows`), so skipping dropped
        rows never changes what is kept."""
        ops = [get_operator(s.op)(get_operator(s.op).Params(**s.params)) for s in self.steps]
        for i, op in enumerate(ops):
            later = {c for o in ops[i + 1 :] for c in o.reads_dropped()}
            op.all_rows = bool(later & set(op.provides()))
        return ops

    def with_overrides(
        self,
        *,
        input: str | None = None,
        out: str | None = None,
        source_options: dict[str, Any] | None = None,
    ) -> Recipe:
        """The same recipe on another input, into another output folder, or with other input options
        (`--input`, `--out`, and the `@data_options` flags: the command line wins)."""
        opts = dict(source_options or {})
        kind = opts.pop("kind", None)
        update: dict[str, Any] = {}
        if input is not None:
            update["input"] = input
        if kind is not None:
            update["kind"] = kind
        if opts:
            update["options"] = {**self.source.options, **opts}
        source = self.source.model_copy(update=update) if update else self.source
        sink = self.sink if out is None else self.sink.model_copy(update={"out": out})
        return self.model_copy(update={"source": source, "sink": sink})


def _step_lines(text: str) -> list[int]:
    """1-based line of each item under `steps:`, from YAML's node marks."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "steps" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def load_recipe(source: str | Path, *, text: str | None = None) -> Recipe:
    """Read and validate a recipe file (or `text`): operators, parameters, types and columns."""
    where = str(source)
    if text is None:
        try:
            text = Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise RecipeError(f"{where}: cannot read recipe: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
        lines = _step_lines(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{where}{at}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: a recipe is a mapping with source, steps and sink")
    unknown = set(data) - {"source", "steps", "sink"}
    if unknown:
        raise RecipeError(
            f"{where}: unknown top-level key(s) {sorted(unknown)}; expected source, steps, sink"
        )
    for key in ("source", "steps", "sink"):
        if key not in data:
            raise RecipeError(f"{where}: missing '{key}'")
    try:
        src = SourceSpec.model_validate(data["source"])
        sink = SinkSpec.model_validate(data["sink"])
    except ValidationError as exc:
        raise RecipeError(f"{where}: {_first_error(exc)}") from None
    if sink.instruct_format is not None and src.kind != "instruct":
        raise RecipeError(f"{where}: sink.instruct_format needs an instruct source (source.kind: instruct)")
    raw_steps = data["steps"]
    if not isinstance(raw_steps, list) or not raw_steps:
        raise RecipeError(f"{where}: 'steps' must be a non-empty list of operators")
    steps: list[Step] = []
    available = source_columns(src)
    for i, raw in enumerate(raw_steps):
        line = lines[i] if i < len(lines) else 0
        at = f"{where}:{line}: step {i + 1}"
        if not isinstance(raw, dict) or not isinstance(raw.get("op"), str):
            raise RecipeError(f"{at}: each step is a mapping with 'op: NAME' and its parameters")
        params = {k: v for k, v in raw.items() if k != "op"}
        try:
            cls = get_operator(raw["op"])
        except UnknownOperatorError as exc:
            raise RecipeError(f"{at}: {exc}") from None
        try:
            op = cls(cls.Params(**params))
        except ValidationError as exc:
            raise RecipeError(f"{at} ({cls.name}): {_first_error(exc)}") from None
        except Exception as exc:  # a plugin that cannot be imported, a bad name in a parameter
            raise RecipeError(f"{at} ({cls.name}): {problem(exc)}") from None
        missing = [c for c in _required(op) if c not in available]
        if missing:
            raise RecipeError(
                f"{at} ({cls.name}): needs column(s) {missing} that no earlier step makes "
                f"(available: {sorted(available)})"
            )
        available |= set(op.provides())
        steps.append(Step(op=cls.name, params=params, line=line))
    return Recipe(source=src, steps=steps, sink=sink, path=where)


def source_columns(src: SourceSpec) -> set[str]:
    """The columns a source gives the first step."""
    if src.kind == "scores":
        return set(SCORES_SOURCE_COLUMNS) | {str(src.options.get("score_column") or "score")}
    return set(SOURCE_COLUMNS) | (set(INSTRUCT_SOURCE_COLUMNS) if src.kind == "instruct" else set())


def _required(op: Operator) -> tuple[str, ...]:
    return tuple(op.requires) + op.required_columns()


def _first_error(exc: ValidationError) -> str:
    e = exc.errors()[0]
    loc = ".".join(str(x) for x in e.get("loc", ())) or "value"
    if e.get("type") == "extra_forbidden":
        return f"unknown parameter '{loc}'"
    return f"parameter '{loc}': {e.get('msg')}"
