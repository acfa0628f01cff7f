"""`vlcurate build --platform URL`: labelling verified by the crowd, through the platform's label tasks.

The builder is a client over HTTP (it sits below the server in the layers and never imports it):
it uploads what it labelled with the spec's classes, and as hidden checks the labels it trusts:
its own labels that both of its models agree on, and an expanded dataset's labels (sent as extra
images). Contributors' agents (and people) label the units; the server grades them on the checks,
forms a quorum of independent replicas, pays through the ledger and pauses cheats. The builder
waits (with a deadline and progress), reads the verified labels back, and its ALR becomes the
share of its labels the crowd's verified labels agree with.

Classification sends whole images. Detection and segmentation send every box as a crop, with one
more class, "none of these", so a box on background or on a thing of no class can be rejected;
plain background crops go along as checks whose answer is that class. A box the crowd verifies as
another class or as none goes to the review queue; a mask follows its box.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from vlcurate.base.intervals import wilson
from vlcurate.builder.calibrate import trusted_sample
from vlcurate.builder.collect import PoolImage
from vlcurate.builder.costs import StageLog
from vlcurate.builder.formats import Dataset, write_json_atomic
from vlcurate.builder.label import Label, crop_canvas, open_rgb
from vlcurate.builder.spec import DatasetSpec

API = "/api/v1/label-tasks"
NONE_CLASS = (
    "none of these",
    "Not an object, or an object of none of the other classes: the box is wrong.",
)
CROP_MAX = 768  # pixels: the longest side of a published crop
PLAIN_STD = 6.0  # a window whose channels vary less than this is plain background (a "none" check)


class CrowdError(RuntimeError):
    """The platform refused or could not be reached; the message is the server's detail."""


class CrowdConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(pattern=r"^https?://")
    token: str = Field(min_length=1, description="The platform's operator (admin) token.")
    timeout_s: float = Field(600.0, gt=0, description="How long to wait for verified labels.")
    poll_s: float = Field(1.0, gt=0)
    unit_size: int = Field(16, ge=2, le=1000)
    quorum: int = Field(2, ge=1, le=10)
    check_share: float = Field(0.25, gt=0, le=1, description="Share of each unit that is hidden checks.")
    check_pass_fraction: float = Field(0.75, gt=0, le=1)
    agree_fraction: float = Field(0.8, gt=0, le=1)
    points_per_item: float = Field(1.0, gt=0)
    max_request_bytes: int = Field(
        3_000_000, ge=10_000, description="Images go out in several tasks so no request is larger."
    )
    adopt: bool = Field(
        False,
        description="Take the crowd's verified class where it differs from the builder's label (the "
        "builder's class kept as `corrected_from`), instead of queueing the label for review. A box the "
        "crowd verifies as 'none of these' is still held for review.",
    )


class VerifiedLabel(BaseModel):
    uid: str
    label: int | None
    state: str
    check: bool


class LabelsState(BaseModel):
    """The server's `LabelsOut`, as the builder reads it."""

    task_id: int
    units: int
    units_verified: int
    units_inconclusive: int
    done: bool
    labels: list[VerifiedLabel]


def _detail(resp: httpx.Response) -> str:
    try:
        d = resp.json().get("detail")
    except ValueError:
        d = None
    return str(d) if d else resp.text[:200]


class CrowdClient:
    def __init__(self, cfg: CrowdConfig, client: httpx.Client | None = None) -> None:
        self.cfg = cfg
        self.http = client or httpx.Client(
            base_url=cfg.url.rstrip("/"),
            headers={"Authorization": f"Bearer {cfg.token}"},
            timeout=httpx.Timeout(120.0, connect=10.0),
        )

    def close(self) -> None:
        self.http.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise CrowdError(f"platform {self.cfg.url} unreachable: {type(exc).__name__}: {exc}") from None
        if resp.status_code >= 400:
            raise CrowdError(f"platform {self.cfg.url} answered HTTP {resp.status_code}: {_detail(resp)}")
        return resp.json()

    def ping(self) -> None:
        """Fail early (before any labelling) when the platform cannot be reached."""
        self._call("GET", "/api/v1/tasks")

    def publish(
        self,
        name: str,
        classes: list[tuple[str, str]],
        images: dict[str, bytes],
        checks: dict[str, tuple[int, str]],
    ) -> int:
        """A label task over `images`; `checks` maps uid -> (class index, 'builder' | 'dataset')."""
        body = {
            "name": name,
            "classes": [{"name": n, "description": d[:500]} for n, d in classes],
            "images": [{"uid": u, "image": base64.b64encode(b).decode()} for u, b in images.items()],
            "checks": [{"uid": u, "label": k, "source": src} for u, (k, src) in checks.items()],
            "quorum": self.cfg.quorum,
            "max_replicas": max(self.cfg.quorum + 2, 4),
            "agree_fraction": self.cfg.agree_fraction,
            "check_pass_fraction": self.cfg.check_pass_fraction,
            "unit_size": self.cfg.unit_size,
            "points_per_item": self.cfg.points_per_item,
        }
        return int(self._call("POST", API, json=body)["id"])

    def labels(self, task_id: int) -> LabelsState:
        return LabelsState.model_validate(self._call("GET", f"{API}/{task_id}/labels"))

    def publish_all(
        self,
        name: str,
        classes: list[tuple[str, str]],
        images: dict[str, bytes],
        trusted: dict[str, tuple[int, str]],
        extras: frozenset[str] = frozenset(),
    ) -> tuple[list[int], int]:
        """Publish `images` as one label task or, past `max_request_bytes`, several; each part's
        hidden checks are its `dataset` labels and `extras` (images sent only to be checks), and
        `check_share` of it from the other `builder` ones. Returns the task ids and the number of checks."""
        parts: list[list[str]] = [[]]
        size = 0
        for uid, data in images.items():
            n = len(data) * 4 // 3 + 64
            if parts[-1] and size + n > self.cfg.max_request_bytes:
                parts.append([])
                size = 0
            parts[-1].append(uid)
            size += n
        ids, n_checks = [], 0
        for k, part in enumerate(parts):
            always = {u for u in part if u in trusted and (trusted[u][1] == "dataset" or u in extras)}
            checks = {u: trusted[u] for u in always}
            mine = {u: trusted[u][0] for u in part if u in trusted and u not in always}
            picked = pick_checks(part, mine, len(part), self.cfg.unit_size, self.cfg.check_share, len(checks))
            checks |= {u: (lab, "builder") for u, lab in picked.items()}
            suffix = f"-{k + 1}of{len(parts)}" if len(parts) > 1 else ""
            ids.append(self.publish(f"{name}{suffix}"[:100], classes, {u: images[u] for u in part}, checks))
            n_checks += len(checks)
        return ids, n_checks

    def wait(
        self,
        task_ids: list[int],
        progress: Callable[[str], None],
        sleep: Callable[[float], None] = time.sleep,
    ) -> tuple[LabelsState, bool]:
        """Poll until every unit of the tasks is verified or set aside, or the deadline; returns
        their labels as one state and whether the deadline passed."""
        deadline = time.monotonic() + self.cfg.timeout_s
        last = None
        while True:
            parts = [self.labels(t) for t in task_ids]
            st = LabelsState(
                task_id=task_ids[0],
                units=sum(p.units for p in parts),
                units_verified=sum(p.units_verified for p in parts),
                units_inconclusive=sum(p.units_inconclusive for p in parts),
                done=all(p.done for p in parts),
                labels=[v for p in parts for v in p.labels],
            )
            now = (st.units_verified, st.units_inconclusive)
            if now != last:
                progress(
                    f"{st.units_verified}/{st.units} units verified"
                    + (f", {st.units_inconclusive} set aside" if st.units_inconclusive else "")
                    + f" (label task{'s' if len(task_ids) > 1 else ''} {', '.join(map(str, task_ids))})"
                )
                last = now
            if st.done:
                return st, False
            if time.monotonic() >= deadline:
                return st, True
            sleep(self.cfg.poll_s)


def pick_checks(
    uids: list[str], trusted: dict[str, int], n_total: int, unit_size: int, share: float, have: int = 0
) -> dict[str, int]:
    """Which trusted labels become hidden checks: `share` of every unit, at least one per unit
    (`have` checks are already chosen)."""
    n_units = -(-n_total // unit_size)
    want = max(n_units, round(n_total * share)) - have
    if want <= 0:
        return {}
    ordered = [u for u in uids if u in trusted]
    if len(ordered) <= want:
        return {u: trusted[u] for u in ordered}
    step = len(ordered) / want
    return {ordered[int(k * step)]: trusted[ordered[int(k * step)]] for k in range(want)}


def agreement(builder: dict[str, int], crowd: LabelsState) -> dict[str, Any]:
    """ALR from verified agreement: the share of the builder's labels the crowd's verified labels
    match, with a Wilson interval; items the crowd left unverified are counted apart."""
    verified = {v.uid: v.label for v in crowd.labels if v.state == "verified" and v.label is not None}
    both = [u for u in builder if u in verified]
    k = sum(1 for u in both if verified[u] == builder[u])
    lo, hi = wilson(k, len(both))
    states: dict[str, int] = {}
    for v in crowd.labels:
        if v.uid in builder:
            states[v.state] = states.get(v.state, 0) + 1
    return {
        "alr": k / len(both) if both else None,
        "ci95": [round(lo, 4), round(hi, 4)],
        "checked": len(both),
        "confirmed": k,
        "source": "platform",
        "crowd_states": states,
    }


@dataclass
class Outgoing:
    """What a build publishes: the images, the builder's label of each (class index) and the Label
    a verdict lands on, the trusted answers, and which images are there only to be checks."""

    classes: list[tuple[str, str]]
    images: dict[str, bytes] = field(default_factory=dict)
    mine: dict[str, int] = field(default_factory=dict)
    owners: dict[str, Label] = field(default_factory=dict)
    known: dict[str, tuple[int, str]] = field(default_factory=dict)
    extras: set[str] = field(default_factory=set)


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def background_box(a: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int] | None:
    """A window as large as the image's typical box that touches no box and is plain (every channel
    varies less than PLAIN_STD), so "none of these" is surely its answer; None when there is none."""
    h, w = a.shape[:2]
    sides = sorted(max(b[2] - b[0], b[3] - b[1]) for b in boxes)
    side = max(4, min(sides[len(sides) // 2] if sides else min(h, w) // 4, min(h, w) // 2))
    step = max(1, side // 2)
    for y in range(0, h - side + 1, step):
        for x in range(0, w - side + 1, step):
            win = (x, y, x + side, y + side)
            if any(_overlaps(win, b) for b in boxes):
                continue
            if float(a[y : y + side, x : x + side].reshape(-1, a.shape[2]).std(axis=0).max()) < PLAIN_STD:
                return win
    return None


def _crop(a: np.ndarray, box: tuple[int, int, int, int]) -> bytes:
    """The box centred on a canvas of the image's longer side (at most CROP_MAX pixels, so a
    photo's crops stay small to send): the object at the scale it has in its image, which is how
    the builder's own region labeller saw it; a small object in a large photo comes out larger."""
    return _png(crop_canvas(a, box, min(max(a.shape[:2]), CROP_MAX)))


def _whole_images(
    spec: DatasetSpec, data: dict[str, bytes], labelled: dict[str, list[Label]], trusted: Dataset | None
) -> Outgoing:
    """Classification: each labelled image once; its label is the one to verify."""
    classes = spec.class_names
    out = Outgoing(list(zip(classes, [cl.definition for cl in spec.classes], strict=True)))
    for k, u in enumerate(u for u, labs in labelled.items() if labs):
        i = f"p{k}"  # the server's uid pattern; pool uids are free text
        lab = labelled[u][0]
        out.images[i], out.owners[i], out.mine[i] = data[u], lab, classes.index(lab.cls)
        if lab.verified:
            out.known[i] = (out.mine[i], "builder")
    if trusted is not None:  # an expanded dataset's labels: extra images, each a check
        for j in trusted_sample(trusted, classes, "classify", limit=max(1, len(out.mine) // 4)):
            it = trusted.items[j]
            out.images[f"d{j}"] = it.read()
            out.known[f"d{j}"] = (classes.index(it.anns[0].cls), "dataset")
    return out


def _box_crops(
    spec: DatasetSpec, data: dict[str, bytes], labelled: dict[str, list[Label]], trusted: Dataset | None
) -> Outgoing:
    """Detection and segmentation: every box as a crop, in the spec's classes plus "none of these";
    checks from boxes both of the builder's checks confirmed, the expanded dataset's boxes, and
    plain background crops whose answer is "none"."""
    classes = spec.class_names
    none = len(classes)
    out = Outgoing([*zip(classes, [cl.definition for cl in spec.classes], strict=True), NONE_CLASS])
    n_boxes = sum(1 for labs in labelled.values() for lab in labs if lab.box is not None)
    want_bg = max(1, n_boxes // 8)
    k = 0
    for u, labs in labelled.items():
        boxed = [lab for lab in labs if lab.box is not None]
        if not boxed:
            continue
        try:
            a = np.asarray(open_rgb(data[u]), dtype=np.uint8)
        except Exception:  # unreadable now: nothing to show the crowd, the local check stands
            continue
        for lab in boxed:
            assert lab.box is not None
            i = f"b{k}"
            k += 1
            out.images[i], out.owners[i], out.mine[i] = _crop(a, lab.box), lab, classes.index(lab.cls)
            if lab.verified:
                out.known[i] = (out.mine[i], "builder")
        if len(out.extras) < want_bg:
            bg = background_box(a, [lab.box for lab in boxed if lab.box is not None])
            if bg is not None:
                i = f"g{len(out.extras)}"
                out.images[i], out.known[i] = _crop(a, bg), (none, "builder")
                out.extras.add(i)
    if trusted is not None:  # an expanded dataset's boxes: extra crops, each a check
        for j in trusted_sample(trusted, classes, spec.task, limit=max(1, len(out.mine) // 4)):
            it = trusted.items[j]
            a = np.asarray(open_rgb(it.read()), dtype=np.uint8)
            for m, ann in enumerate(it.anns):
                assert ann.box is not None  # trusted_sample keeps items whose every annotation has a box
                out.images[f"d{j}-{m}"] = _crop(a, ann.box)
                out.known[f"d{j}-{m}"] = (classes.index(ann.cls), "dataset")
    return out


def adopt_crowd_label(lab: Label, cls: str, url: str) -> None:
    """The crowd's verified class replaces the builder's: the label is now the crowd's (model and
    verifier the platform), its old class kept, and its model probabilities dropped so the label-error
    search does not flag it for disagreeing with the model the crowd overruled."""
    lab.corrected_from, lab.cls = lab.cls, cls
    lab.model = lab.verifier = f"platform:{url}"
    lab.verified, lab.probs = True, None


def verify_by_crowd(
    c: CrowdConfig,
    spec: DatasetSpec,
    pool: list[PoolImage],
    labelled: dict[str, list[Label]],
    trusted: tuple[str, Dataset] | None,
    work: Path,
    fingerprint: str,
    progress: Callable[[str, str], None],
    log: StageLog,
) -> dict[str, Any]:
    """Publish the labels as platform label tasks (whole images, or every box as a crop), wait for
    the crowd, and take its verified labels as the second check: a label the crowd's verified label
    contradicts is not confirmed, so it is queued for review, or, with `adopt`, takes the crowd's
    class (a box the crowd calls none of these stays queued)."""
    data = {im.uid: im.data for im in pool}
    ds = trusted[1] if trusted is not None else None
    sent = (_whole_images if spec.task == "classify" else _box_crops)(spec, data, labelled, ds)
    state_file = work / "platform.json"
    client = CrowdClient(c)
    try:
        with log.stage("platform") as st:
            if state_file.is_file():
                task_ids = [int(t) for t in json.loads(state_file.read_text())["task_ids"]]
                progress("platform", f"resumed: waiting on label tasks {task_ids} at {c.url}")
                log.mark_resumed("platform")
            else:
                task_ids, n_checks = client.publish_all(
                    f"build-{fingerprint}-{len(sent.images)}",
                    sent.classes,
                    sent.images,
                    sent.known,
                    frozenset(sent.extras),
                )
                write_json_atomic(state_file, {"task_ids": task_ids, "url": c.url})
                st.add_calls(platform_items_published=len(sent.images), platform_checks=n_checks)
                log.save(work / "costs.json")
                what = f"{len(sent.images)} {'images' if spec.task == 'classify' else 'box crops'}"
                progress("platform", f"label tasks {task_ids}: {what} ({n_checks} hidden checks) at {c.url}")
            state, timed_out = client.wait(task_ids, lambda m: progress("platform", m))
            st.saw = len(sent.owners)
            verdict = {v.uid: v for v in state.labels}
            adopted = 0
            for i, lab in sent.owners.items():
                v = verdict.get(i)
                if v is None or v.state != "verified" or v.label is None:
                    continue
                lab.verified = v.label == sent.mine[i]
                lab.verifier = f"platform:{c.url}"
                lab.verifier_confidence = None
                if not lab.verified and c.adopt and v.label < len(spec.class_names):
                    adopt_crowd_label(lab, spec.class_names[v.label], c.url)
                    adopted += 1
            st.kept = sum(1 for lab in sent.owners.values() if lab.verified)
    finally:
        client.close()
    alr = agreement(sent.mine, state)
    return {
        "alr": alr,
        "adopted": adopted,
        "task_ids": task_ids,
        "url": c.url,
        "units": state.units,
        "units_verified": state.units_verified,
        "units_inconclusive": state.units_inconclusive,
        "timed_out": timed_out,
    }
