"""The per-shard output table of `vlcurate recaption`, keyed by uid."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from vlcurate.recaption.iterate import PairOutcome

CANDIDATE_TYPE = pa.struct(
    [
        pa.field("text", pa.string()),
        pa.field("score", pa.float32()),
        pa.field("round", pa.int16()),
        pa.field("origin", pa.string()),  # sample | fuse | rewrite
    ]
)
RECAPTION_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("key", pa.string()),
        pa.field("original", pa.string()),
        pa.field("original_score", pa.float32()),
        pa.field("candidates", pa.list_(CANDIDATE_TYPE)),
        pa.field("chosen", pa.string()),
        pa.field("chosen_score", pa.float32()),
        pa.field("chosen_origin", pa.string()),  # original | sample | fuse | rewrite
        pa.field("why", pa.string()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        pa.field("requests", pa.int32()),
    ]
)


def outcomes_table(outcomes: Sequence[PairOutcome], keys: Sequence[str | None]) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {
                "uid": o.uid,
                "key": k,
                "original": o.original,
                "original_score": o.original_score,
                "candidates": [c.as_row() for c in o.candidates],
                "chosen": o.chosen,
                "chosen_score": o.chosen_score,
                "chosen_origin": o.chosen_origin,
                "why": o.why,
                "status": o.status,
                "error": o.error,
                "requests": o.requests,
            }
            for o, k in zip(outcomes, keys, strict=True)
        ],
        schema=RECAPTION_SCHEMA,
    )
