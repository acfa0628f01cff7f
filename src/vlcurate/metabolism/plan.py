"""`vlcurate plan DIAG`: turn a diagnosis into the next iteration's actions (PLAN/plan.json).

Per weakness, by kind:
- perception and coverage: **collect** data about the weak attribute (a `vlcurate build` request,
  checked by the builder's own parser and written as a spec; text-to-image retrieval queries; a
  game image pool; and the `focus` an offline generator answers), and **improve** the training
  samples about it (a recipe: keep those samples, drop hallucinated descriptions, add checked
  chain-of-thought rewrites);
- reasoning and format: **improve** (recipe: answers must agree with their short answers, then
  chain-of-thought rewrites ending in `Answer: X`), and collect a smaller amount;
- refusal: **collect** answered examples of the refused category;
- label noise: **remove** the implicated training samples, each with its reason (catabolism), for
  every label-noise weakness (the `top` limit applies to the other kinds).
Every action names its evidence (weakness id, failing sample ids). The mixture per training stage
gives the new data a share proportional to the weaknesses it answers (at most `MAX_NEW_SHARE`).
Every recipe is validated with `ops.recipe.load_recipe` before the plan is written.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from vlcurate.base.atomic import write_text_atomic
from vlcurate.builder.demand import parse_request
from vlcurate.evals.results import DEFAULT_CATEGORY
from vlcurate.metabolism.diagnosis import Diagnosis, Failure, Weakness
from vlcurate.metabolism.trainpool import instruct_files
from vlcurate.ops.recipe import load_recipe

PLAN_FILE = "plan.json"
PLAN_VERSION = 1
MAX_NEW_SHARE = 0.3
PER_WEAKNESS = {"perception": 1.0, "coverage": 1.0, "refusal": 1.0, "reasoning": 0.5, "format": 0.5}
MAX_EVIDENCE_IDS = 50


class PlanError(ValueError):
    """A diagnosis that cannot be planned from, or a plan folder that is not one."""


class Evidence(BaseModel):
    weakness: str
    kind: str
    label: str
    score: float
    failing_ids: list[str]


class CollectAction(BaseModel):
    """New data about a weak slice, in every form a source can answer."""

    id: str
    n: int = Field(ge=1)
    category: str | None
    focus: dict[str, str]  # {"colour": "red"}: what the new samples must be about
    # `vlcurate build "<request>"` and the spec it parses to (PLAN/requests/ID.yaml); None when the
    # weakness names no thing to build a labelled set of (a whole benchmark's captions, a category
    # such as OCR with no objects in its items): retrieval queries and the game pool remain
    build_request: str | None = None
    build_spec: str | None = None
    retrieval_queries: list[str]
    game_pool: dict[str, Any]  # name and queries for a GAP game image pool
    evidence: Evidence


class ImproveAction(BaseModel):
    id: str
    op: Literal["recaption", "cot_rewrite"]
    recipe: str  # PLAN/recipes/ID.yaml, validated
    terms: list[str]  # the samples it applies to name one of these
    evidence: Evidence


class RemoveAction(BaseModel):
    id: str
    sample_ids: list[str]
    reasons: dict[str, str]
    evidence: Evidence


class StageMixture(BaseModel):
    stage: str
    purpose: str
    weights: dict[str, float]  # source -> share of the stage's samples


class Plan(BaseModel):
    model_config = ConfigDict(extra="allow")

    version: int = PLAN_VERSION
    id: str
    diagnosis: str
    run: str
    created: str
    train_source: str | None
    collect: list[CollectAction] = Field(default_factory=list)
    improve: list[ImproveAction] = Field(default_factory=list)
    remove: list[RemoveAction] = Field(default_factory=list)
    mixture: list[StageMixture] = Field(default_factory=list)
    skipped: list[str] = Field(default_factory=list)  # weaknesses with no action, and why

    def actions(self) -> list[CollectAction | ImproveAction | RemoveAction]:
        return [*self.collect, *self.improve, *self.remove]


def _instruct_input(train: str | None) -> list[str] | None:
    """The training pool's instruction files (absolute) for the recipes' source, when it is a path."""
    if not train or "@" in train or not Path(train).exists():
        return None
    try:
        return [str(Path(f).resolve()) for f in instruct_files(Path(train))]
    except FileNotFoundError:
        return None


def _evidence(w: Weakness) -> Evidence:
    return Evidence(
        weakness=w.id, kind=w.kind, label=w.label, score=w.score, failing_ids=w.failing_ids[:MAX_EVIDENCE_IDS]
    )


def _focus_values(w: Weakness) -> list[str]:
    return [
        v
        for val in w.attribute.values()
        for v in val.split("|")
        if v.isalpha() and v not in ("true", "false")
    ]


# meta keys that name the thing in the image (the noun a modifier such as a colour goes with)
NOUN_KEYS = ("object", "class", "label", "shape", "noun", "thing", "entity", "species", "category_name")
MAX_CONTRAST = 4  # other values a one-class request is built against


def plural(word: str) -> str:
    head, _, last = word.rpartition(" ")
    if last.endswith(("s", "x", "z", "ch", "sh")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def _subject(w: Weakness, vocab: dict[str, list[str]]) -> tuple[list[str], list[str], list[str]]:
    """Class names for a build request, what those classes are NOT (so a one-class build has something
    to be told from), and retrieval queries, all in the benchmark's own words (`Diagnosis.vocabulary`).

    A weakness on the noun itself ({"shape": "circle|square"}) asks for those things, against the other
    values of the same attribute; one on a modifier ({"colour": "red"}) asks for that modifier with every
    noun of the benchmark ("red circles", "red squares", ...)."""
    noun = next((k for k in NOUN_KEYS if k in vocab), None)
    focus = {k: [v for v in val.split("|") if v.replace(" ", "").isalpha()] for k, val in w.attribute.items()}
    focus = {k: vs for k, vs in focus.items() if vs and vs != ["true"] and vs != ["false"]}
    things = focus.get(noun, []) if noun else []
    modifiers = [v for k, vs in focus.items() if k != noun for v in vs]
    if things and not modifiers:
        contrast = [v for v in vocab.get(noun or "", []) if v not in things][:MAX_CONTRAST]
        return [plural(t) for t in things], [plural(c) for c in contrast], [f"a {t}" for t in things]
    if modifiers:
        words = " ".join(modifiers)
        nouns = things or (vocab[noun] if noun else [])
        if nouns:
            return [plural(f"{words} {n}") for n in nouns], [], [f"a {words} {n}" for n in nouns]
        key = next(k for k in focus if k != noun)
        contrast = [v for v in vocab.get(key, []) if v not in modifiers][:MAX_CONTRAST]
        return (
            [plural(f"{m} thing") for m in modifiers],
            [plural(f"{c} thing") for c in contrast],
            [f"something {m}" for m in modifiers],
        )
    nouns = vocab.get(noun, []) if noun else []
    query = f"a picture to ask {w.category or 'these'} questions about"
    return [plural(n) for n in nouns], [], [query]  # no nouns: nothing to build (see `_collect`)


MAX_QUERIES = 5


def _failure_queries(w: Weakness, failed: list[Failure]) -> list[str]:
    """Retrieval queries from the weakness's own failures: the reference captions of caption items
    (they describe the images the model failed on), else the questions."""
    ids = set(w.failing_ids)
    out: list[str] = []
    for f in failed:
        text = (f.answer if f.type == "caption" else f.question) or ""
        text = " ".join(text.split())[:120]
        if f.id in ids and text and text not in out:
            out.append(text)
        if len(out) == MAX_QUERIES:
            break
    return out


def _collect(
    w: Weakness, n: int, aid: str, out: Path, vocab: dict[str, list[str]], failed: list[Failure]
) -> CollectAction:
    classes, contrast, queries = _subject(w, vocab)
    if not classes:  # no thing to build a labelled set of: images like the failed ones, by retrieval
        queries = _failure_queries(w, failed) or queries
        return CollectAction(
            id=aid,
            n=n,
            category=w.category,
            focus=dict(w.attribute),
            retrieval_queries=queries,
            game_pool={"name": f"metabolism-{aid}", "queries": queries, "images": n},
            evidence=_evidence(w),
        )
    per_class = max(1, n // len(classes))
    task = "detection" if w.category == "count" else "classification"
    request = f"{per_class} images each of {', '.join(classes[:-1])} and {classes[-1]} for {task}"
    if len(classes) == 1:
        request = f"{per_class} images each of {classes[0]} for {task}"
    if contrast and (len(classes) == 1 or task == "detection"):
        # a one-class build has nothing to tell its class from; a detection build would count the
        # other things in a scene as one of its classes
        request += f", not {' or '.join(contrast)}"
    spec = parse_request(request)  # the builder's own parser: a request it cannot read fails here
    spec_path = out / "requests" / f"{aid}.yaml"
    spec_path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(spec_path, spec.to_yaml())
    focus = dict(w.attribute)
    return CollectAction(
        id=aid,
        n=n,
        category=w.category,
        focus=focus,
        build_request=request,
        build_spec=str(spec_path.relative_to(out)),
        retrieval_queries=queries,
        game_pool={"name": f"metabolism-{aid}", "queries": queries, "images": n},
        evidence=_evidence(w),
    )


def _recipe(
    aid: str, op: str, terms: list[str], train: list[str] | None, out: Path, endpoint: str, model: str
) -> tuple[str, dict[str, Any]]:
    vocab = out / "recipes" / f"{aid}.terms.txt"
    vocab.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(vocab, "\n".join(terms) + "\n")
    vlm = {"base_url": endpoint, "model": model, "max_concurrency": 16}
    steps: list[dict[str, Any]] = [
        {"op": "concept_match", "vocabulary": str(vocab.resolve()), "plurals": True}
    ]
    if op == "recaption":
        steps += [
            {"op": "hallucination", "model": "tiny-synth", "mentions": "synth", "tau": 0.0},
            {"op": "cot_rewrite", "vlm": vlm},
        ]
    else:
        steps += [{"op": "teacher_behaviour"}, {"op": "answer_agreement"}, {"op": "cot_rewrite", "vlm": vlm}]
    recipe = {
        "source": {"input": train or "train/data.json", "kind": "instruct", "options": {"format": "auto"}},
        "steps": steps,
        "sink": {"out": str((out / "runs" / aid).resolve()), "instruct_format": "llava"},
    }
    path = out / "recipes" / f"{aid}.yaml"
    text = f"# {op} for plan action {aid} (vlcurate plan); run with `vlcurate run {path.name}`\n"
    text += yaml.safe_dump(recipe, sort_keys=False)
    load_recipe(path, text=text)  # every recipe the plan writes must validate
    write_text_atomic(path, text)
    return str(path.relative_to(out)), recipe


def make_plan(
    diag: Diagnosis,
    out: str | Path,
    *,
    diagnosis_path: str = "",
    per_weakness: int = 200,
    top: int = 5,
    endpoint: str = "http://127.0.0.1:8300/v1",
    model: str = "tiny-synth",
) -> Plan:
    """Write PLAN/plan.json (and its recipes and build specs) for the `top` weaknesses."""
    if not diag.weaknesses:
        raise PlanError(
            f"{diagnosis_path or diag.run}: the diagnosis has no weaknesses "
            f"({diag.failures} failures in {diag.answers} answers): nothing to plan"
        )
    out_path = Path(out)
    out_path.mkdir(parents=True, exist_ok=True)
    train = diag.train.source if diag.train is not None else None
    train_file = _instruct_input(train)
    collect: list[CollectAction] = []
    improve: list[ImproveAction] = []
    remove: list[RemoveAction] = []
    skipped: list[str] = []
    k = 0

    def next_id() -> str:
        nonlocal k
        k += 1
        return f"a{k:02d}"

    removing: set[str] = set()
    for w in diag.weaknesses:  # removals are cheap and certain: every label-noise weakness, not just the top
        fresh = [s for s in w.implicated if s.id not in removing] if w.kind == "label_noise" else []
        if fresh:
            removing |= {s.id for s in fresh}
            remove.append(
                RemoveAction(
                    id=next_id(),
                    sample_ids=[s.id for s in fresh],
                    reasons={s.id: f"{s.reason}; resembles failure {s.nearest_failure}" for s in fresh},
                    evidence=_evidence(w),
                )
            )
    planned = [w for w in diag.weaknesses if w.kind != "label_noise"]
    for w in planned[:top]:
        named = w.category if w.category and w.category != DEFAULT_CATEGORY else None
        terms = [v for v in _focus_values(w) if not v.isdigit()] or ([named] if named else [])
        share = PER_WEAKNESS.get(w.kind, 0.5)
        n = max(1, int(per_weakness * share))
        collect.append(_collect(w, n, next_id(), out_path, diag.vocabulary, diag.failed))
        if w.kind in ("perception", "coverage", "reasoning", "format") and terms:
            op: Literal["recaption", "cot_rewrite"] = (
                "recaption" if w.kind in ("perception", "coverage") else "cot_rewrite"
            )
            aid = next_id()
            path, _ = _recipe(aid, op, terms, train_file, out_path, endpoint, model)
            improve.append(ImproveAction(id=aid, op=op, recipe=path, terms=terms, evidence=_evidence(w)))
    for w in planned[top:]:
        skipped.append(f"{w.id}: below the top {top} (score {w.score:.2f})")
    mixture = _mixture(diag, collect)
    body = {
        "diagnosis": diagnosis_path,
        "run": diag.run,
        "train_source": train,
        "collect": [c.model_dump() for c in collect],
        "improve": [i.model_dump() for i in improve],
        "remove": [r.model_dump() for r in remove],
        "mixture": [m.model_dump() for m in mixture],
    }
    pid = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    plan = Plan(
        id=pid,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        diagnosis=diagnosis_path,
        run=diag.run,
        train_source=train,
        collect=collect,
        improve=improve,
        remove=remove,
        mixture=mixture,
        skipped=skipped,
    )
    write_text_atomic(out_path / PLAN_FILE, plan.model_dump_json(indent=2))
    return plan


def _mixture(diag: Diagnosis, collect: list[CollectAction]) -> list[StageMixture]:
    """Stage 1 aligns on descriptions (unchanged); stage 2 mixes the pool with the new data by the
    weight of the weaknesses it answers; stage 3 anneals with the new data at a higher share."""
    scores = {c.id: max(c.evidence.score, 0.0) for c in collect}
    total = sum(scores.values()) or 1.0
    failures = max(diag.failures, 1)
    new_share = min(
        MAX_NEW_SHARE, sum(len(c.evidence.failing_ids) for c in collect) / failures * MAX_NEW_SHARE
    )
    new_share = round(new_share, 4) if collect else 0.0

    def weights(share: float) -> dict[str, float]:
        w = {"pool": round(1.0 - share, 4)}
        for cid, s in scores.items():
            w[cid] = round(share * s / total, 4)
        return w

    return [
        StageMixture(
            stage="stage1-alignment", purpose="image-text alignment on descriptions", weights={"pool": 1.0}
        ),
        StageMixture(
            stage="stage2-instruction",
            purpose="instruction tuning with the increment",
            weights=weights(new_share),
        ),
        StageMixture(
            stage="stage3-annealing",
            purpose="short final stage weighted to the weaknesses",
            weights=weights(min(0.5, 2 * new_share)),
        ),
    ]


def load_plan(path: str | Path) -> Plan:
    p = Path(path)
    f = p / PLAN_FILE if p.is_dir() else p
    if not f.is_file():
        raise PlanError(f"{path} is not a plan: {PLAN_FILE} is missing (run `vlcurate plan`)")
    try:
        return Plan.model_validate_json(f.read_bytes())
    except ValidationError as exc:
        raise PlanError(f"{f}: not a plan ({str(exc).splitlines()[0]})") from None
