"""`vlcurate loop`: evaluate -> diagnose -> plan -> apply -> version -> train -> re-evaluate -> validate.

One round, in OUT/round-N/:

    base eval   the model as it is (round 1) or the accepted model of the round before
    diagnose    the base run against the base version's samples (diag/)
    plan        plan/ (a diagnosis with no weaknesses ends the loop: converged)
    apply       implicated samples removed (catabolism); new samples for every collect action (the
                `Collector`: offline the synthetic world's generator, a `vlcurate build` over an
                image pool, or a user command); every improve action's recipe run with the engine
                over the training samples (`metabolism.apply`: rewrites replace their originals,
                the recipe's drops are removals; `improve=False` skips it)
    version     VersionStore.commit(parent=base version, plan_id=plan id, lineage events naming the
                action and weakness behind every added or removed sample); the plan is attached
    train       the train hook with the new version exported (`--train-cmd` with {version_dir},
                {export}, {version}, {round}, {endpoint}; by default the bundled server reloads its
                memory with `POST /admin/memory`)
    new eval    the same benchmark again (new-run/)
    validate    `evals.paired.compare_runs`: no category may regress beyond its interval; with
                `require_gain` the increment must also close a weakness it was planned for or
                improve a category beyond its interval (`apply_gain_rule`). The decision is attached
                to the version; accepted moves the loop's base to it (and the store's `main`,
                compare-and-swap), rejected puts the base back (the train hook with the base)

Each step writes its result into OUT/round-N/round.json before the next starts, so a re-run skips
what is done (resumable per round). A failing train hook marks the round failed: the version is
kept, nothing is accepted, and the loop stops with the error. OUT/summary.json and summary.html
hold every round's accuracies per category and decisions.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import httpx
from pydantic import BaseModel, Field

from vlcurate.base.atomic import write_text_atomic
from vlcurate.base.intervals import wilson
from vlcurate.evals.config import EvalConfig, api_base
from vlcurate.evals.paired import ValidationDecision, compare_runs
from vlcurate.evals.results import load_run
from vlcurate.metabolism.diagnose import DiagnoseOptions, diagnose
from vlcurate.metabolism.diagnosis import Diagnosis, load_diagnosis
from vlcurate.metabolism.plan import CollectAction, Plan, PlanError, load_plan, make_plan
from vlcurate.metabolism.slices import in_slice
from vlcurate.metabolism.trainpool import items_from_rows
from vlcurate.versions.errors import VersionError
from vlcurate.versions.model import LineageEvent
from vlcurate.versions.store import VersionStore
from vlcurate.vlm.client import VLMSettings

ROUND_FILE = "round.json"
SUMMARY_FILE = "summary.json"
STEPS = ("base_eval", "diagnose", "plan", "apply", "version", "train", "new_eval", "validate")
RoundStatus = Literal["running", "accepted", "rejected", "failed", "converged"]

# A collector answers one collect action: it writes instruction data for it under `out` and
# returns the files it wrote (offline: the synthetic world's generator; else a user command).
Collector = Callable[[CollectAction, Path, int], list[Path]]


class LoopError(RuntimeError):
    """A round that cannot go on (a failing hook or collector): the round is marked failed."""


class LoopConfig(BaseModel):
    bench: str
    endpoint: str
    model: str = "tiny-synth"
    api_key: str | None = Field(None, exclude=True)
    store: Path
    out: Path
    train: str | None = None  # first training data (instruction file/folder) or a version ref in the store
    rounds: int = Field(2, ge=1)
    train_cmd: str | None = None
    per_weakness: int = Field(200, ge=1)
    top: int = Field(3, ge=1)
    method: Literal["mcnemar", "bootstrap"] = "mcnemar"
    alpha: float = Field(0.05, gt=0, lt=1)
    concurrency: int = Field(16, ge=1)
    limit: int | None = Field(None, ge=1)
    probe: bool = True
    require_gain: bool = (
        False  # accept only an increment that closes a planned weakness or improves a category
    )
    improve: bool = True  # run the plan's improve recipes (recaption, chain-of-thought rewrite)
    scorer: str | None = "tiny-synth"
    progress: bool = True


class RoundRecord(BaseModel):
    round: int
    status: RoundStatus = "running"
    done: list[str] = Field(default_factory=list)
    base_version: str | None = None
    base_run: str | None = None
    diagnosis: str | None = None
    plan: str | None = None
    plan_id: str | None = None
    top_weakness: str | None = None
    added: int = 0
    removed: int = 0
    improved: int = 0  # samples an improve recipe rewrote (same id, new messages)
    new_version: str | None = None
    export: str | None = None
    new_run: str | None = None
    decision: dict[str, Any] | None = None
    accuracy_before: dict[str, Any] = Field(default_factory=dict)
    accuracy_after: dict[str, Any] = Field(default_factory=dict)
    error: str | None = None
    targets: list[dict[str, Any]] = Field(default_factory=list)  # each planned weakness before/after
    main_moved: bool | None = None  # accepted and `main` of the store now points at the new version
    note: str | None = None
    started: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))


class LoopSummary(BaseModel):
    config: dict[str, Any]
    rounds: list[RoundRecord]
    final_version: str | None
    stopped: str


def _save(rec: RoundRecord, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / ROUND_FILE, rec.model_dump_json(indent=2))


def _load_round(folder: Path, n: int) -> RoundRecord:
    f = folder / ROUND_FILE
    return RoundRecord.model_validate_json(f.read_bytes()) if f.is_file() else RoundRecord(round=n)


def server_root(endpoint: str) -> str:
    """http://host:port/v1 -> http://host:port (where the bundled server's /admin routes are)."""
    base = api_base(endpoint)
    return base[: -len("/v1")] if base.endswith("/v1") else base


def reload_memory(endpoint: str, path: Path, api_key: str | None = None) -> dict[str, Any]:
    """The default train hook offline: the bundled server remembers the version's export."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    url = server_root(endpoint) + "/admin/memory"
    try:
        r = httpx.post(url, json={"path": str(path)}, headers=headers, timeout=120)
    except httpx.HTTPError as exc:
        raise LoopError(f"train hook: {url}: {exc}") from None
    if r.status_code != 200:
        raise LoopError(f"train hook: {url} answered {r.status_code}: {r.text[:300]}")
    return dict(r.json())


def run_train_cmd(cmd: str, values: dict[str, str], log: Path) -> None:
    """The user's training command with placeholders filled in (shell-quoted); a non-zero exit fails."""
    filled = cmd.format(**{k: shlex.quote(v) for k, v in values.items()})
    with log.open("ab") as fh:
        fh.write(f"$ {filled}\n".encode())
        fh.flush()
        proc = subprocess.run(filled, shell=True, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise LoopError(f"train hook exited with {proc.returncode}: {filled} (log: {log})")


class Loop:
    """The rounds, with the store, collector and evaluation wired in (see the module doc)."""

    def __init__(self, config: LoopConfig, collector: Collector) -> None:
        self.cfg = config
        self.collector = collector
        self.store = VersionStore(config.store)
        self.out = Path(config.out)

    # ---- steps --------------------------------------------------------------------------------
    def evaluate(self, out: Path) -> Path:
        from vlcurate.evals.runner import run_eval

        cfg = EvalConfig(
            endpoint=self.cfg.endpoint,
            model=self.cfg.model,
            bench=self.cfg.bench,
            out=out,
            api_key=self.cfg.api_key,
            concurrency=self.cfg.concurrency,
            limit=self.cfg.limit,
        )
        run_eval(cfg, progress=self.cfg.progress)
        return out

    def initial_version(self) -> str:
        """The base version of round 1: the given ref, or the given training data committed."""
        spec = self.cfg.train
        if spec and (self.cfg.store / "store.json").is_file():
            try:
                return self.store.resolve(spec)
            except ValueError:
                pass
        if not spec:
            head = self.store.head("main") if (self.cfg.store / "store.json").is_file() else None
            if head is None:
                raise LoopError("no training data: give --train (instruction data or a version of the store)")
            return head
        from vlcurate.metabolism.trainpool import instruct_files
        from vlcurate.versions.ingest import read_instruct

        ing = read_instruct([Path(f) for f in instruct_files(Path(spec))], self.cfg.store)
        info = self.store.commit(
            ing.samples, parent=None, message=f"loop: training data {spec}", events=ing.events
        )
        if self.store.head("main") is None:
            self.store.set_ref("main", info.id, expect=None)
        return info.id

    def train(self, vid: str, rnd: int, folder: Path) -> Path:
        export = folder / f"export-{vid[:12]}"
        if not (export / "version.json").is_file():
            self.store.export(vid, "llava", export)
        if self.cfg.train_cmd:
            values = {
                "version": vid,
                "version_dir": str(self.store.version_dir(vid)),
                "export": str(export),
                "round": str(rnd),
                "endpoint": self.cfg.endpoint,
                "store": str(self.cfg.store),
            }
            run_train_cmd(self.cfg.train_cmd, values, folder / "train.log")
        else:
            reload_memory(self.cfg.endpoint, export, self.cfg.api_key)
        return export

    def apply(
        self, plan: Plan, base: str, rnd: int, folder: Path
    ) -> tuple[list[dict[str, Any]], list[LineageEvent]]:
        from vlcurate.versions.ingest import read_instruct

        samples = {s["id"]: s for s in self.store.iter_samples(base)}
        events: list[LineageEvent] = []
        for r in plan.remove:
            for sid in r.sample_ids:
                if samples.pop(sid, None) is not None:
                    events.append(
                        LineageEvent(
                            sample_id=sid,
                            op="remove",
                            reason=r.reasons.get(sid, "implicated in failures"),
                            dropped=True,
                            params={"plan": plan.id, "action": r.id, "weakness": r.evidence.weakness},
                        )
                    )
        new: dict[str, dict[str, Any]] = {}
        for k, c in enumerate(plan.collect):
            files = self.collector(c, folder / "collect" / c.id, 1000 * rnd + k)
            ing = read_instruct(files, self.cfg.store)
            for s in ing.samples:
                s["id"] = f"r{rnd}-{c.id}-{s['id']}"
                new[s["id"]] = s
                label: dict[str, Any] = s["label"] if isinstance(s.get("label"), dict) else {}
                events.append(
                    LineageEvent(
                        sample_id=s["id"],
                        op="collect",
                        reason=f"plan {plan.id} {c.id}: {c.evidence.label}",
                        params={
                            "plan": plan.id,
                            "action": c.id,
                            "weakness": c.evidence.weakness,
                            "focus": c.focus,
                            **({"build": s["build"]} if "build" in s else {}),
                            **({"label_model": label["model"]} if label.get("model") else {}),
                        },
                        scores={"label_confidence": label["confidence"]} if "confidence" in label else {},
                    )
                )
        if self.cfg.improve:  # over the training samples (collected data is new and checked already)
            from vlcurate.metabolism.apply import apply_improve

            events += apply_improve(
                plan, samples, folder / "plan", folder / "improve", progress=self.cfg.progress
            )
        return [*samples.values(), *new.values()], events

    # ---- rounds -------------------------------------------------------------------------------
    def run_round(self, rnd: int, base_version: str, base_run: Path | None) -> RoundRecord:
        folder = self.out / f"round-{rnd}"
        rec = _load_round(folder, rnd)
        if rec.status == "failed":  # a re-run retries the step that failed; done steps are kept
            rec.status, rec.error = "running", None
        if rec.status != "running":
            return rec
        rec.base_version = rec.base_version or base_version

        def step(name: str) -> bool:
            return name not in rec.done

        def mark(name: str) -> None:
            rec.done.append(name)
            _save(rec, folder)

        _save(rec, folder)
        if step("base_eval"):
            rec.base_run = str(base_run) if base_run else str(self.evaluate(folder / "base-run"))
            rec.accuracy_before = _accuracies(Path(rec.base_run))
            mark("base_eval")
        assert rec.base_run is not None
        if step("diagnose"):
            train = items_from_rows(self.store.iter_samples(rec.base_version))
            settings = VLMSettings(
                base_url=api_base(self.cfg.endpoint), model=self.cfg.model, api_key=self.cfg.api_key
            )
            diag = diagnose(
                rec.base_run,
                folder / "diag",
                DiagnoseOptions(
                    settings=settings,
                    probe=self.cfg.probe,
                    scorer=self.cfg.scorer,
                    train=train,
                    train_source=f"{self.cfg.store}@{rec.base_version}",
                    progress=self.cfg.progress,
                ),
            )
            rec.diagnosis = str(folder / "diag")
            rec.top_weakness = diag.weaknesses[0].label if diag.weaknesses else None
            mark("diagnose")
        if step("plan"):
            diag = load_diagnosis(folder / "diag")
            try:
                plan = make_plan(
                    diag,
                    folder / "plan",
                    diagnosis_path=str(folder / "diag"),
                    per_weakness=self.cfg.per_weakness,
                    top=self.cfg.top,
                    endpoint=api_base(self.cfg.endpoint),
                    model=self.cfg.model,
                )
            except PlanError as exc:
                rec.status, rec.error = "converged", str(exc)
                mark("plan")
                return rec
            rec.plan, rec.plan_id = str(folder / "plan"), plan.id
            mark("plan")
        plan = load_plan(folder / "plan")
        if step("version"):
            try:
                samples, events = self.apply(plan, rec.base_version, rnd, folder)
            except Exception as exc:  # a collector that fails: the round fails, nothing is written
                rec.status, rec.error = "failed", f"apply: {exc}"
                _save(rec, folder)
                raise LoopError(rec.error) from exc
            info = self.store.commit(
                samples,
                parent=rec.base_version,
                message=f"loop round {rnd}: plan {plan.id}",
                plan_id=plan.id,
                events=events,
            )
            self.store.attach(info.id, "plan", json.loads(plan.model_dump_json()))
            rec.new_version = info.id
            rec.added = sum(1 for e in events if e.op == "collect")
            rec.removed = sum(1 for e in events if e.dropped)
            rec.improved = sum(1 for e in events if e.op == "cot_rewrite")
            mark("apply")
            mark("version")
        assert rec.new_version is not None
        if step("train"):
            try:
                rec.export = str(self.train(rec.new_version, rnd, folder))
            except (LoopError, OSError, ValueError) as exc:
                rec.status, rec.error = "failed", str(exc)
                self.store.attach(
                    rec.new_version,
                    f"train-failed-round-{rnd}",
                    {"accepted": False, "reasons": [f"not validated: {exc}"], "round": rnd},
                )
                _save(rec, folder)
                raise LoopError(str(exc)) from None
            mark("train")
        if step("new_eval"):
            self.evaluate(folder / "new-run")
            rec.new_run = str(folder / "new-run")
            rec.accuracy_after = _accuracies(folder / "new-run")
            mark("new_eval")
        if step("validate"):
            rec.targets = weakness_progress(
                load_diagnosis(folder / "diag"), plan, Path(rec.base_run), folder / "new-run"
            )
            decision = self.validate(
                Path(rec.base_run), folder / "new-run", rec.new_version, rnd, rec.targets
            )
            rec.decision = json.loads(decision.model_dump_json())
            rec.status = "accepted" if decision.accepted else "rejected"
            if (
                decision.accepted
            ):  # `main` follows accepted increments (compare-and-swap: never over another's)
                try:
                    self.store.set_ref("main", rec.new_version, expect=rec.base_version)
                    rec.main_moved = True
                except VersionError as exc:
                    rec.main_moved = False
                    rec.note = f"main not moved: {exc}"
            else:  # put the base model back before the next round
                self.train(rec.base_version, rnd, folder)
            mark("validate")
        return rec

    def validate(
        self, base_run: Path, new_run: Path, vid: str, rnd: int, targets: list[dict[str, Any]]
    ) -> ValidationDecision:
        decision = compare_runs(
            load_run(base_run), load_run(new_run), method=self.cfg.method, alpha=self.cfg.alpha
        )
        if self.cfg.require_gain:
            decision = apply_gain_rule(decision, targets)
        self.store.attach(vid, f"validation-round-{rnd}", json.loads(decision.model_dump_json()))
        return decision

    def run(self) -> LoopSummary:
        self.out.mkdir(parents=True, exist_ok=True)
        base = self.initial_version()
        base_run: Path | None = None
        rounds: list[RoundRecord] = []
        stopped = f"ran {self.cfg.rounds} rounds"
        for rnd in range(1, self.cfg.rounds + 1):
            try:
                rec = self.run_round(rnd, base, base_run)
            except LoopError as exc:
                rounds.append(_load_round(self.out / f"round-{rnd}", rnd))
                stopped = f"round {rnd} failed: {exc}"
                break
            rounds.append(rec)
            write_round_report(rec, self.out / f"round-{rnd}")
            if rec.status == "converged":
                stopped = f"round {rnd}: no weakness left to plan for"
                break
            if rec.status == "accepted" and rec.new_version:
                base, base_run = rec.new_version, Path(rec.new_run) if rec.new_run else None
            else:
                base_run = Path(rec.base_run) if rec.base_run else None
        summary = LoopSummary(
            config=self.cfg.model_dump(mode="json"), rounds=rounds, final_version=base, stopped=stopped
        )
        write_text_atomic(self.out / SUMMARY_FILE, summary.model_dump_json(indent=2))
        write_summary_report(summary, self.out)
        return summary


def apply_gain_rule(decision: ValidationDecision, targets: list[dict[str, Any]]) -> ValidationDecision:
    """`require_gain`: an increment that regresses nothing but gains nothing is rejected too. A gain
    is a planned weakness closed (`weakness_progress`: its slice's interval after lies above the one
    before) or a category (or the overall accuracy) improved beyond its paired-test interval."""
    closed = [f"{t['weakness']} {t['label']}" for t in targets if t.get("closed")]
    improved = [c.category for c in [*decision.categories.values(), decision.overall] if c.improved]
    if closed or improved:
        gains = [f"closed {', '.join(closed)}"] if closed else []
        gains += [f"improved {', '.join(improved)}"] if improved else []
        return decision.model_copy(update={"reasons": [*decision.reasons, f"gain: {'; '.join(gains)}"]})
    why = (
        f"no gain: none of the {len(targets)} planned weaknesses closed and no category improved beyond "
        "its interval (--require-gain)"
    )
    return decision.model_copy(update={"accepted": False, "reasons": [*decision.reasons, why]})


def weakness_progress(diag: Diagnosis, plan: Plan, base_run: Path, new_run: Path) -> list[dict[str, Any]]:
    """Accuracy on the slice of every weakness the plan collected for, before and after (Wilson 95%):
    did the increment close what it was for?"""
    base, new = load_run(base_run).samples, load_run(new_run).samples
    out: list[dict[str, Any]] = []
    for wid in dict.fromkeys(c.evidence.weakness for c in plan.collect):
        w = diag.weakness(wid)
        row: dict[str, Any] = {"weakness": wid, "label": w.label}
        for name, rows in (("before", base), ("after", new)):
            scored = [r for r in rows if r.correct is not None and in_slice(r, w.category, w.attribute)]
            k = sum(1 for r in scored if r.correct)
            lo, hi = wilson(k, len(scored))
            acc = round(k / len(scored), 4) if scored else None
            row[name] = {"n": len(scored), "accuracy": acc, "ci95": [round(lo, 4), round(hi, 4)]}
        row["closed"] = bool(row["after"]["n"] and row["after"]["ci95"][0] > row["before"]["ci95"][1])
        out.append(row)
    return out


def _accuracies(run: Path) -> dict[str, Any]:
    r = load_run(run)
    if r.summary is None:
        return {}
    out = {
        c: {"accuracy": s.accuracy, "ci95": list(s.ci95), "n": s.n} for c, s in r.summary.per_category.items()
    }
    out["overall"] = {
        "accuracy": r.summary.overall.accuracy,
        "ci95": list(r.summary.overall.ci95),
        "n": r.summary.overall.n,
    }
    return out


def write_round_report(rec: RoundRecord, folder: Path) -> None:
    from vlcurate.metabolism.loop_report import round_html

    write_text_atomic(folder / "report.html", round_html(rec, folder))


def write_summary_report(summary: LoopSummary, out: Path) -> None:
    from vlcurate.metabolism.loop_report import summary_html

    write_text_atomic(out / "summary.html", summary_html(summary, out))


def rounds_of(out: Path) -> Sequence[RoundRecord]:
    return [
        RoundRecord.model_validate_json((p / ROUND_FILE).read_bytes())
        for p in sorted(out.glob("round-*"), key=lambda p: int(p.name.split("-")[1]))
        if (p / ROUND_FILE).is_file()
    ]


def top_weakness(diag: Diagnosis) -> str | None:
    return diag.weaknesses[0].label if diag.weaknesses else None
