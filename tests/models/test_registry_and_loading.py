"""Models by name: the registry, offline loading, clear errors, and scores as cosines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.models.clip import weights_available
from vlcurate.models.loader import load_scorer
from vlcurate.models.registry import UnknownModelError, fixed_specs, resolve
from vlcurate.models.scorer import WeightsNotFoundError

runner = CliRunner()


def test_registry_has_the_named_models() -> None:
    names = {s.name for s in fixed_specs()}
    assert {"tiny-synth", "dfn-b16", "openai-b32", "openai-l14", "datacomp-l14"} <= names
    assert resolve("dfn-b16").open_clip_name == "hf-hub:apple/DFN2B-CLIP-ViT-B-16"
    assert resolve("openai-b32").pretrained == "openai"
    assert resolve("datacomp-l14").pretrained == "datacomp_xl_s13b_b90k"
    assert resolve("random:ViT-B-32").random_init
    spec = resolve("open_clip:ViT-B-32:/ckpt/epoch_32.pt")
    assert (spec.open_clip_name, spec.pretrained) == ("ViT-B-32", "/ckpt/epoch_32.pt")


def test_unknown_names_are_rejected_with_the_known_ones() -> None:
    with pytest.raises(UnknownModelError, match="Known names: tiny-synth"):
        resolve("clip-xxl")
    with pytest.raises(UnknownModelError):
        resolve("random:")
    with pytest.raises(UnknownModelError, match="open_clip:ARCH:PRETRAINED"):
        resolve("open_clip:ViT-B-32")


def test_missing_weights_never_download_and_say_how(tmp_path: Path) -> None:
    for name, repo in (("dfn-b16", "apple/DFN2B-CLIP-ViT-B-16"), ("datacomp-l14", "laion/CLIP-ViT-L-14")):
        with pytest.raises(WeightsNotFoundError) as err:
            load_scorer(name, cache_dir=str(tmp_path))
        assert repo in str(err.value) and "--allow-download" in str(err.value)
    with pytest.raises(WeightsNotFoundError, match="does not exist"):
        load_scorer(f"open_clip:ViT-B-32:{tmp_path / 'nope.pt'}")
    assert weights_available(resolve("dfn-b16"), cache_dir=str(tmp_path)) is False
    assert weights_available(resolve("random:ViT-B-32")) is True


def test_local_dir_and_plain_folder_load_the_same_model(tiny_model_dir: Path) -> None:
    a = load_scorer(f"local-dir:{tiny_model_dir}", precision="fp32")
    b = load_scorer(str(tiny_model_dir), precision="fp32")
    assert a.fingerprint == b.fingerprint
    assert a.preprocessing.image_size == 32 and a.preprocessing.mean == (0.5, 0.5, 0.5)


def test_scores_are_cosines_in_range(tiny_model_dir: Path) -> None:
    s = load_scorer(f"local-dir:{tiny_model_dir}", precision="fp32")
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    texts = ["a red circle", "two blue squares", "", "a cat"]
    scores = s.score(imgs, texts)
    ie, te = s.encode_images(imgs), s.encode_texts(texts)
    manual = torch.nn.functional.cosine_similarity(ie, te).numpy()
    assert scores.dtype == np.float32 and np.allclose(scores, manual, atol=1e-6)
    assert np.all(np.abs(scores) <= 1.0)
    with pytest.raises(ValueError, match="uint8"):
        s.encode_images(imgs.astype(np.float32))


def test_fp16_on_cpu_is_refused(tiny_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="fp16"):
        load_scorer(f"local-dir:{tiny_model_dir}", precision="fp16", device="cpu")


def test_models_command_lists_and_marks_availability() -> None:
    r = runner.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert r.exit_code == 0, r.output
    for name in ("tiny-synth", "dfn-b16", "openai-b32", "openai-l14", "datacomp-l14", "random:ARCH"):
        assert name in r.output
    line = next(x for x in r.output.splitlines() if "tiny-synth" in x)
    assert "yes" in line
    line = next(x for x in r.output.splitlines() if "dfn-b16" in x)
    assert "no" in line


def test_tv_compat_lets_open_clip_import() -> None:
    from vlcurate.models.tv_compat import ensure_torchvision

    ensure_torchvision()
    import open_clip
    import torchvision.transforms  # noqa: F401

    assert hasattr(open_clip, "create_model_and_transforms")


@pytest.mark.parametrize("name", ["tiny-synth", "random:ViT-B-32"])
def test_trimmed_text_encoding_equals_open_clip(name: str) -> None:
    """Skipping the padded tail gives the same embeddings as open_clip's full-context encode_text."""
    from vlcurate.models.text_trim import can_trim

    s = load_scorer(name, precision="fp32")
    assert can_trim(s.model)
    texts = ["a red circle", "two small blue squares on the left and a green star at the bottom", "x"]
    tokens = s.tokenize(texts)
    with torch.inference_mode():
        full = torch.nn.functional.normalize(s.model.encode_text(tokens).float(), dim=-1)
    trimmed = s.encode_tokens(tokens)
    assert torch.allclose(full, trimmed, atol=1e-5)


def test_fingerprint_names_the_checkpoint_not_the_precision(tiny_model_dir: Path) -> None:
    fp32 = load_scorer(str(tiny_model_dir), precision="fp32")
    bf16 = load_scorer(str(tiny_model_dir), precision="bf16")
    assert (
        bf16.precision == "bf16"
        and next(bf16.model.parameters()).dtype != next(fp32.model.parameters()).dtype
    )
    assert bf16.fingerprint == fp32.fingerprint  # a task pins weights; agents may run them in any precision
    other = load_scorer("random:ViT-B-32", precision="fp32")
    assert other.fingerprint != fp32.fingerprint
