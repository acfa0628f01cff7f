"""A contributor's agent for label tasks (`vlcurate build --platform`): lease a unit of images,
put each in one of the task's classes with the agent's own model (zero-shot), submit the labels.

Hidden checks, quorum, reputation and pay are the server's business, exactly as for scoring; the
agent only answers. `zero_shot` turns any CLIP-style scorer into the answering function; tests and
people may pass any other `Answer` (a person's choices, or an attacker's junk).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vlcurate import __version__
from vlcurate.agents.client import ConflictError, PausedError, PlatformClient
from vlcurate.server import schemas

Answer = Callable[[list[bytes | None], list[schemas.LabelClass]], list[int | None]]
LABEL_KIND = "label"


def class_prompts(classes: Sequence[schemas.LabelClass]) -> list[str]:
    return [f"a {c.name}." for c in classes]


def zero_shot(scorer: Any) -> Answer:
    """Answer with the class whose prompt is nearest the image (None for an undecodable image)."""
    from vlcurate.base.images import decode_image

    size = int(scorer.preprocessing.image_size)
    cache: dict[tuple[str, ...], np.ndarray] = {}

    def answer(images: list[bytes | None], classes: list[schemas.LabelClass]) -> list[int | None]:
        prompts = tuple(class_prompts(classes))
        if prompts not in cache:
            cache[prompts] = scorer.encode_texts(list(prompts)).cpu().numpy()
        arrays, where = [], []
        for i, data in enumerate(images):
            dec = decode_image(data, size) if data else None
            if dec is not None and dec.array is not None:
                arrays.append(dec.array)
                where.append(i)
        out: list[int | None] = [None] * len(images)
        if arrays:
            emb = scorer.encode_images(np.stack(arrays)).cpu().numpy()
            for i, k in zip(where, (emb @ cache[prompts].T).argmax(axis=1), strict=True):
                out[i] = int(k)
        return out

    return answer


@dataclass
class LabelRunSummary:
    units: int = 0
    items: int = 0
    states: dict[str, int] = field(default_factory=dict)
    points: float = 0.0
    stopped: str = ""


class LabelAgent:
    """Work label tasks until none has a unit for this agent (or `stop()`, or `max_units`)."""

    def __init__(
        self,
        client: PlatformClient,
        answer: Answer,
        *,
        model: str = "unknown",
        version: str = f"vlcurate-label/{__version__}",
        max_units: int | None = None,
        idle_polls: int = 0,
        poll_seconds: float = 0.5,
    ) -> None:
        self.client, self.answer = client, answer
        self.model, self.version = model, version
        self.max_units, self.idle_polls, self.poll_seconds = max_units, idle_polls, poll_seconds
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def label_task_ids(self) -> list[int]:
        return [t.id for t in self.client.tasks() if t.kind == LABEL_KIND and t.state == "active"]

    def _next_lease(self) -> schemas.Lease | None:
        for task_id in self.label_task_ids():
            lease = self.client.lease(task_id)
            if lease is not None:
                return lease
        return None

    def run(self) -> LabelRunSummary:
        out = LabelRunSummary()
        idle = 0
        while not self._stop.is_set():
            if self.max_units is not None and out.units >= self.max_units:
                out.stopped = "max units"
                break
            try:
                lease = self._next_lease()
            except PausedError as exc:
                out.stopped = f"paused: {exc.reason}"
                break
            if lease is None:
                idle += 1
                if idle > self.idle_polls:
                    out.stopped = "no work"
                    break
                self._stop.wait(self.poll_seconds)
                continue
            idle = 0
            try:
                got = self.work(lease)
            except PausedError as exc:
                out.stopped = f"paused: {exc.reason}"
                break
            except ConflictError:
                continue  # the lease ended under us: lease another
            out.units += 1
            out.items += len(lease.items)
            out.states[got.state] = out.states.get(got.state, 0) + 1
            out.points += got.points_credited
        return out

    def work(self, lease: schemas.Lease) -> schemas.SubmissionOut:
        """Answer one leased unit and submit it."""
        classes = lease.task.classes or []
        images: list[bytes | None] = []
        for item in lease.items:
            try:
                images.append(self.client.image(item.image_url))
            except ConflictError:
                raise
            except Exception:
                images.append(None)
        labels = self.answer(images, classes)
        results = [
            schemas.ItemResult(item_id=item.item_id, label=lab)
            if lab is not None
            else schemas.ItemResult(item_id=item.item_id, status="decode_error")
            for item, lab in zip(lease.items, labels, strict=True)
        ]
        body = schemas.SubmissionIn(
            idempotency_key=f"label-{uuid.uuid4().hex}",
            model_fingerprint=self.model[:64],
            agent_version=self.version[:64],
            results=results,
        )
        return self.client.submit(lease.lease_id, body)
