"""Captions that get better: sample, score, fuse, rewrite with feedback, and choose with a margin.

`recaption_dataset(input, out, config)` runs over any input `vlcurate score` reads and writes one
Parquet table per input shard (every candidate with its score, origin and round; the chosen caption
and why), with per-shard completion markers, a summary and a before/after histogram.
"""

from vlcurate.recaption.config import RecaptionConfig
from vlcurate.recaption.job import recaption_dataset

__all__ = ["RecaptionConfig", "recaption_dataset"]
