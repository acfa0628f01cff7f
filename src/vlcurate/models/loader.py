"""`load_scorer(name)`: any scorer by its registry name, through the backend that loads it (open_clip
or transformers). The one entry point the jobs use; the backends never import each other."""

from __future__ import annotations

from vlcurate.models.registry import resolve
from vlcurate.models.scorer import ClipScorer, Precision


def load_scorer(
    name: str,
    *,
    device: str = "auto",
    precision: Precision = "auto",
    allow_download: bool = False,
    cache_dir: str | None = None,
    seed: int = 0,
) -> ClipScorer:
    """Build and load a named scorer; raises WeightsNotFoundError with a how-to when weights are absent."""
    spec = resolve(name)
    if spec.backend == "hf-clip":
        from vlcurate.models.hf_clip import load_hf_clip_scorer

        return load_hf_clip_scorer(
            spec, device=device, precision=precision, allow_download=allow_download, cache_dir=cache_dir
        )
    from vlcurate.models.clip import load_open_clip_scorer

    return load_open_clip_scorer(
        spec,
        device=device,
        precision=precision,
        allow_download=allow_download,
        cache_dir=cache_dir,
        seed=seed,
    )
