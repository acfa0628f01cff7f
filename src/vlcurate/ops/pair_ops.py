"""The foundation's scorer as an operator: CLIP/DFN cosine similarity of each image and caption."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from vlcurate.ops.base import Operator, OpParams, live_rows, not_computed, set_column
from vlcurate.ops.fingerprint import model_identity
from vlcurate.ops.registry import register


class ClipScoreParams(OpParams):
    model: str = Field(default="dfn-b16", description="A scorer from `vlcurate models` (tiny-synth offline).")
    column: str = Field(default="clip_score", description="Column to write the score to.")
    device: str = Field(default="auto", description="auto | cpu | cuda[:N].")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    batch_size: int = Field(default=64, ge=1, le=4096)
    allow_download: bool = Field(default=False, description="Fetch missing weights from the hub.")
    embeddings: bool = Field(
        default=False, description="Also keep image_embedding and text_embedding (float16) for later steps."
    )


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """Silence library log lines while a model loads (open_clip logs a failed download at ERROR
    before raising): the step's own error, one line with how to get the weights, says it all."""
    before = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(before)


def embedding_array(emb: np.ndarray) -> pa.FixedSizeListArray:
    """An (n, d) float array as a float16 fixed-size-list column (NaN rows for unscored pairs)."""
    _n, d = emb.shape
    return pa.FixedSizeListArray.from_arrays(pa.array(emb.astype(np.float16).reshape(-1), pa.float16()), d)


def embeddings_of(batch: pa.Table, column: str) -> np.ndarray:
    """The (n, d) float32 array held in an embedding column."""
    col = batch.column(column).combine_chunks()
    d = col.type.list_size
    return np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, d)


@register
class ClipScore(Operator):
    """Score every pair still kept in [-1, 1] with a CLIP-style model; unscorable pairs get NaN and a
    status, and pairs an earlier step dropped are not scored (`not scored: dropped by STEP`)."""

    name = "clip_score"
    kind = "map"
    Params = ClipScoreParams
    requires = ("uid", "text", "image")
    uses_model = True

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self._scorer: Any = None
        self._synth_check: Any = None

    def provides(self) -> tuple[str, ...]:
        p = self.params
        assert isinstance(p, ClipScoreParams)
        extra = ("image_embedding", "text_embedding") if p.embeddings else ()
        return (p.column, f"{p.column}_status", *extra)

    def stat_columns(self) -> tuple[str, ...]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def resources(self) -> dict[str, Any]:
        return {"model": model_identity(self.params.model)}  # type: ignore[attr-defined]

    def setup(self) -> None:
        from vlcurate.models.loader import load_scorer

        p = self.params
        assert isinstance(p, ClipScoreParams)
        if self._scorer is None:
            with quiet_loading():
                self._scorer = load_scorer(
                    p.model, device=p.device, precision=p.precision, allow_download=p.allow_download
                )

    def process(self, batch: pa.Table) -> pa.Table:
        from vlcurate.score.memory import score_and_embed

        p = self.params
        assert isinstance(p, ClipScoreParams)
        self.setup()
        n = batch.num_rows
        live = live_rows(self, batch)
        rows = np.flatnonzero(live)
        images, texts = batch.column("image").to_pylist(), batch.column("text").to_pylist()
        dim = self._scorer.embed_dim
        image_emb = np.full((n, dim), np.nan, dtype=np.float32)
        text_emb = np.full((n, dim), np.nan, dtype=np.float32)
        scores = np.full(n, np.nan, dtype=np.float32)
        status = not_computed(batch, ~live)
        if len(rows):
            results, img, txt = score_and_embed(
                self._scorer,
                [images[i] for i in rows],
                [texts[i] for i in rows],
                batch_size=p.batch_size,
            )
            image_emb[rows], text_emb[rows] = img, txt
            scores[rows] = [np.nan if r.score is None else r.score for r in results]
            self._warn_off_world(results)
            for i, r in zip(rows, results, strict=True):
                status[i] = r.status
        batch = set_column(batch, p.column, pa.array(scores, pa.float32()))
        batch = set_column(batch, f"{p.column}_status", pa.array(status, pa.string()))
        if p.embeddings:  # for semantic_dedup, image_cluster_filter, linear_head
            batch = set_column(batch, "image_embedding", embedding_array(image_emb))
            batch = set_column(batch, "text_embedding", embedding_array(text_emb))
        return batch

    def _warn_off_world(self, results: list[Any]) -> None:
        """tiny-synth on images that are not from the synthetic world: one warning line per worker
        (as `vlcurate score` gives it), from the sizes the decoder reported."""
        from vlcurate.models.tiny_synth_check import SynthWorldCheck

        if self._synth_check is None:
            self._synth_check = SynthWorldCheck.for_scorer(self._scorer)
        for r in results:
            if r.status == "ok":
                message = self._synth_check.add(r.width, r.height)
                if message:
                    print(f"warning: {self.name}: {message}", file=sys.stderr, flush=True)
