"""What an evaluation run is made with (`EvalConfig`), saved as RUN/config.json.

For diagnosis (`vlcurate diagnose`) the same questions can be asked three ways, chosen by
`image_mode`:

- `image` (default): the image and the question, as a benchmark is meant to be run;
- `none`: the question alone, no image (what a model answers from language priors);
- `description`: the question and a text description of the image, no image: the description is
  the model's own answer to `vlm.prompts.DESCRIBE_PROMPT` asked with the image (`description_from=
  "model"`, cached like every request, kept in each sample as `description`), or the benchmark
  item's `description` field (`description_from="bench"`: a true description, so a failure is
  reasoning, not perception). Caption items in this mode are answered by the description itself.

`ids` and `categories` restrict a run to some items (re-asking only the failures of another run);
`prompt_prefix` is put before every question and `system` sent as the system message, for prompt
variants. A run folder keeps one configuration: resuming with a different model, benchmark (path or
content), sampling or mode is refused (`fingerprint`, plus the benchmark file's sha256, kept in
config.json), while endpoint, concurrency, limits and keys may change.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

ImageMode = Literal["image", "none", "description"]
JudgeMode = Literal["fallback", "always"]
# Fields that decide the answers: a run folder refuses to continue with other values.
FINGERPRINT_FIELDS = (
    "model",
    "bench",
    "temperature",
    "seed",
    "max_tokens",
    "image_mode",
    "description_from",
    "prompt_prefix",
    "system",
    "judge_model",
    "cache_tag",
    "judge_mode",
    "caption_threshold",
)


def api_base(url: str) -> str:
    """An endpoint as the client's base URL: `http://host:port` gets `/v1`, a URL with a path is kept."""
    u = url.strip().rstrip("/")
    if not u.startswith(("http://", "https://")):
        raise ValueError(f"endpoint must be an http(s) URL, got {url!r}")
    return u if urlsplit(u).path not in ("", "/") else u + "/v1"


class EvalConfig(BaseModel):
    """One evaluation: which server and model, which benchmark, how to ask, where to write."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str  # base URL of an OpenAI-compatible server (…/v1; http://host:port gets /v1)
    model: str = "tiny-synth"
    bench: str  # benchmark file or folder
    image_root: str | None = None  # relative image paths are under it (default: beside the benchmark)
    out: Path
    repeats: int = Field(1, ge=1, le=100)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    seed: int = 0  # repeat r is asked with seed + r
    concurrency: int = Field(16, ge=1, le=1024)
    limit: int | None = Field(None, ge=1)  # only the first N items
    categories: list[str] | None = None
    ids: list[str] | None = None
    max_tokens: int = Field(256, ge=1)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(6, ge=0)
    api_key: str | None = Field(None, exclude=True)
    cache_dir: Path | None = None
    cache_tag: str | None = (
        None  # the weights behind the model (a checkpoint): other tags' answers not reused
    )
    image_mode: ImageMode = "image"
    description_from: Literal["model", "bench"] = "model"
    prompt_prefix: str = ""
    system: str | None = None
    judge_endpoint: str | None = None
    judge_model: str | None = None
    judge_mode: JudgeMode = "fallback"  # fallback: only replies exact matching could not read or call wrong
    judge_timeout_s: float = Field(30.0, gt=0)
    judge_api_key: str | None = Field(None, exclude=True)
    caption_threshold: float = Field(0.5, ge=0.0, le=1.0)
    retry_errors: bool = True  # a re-run asks again the items whose last answer was a request error

    @field_validator("endpoint", "judge_endpoint")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else api_base(v)

    @property
    def judged(self) -> bool:
        return self.judge_endpoint is not None or self.judge_model is not None

    def fingerprint(self) -> dict[str, Any]:
        data = self.model_dump(mode="json")
        data["bench"] = str(Path(self.bench).resolve())
        return {k: data[k] for k in FINGERPRINT_FIELDS}
