"""The loop's apply step for a plan's **improve** actions: each action's recipe, run with the
project's engine (`ops.engine_local.run_recipe`, as `vlcurate run` does) over the current training
samples, changes the samples the new version will hold.

- A sample the recipe rewrote (`messages_cot`: a chain-of-thought rewrite checked against the short
  answer) replaces its original under the same id, with a lineage event naming the operator, the
  plan, the action and the weakness.
- A sample a later step dropped (hallucination, teacher behaviour, answer agreement) becomes a
  removal with that operator's reason.
- A sample the recipe's first step (`concept_match`, the action's terms) left out is not what the
  action is about: it stays as it is.

A recipe that cannot run, a run with failed shards, or a VLM that answered none of the rewrite
requests raises `ApplyError`: the loop marks the round failed and commits nothing.

`build_collector` answers collect actions with `vlcurate build` (`builder.job.build`) over an image
pool: each exported image with a verified label becomes a question/answer sample whose lineage names
the build and the label's confidence and model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from vlcurate.base.atomic import write_text_atomic
from vlcurate.metabolism.plan import CollectAction, ImproveAction, Plan, plural
from vlcurate.versions.model import LineageEvent

INPUT_FILE = "input.jsonl"
# Rows the first step (the action's scope) or the source left out are not the action's business.
OUT_OF_SCOPE = ("concept_match", "source")


class ApplyError(RuntimeError):
    """An improve recipe or a build that failed: the round is marked failed, nothing is committed."""


def write_input(samples: dict[str, dict[str, Any]], path: Path) -> Path:
    """The current training samples as instruction data (JSONL, stored form) for the recipes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(s) + "\n" for s in samples.values()))
    return path


def run_action(action: ImproveAction, plan_dir: Path, data: Path, out: Path, *, progress: bool) -> Path:
    """Run the action's recipe over `data` into `out` (the engine's run folder); errors as `ApplyError`."""
    from vlcurate.io.shards import ShardReadError
    from vlcurate.ops.base import StepError
    from vlcurate.ops.engine_local import run_recipe
    from vlcurate.ops.recipe import RecipeError, load_recipe

    where = f"improve {action.id} ({action.op})"
    try:
        rec = load_recipe(plan_dir / action.recipe).with_overrides(input=str(data), out=str(out))
        result = run_recipe(rec, progress=progress)
    except (RecipeError, StepError, ShardReadError, OSError) as exc:
        raise ApplyError(f"{where}: {exc}") from exc
    if result.partial:
        shards = "; ".join(f"{k}: {v}" for k, v in result.failed_shards.items())
        raise ApplyError(f"{where}: the recipe's run is partial ({shards or 'pairs failed to load'})")
    return result.out


def _rows(run_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in sorted((run_dir / "decisions").glob("*.parquet")):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def apply_improve(
    plan: Plan,
    samples: dict[str, dict[str, Any]],
    plan_dir: Path,
    folder: Path,
    *,
    progress: bool = False,
) -> list[LineageEvent]:
    """Run every improve action of `plan` over `samples` (changed in place); the lineage events.

    Every action sees the samples as they were before the first one; a sample an earlier action
    already rewrote or removed is left to that action."""
    if not plan.improve:
        return []
    data = write_input(samples, folder / INPUT_FILE)
    events: list[LineageEvent] = []
    touched: set[str] = set()
    for action in plan.improve:
        run_dir = run_action(action, plan_dir, data, folder / action.id, progress=progress)
        rows = _rows(run_dir)
        params = {"plan": plan.id, "action": action.id, "weakness": action.evidence.weakness}
        statuses = [str(r["cot_status"]) for r in rows if r.get("cot_status")]
        if statuses and all(s.startswith("error:") for s in statuses):
            raise ApplyError(
                f"improve {action.id} ({action.op}): every rewrite failed ({len(statuses)}), "
                f"first: {statuses[0][len('error:') :]}"
            )
        for r in rows:
            sid = str(r.get("key") or r.get("uid"))
            if sid not in samples or sid in touched:
                continue
            by = r.get("dropped_by")
            if not r.get("keep", True):
                if by in OUT_OF_SCOPE:
                    continue
                touched.add(sid)
                del samples[sid]
                reason = f"{r.get('reason') or by}; plan {plan.id} {action.id} ({action.op})"
                events.append(
                    LineageEvent(sample_id=sid, op=str(by), reason=reason, dropped=True, params=params)
                )
            elif r.get("messages_cot"):
                touched.add(sid)
                before = samples[sid]["messages"]
                samples[sid] = {**samples[sid], "messages": json.loads(r["messages_cot"])}
                events.append(
                    LineageEvent(
                        sample_id=sid,
                        op="cot_rewrite",
                        reason=f"plan {plan.id} {action.id} ({action.op}): {action.evidence.label}; "
                        "the rewrite's final answer agrees with the short answer",
                        params={**params, "op": action.op, "replaced_turns": len(before)},
                        scores={"cot_status": r.get("cot_status")},
                    )
                )
    return events


# ---- collect actions answered by `vlcurate build` ---------------------------------------------


def build_question(classes: list[str], label: str) -> tuple[str, str, list[str]]:
    """(question, answer, choices) for a built classification image: which of the spec's classes
    it shows; a one-class build (nothing to choose between) asks whether it is there instead."""
    if len(classes) == 1:
        return f"Is there a {label} in the image? Answer yes or no.", "yes", ["yes", "no"]
    return f"What is shown in the image? Answer with one of: {', '.join(classes)}.", label, classes


def build_collector(
    pools: list[str], *, progress: bool = False
) -> Callable[[CollectAction, Path, int], list[Path]]:
    """A collector that runs `builder.job.build` for each collect action's build request against
    `pools` and turns every exported, verified image into a question/answer sample (LLaVA JSON):
    a classification build asks which class an image shows; a detection or segmentation build asks
    how many of each class it holds (`write_count_samples`)."""

    def collect(action: CollectAction, out: Path, seed: int) -> list[Path]:
        from vlcurate.builder.job import BuildConfig, build
        from vlcurate.builder.spec import SpecError

        if action.build_request is None:
            raise ApplyError(
                f"collect {action.id}: the weakness names no thing to build a labelled set of "
                f"({action.evidence.label}); collect images like its failures by retrieval "
                f"({'; '.join(action.retrieval_queries[:2])}) with --collect-cmd, or use --collect synth"
            )
        where = f"build {action.id} ({action.build_request!r})"
        build_out = out / "build"
        try:
            request = one_class_request(action.build_request, where)
            cfg = BuildConfig(request=request, pools=list(pools), out=build_out, overwrite=True)
            summary = build(cfg, _build_progress if progress else _quiet_build)
        except (SpecError, ValueError, OSError) as exc:
            raise ApplyError(f"{where}: {exc}") from exc
        classes = [c["name"] for c in summary["spec"]["classes"]]
        if summary["spec"]["task"] != "classify":
            return [write_count_samples(build_out, action, out / "data.json", request=request)]
        return [write_build_samples(build_out, action, classes, out / "data.json", request=request)]

    return collect


def one_class_request(request: str, where: str) -> str:
    """The request to build, checked. A one-class request has nothing for the zero-shot labeller to
    tell its class from (every pool image, or every region, would be labelled it), so it must say
    what its class is not (`..., not circles or squares`); `plan` adds that from the benchmark's
    vocabulary."""
    from vlcurate.builder.demand import parse_request

    spec = parse_request(request)
    if len(spec.class_names) > 1 or spec.other:
        return request
    (name,) = spec.class_names
    raise ApplyError(
        f"{where}: one class and nothing to tell it from (every pool image would be labelled "
        f"{name!r}); the request must name what it is not, e.g. '..., not A or B'"
    )


def _quiet_build(stage: str, message: str) -> None:
    return None


def _build_progress(stage: str, message: str) -> None:
    import sys

    print(f"build {stage}: {message}", file=sys.stderr)


def _record(
    uid: str,
    image: Path,
    qa: tuple[str, str, list[str] | None],
    build_out: Path,
    row: dict[str, Any],
    request: str,
) -> dict[str, Any]:
    """One LLaVA sample from a built image: (question, answer, choices), and the build behind it."""
    question, answer, choices = qa
    return {
        "id": uid,
        "image": str(image.resolve()),
        "conversations": [
            {"from": "human", "value": f"<image>\n{question}"},
            {"from": "gpt", "value": answer},
        ],
        "short_answer": answer,
        "choices": choices,
        "build": {
            "request": request,
            "out": str(build_out.resolve()),
            "uid": row["uid"],
            "source": row.get("source"),
            "split": row.get("split"),
        },
    }


def _write_records(records: list[dict[str, Any]], path: Path, action: CollectAction, what: str) -> Path:
    if not records:
        raise ApplyError(f"build {action.id} ({action.build_request!r}): no {what} was exported")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(records, indent=1))
    return path


def write_count_samples(
    build_out: Path, action: CollectAction, path: Path, *, request: str | None = None
) -> Path:
    """Counting questions from a detection (or segmentation) build: for every exported image and
    every class found in it, "How many CLASSES are there?" answered by its verified boxes. A class
    with any box the verifier did not confirm (or one held back for review) is not asked about in that
    image: its count is not known. The label fields say how many boxes and their lowest confidence."""
    files = {
        p.name: p for fmt in ("coco", "yolo", "voc") for p in (build_out / fmt).rglob("*") if p.is_file()
    }
    doubtful: dict[str, set[str]] = {}
    queue = build_out / "review" / "queue.jsonl"
    for line in queue.read_text().splitlines() if queue.is_file() else []:
        q = json.loads(line)
        doubtful.setdefault(q["uid"], set()).add(str(q.get("label", {}).get("class")))
    records: list[dict[str, Any]] = []
    for line in (build_out / "labels.jsonl").read_text().splitlines():
        row = json.loads(line)
        image = files.get(row["file"])
        if image is None:
            continue
        by_class: dict[str, list[dict[str, Any]]] = {}
        for lab in row["labels"]:
            by_class.setdefault(str(lab["class"]), []).append(lab)
        for cls, labs in sorted(by_class.items()):
            if not all(lab.get("verified") for lab in labs) or cls in doubtful.get(row["uid"], set()):
                continue
            qa = (f"How many {plural(cls)} are there? Answer with a number.", str(len(labs)), None)
            uid = f"{row['uid'][:16]}-{len(records):04d}"
            rec = _record(uid, image, qa, build_out, row, request or action.build_request or "")
            rec["label"] = {
                "class": cls,
                "confidence": min(float(lab.get("confidence") or 0.0) for lab in labs),
                "model": labs[0].get("model"),
                "verifier": labs[0].get("verifier"),
                "verifier_confidence": min(float(lab.get("verifier_confidence") or 0.0) for lab in labs),
                "boxes": len(labs),
            }
            records.append(rec)
    return _write_records(records, path, action, "image with verified boxes")


def write_build_samples(
    build_out: Path, action: CollectAction, classes: list[str], path: Path, *, request: str | None = None
) -> Path:
    """One sample per exported image whose label was verified: the question from the spec's classes,
    the answer its label, and the build and the label's confidence and model beside them."""
    files = {p.name: p for p in (build_out / "imagefolder").glob("*/*/*") if p.is_file()}
    records: list[dict[str, Any]] = []
    for line in (build_out / "labels.jsonl").read_text().splitlines():
        row = json.loads(line)
        labels = [lab for lab in row["labels"] if lab.get("verified")]
        image = files.get(row["file"])
        if not labels or image is None:
            continue
        lab = labels[0]
        qa = build_question(classes, str(lab["class"]))
        rec = _record(row["uid"][:20], image, qa, build_out, row, request or action.build_request or "")
        rec["label"] = {
            k: lab.get(k) for k in ("class", "confidence", "model", "verifier", "verifier_confidence")
        }
        records.append(rec)
    return _write_records(records, path, action, "verified image")
