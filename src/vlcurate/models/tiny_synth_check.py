"""Warn when the bundled `tiny-synth` model scores images that are not from the synthetic world.

tiny-synth learned only vlcurate's synthetic scenes: 64x64 pictures of a few coloured shapes on
plain backgrounds. On photographs its scores are noise, yet they look like any other score. The
check is cheap: the original sizes of the first decoded images of a run, which the decoders
report anyway. Every scene of `vlcurate synth pool` is exactly 64x64; a run where fewer than half
of the first images are is not from that world.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

# The side of every synthetic scene, the only images tiny-synth knows (`synth.vocab.IMAGE_SIZE`;
# a test keeps the two equal).
IMAGE_SIZE = 64
SAMPLE = 32  # decoded images looked at before deciding
MIN_SYNTH_SHARE = 0.5


def is_tiny_synth(scorer: Any) -> bool:
    """The bundled tiny-synth model, by name or by its bundled weights folder."""
    from vlcurate.models.registry import TINY_SYNTH_DIR

    if getattr(scorer, "name", None) == "tiny-synth":
        return True
    ref = str(getattr(getattr(scorer, "spec", None), "open_clip_name", "") or "")
    if ref.startswith("local-dir:"):
        try:
            return Path(ref.removeprefix("local-dir:")).resolve() == TINY_SYNTH_DIR.resolve()
        except OSError:
            return False
    return False


def synth_world_warning(n_synth: int, n_seen: int) -> str:
    return (
        f"tiny-synth knows only vlcurate's synthetic {IMAGE_SIZE} px scenes, and these images are not "
        f"from that world ({n_synth} of the first {n_seen} are {IMAGE_SIZE}x{IMAGE_SIZE}): its scores "
        "mean nothing here; score real images with a real CLIP (e.g. --model dfn-b16, see `vlcurate models`)"
    )


class SynthWorldCheck:
    """Fed the original size of each decoded image; says once whether to warn."""

    def __init__(self, active: bool, sample: int = SAMPLE) -> None:
        self.active = active
        self.sample = sample
        self.seen = 0
        self.synth = 0
        self.decided = not active
        self.warning: str | None = None

    @classmethod
    def for_scorer(cls, scorer: Any) -> SynthWorldCheck:
        return cls(is_tiny_synth(scorer))

    def add(self, width: int | None, height: int | None) -> str | None:
        """Count one decoded image; returns the warning when this image settles it."""
        if self.decided:
            return None
        self.seen += 1
        self.synth += int(width == IMAGE_SIZE and height == IMAGE_SIZE)
        return self.finish() if self.seen >= self.sample else None

    def finish(self) -> str | None:
        """Decide with what was seen (no image: nothing to say); returns the warning, once."""
        if self.decided:
            return None
        self.decided = True
        if self.seen and self.synth < MIN_SYNTH_SHARE * self.seen:
            self.warning = synth_world_warning(self.synth, self.seen)
            return self.warning
        return None
