"""Train `tiny-synth`, the small CLIP-style dual encoder bundled with vlcurate, on synthetic scenes.

Why: real weights cannot be downloaded where vlcurate is tested, yet scoring, filtering and the
demo should run a real model. This trains one in minutes on CPU, on scenes whose truth is
known, with the CLIP loss plus hard negatives (every image is also scored against its own
colour, count and shape corruptions), and saves it as an open_clip `local-dir:` folder
(`open_clip_config.json` + fp16 `open_clip_model.safetensors`), so it loads through the same
code path as any real open_clip model.

Reproducible: the model init, the scene stream and the corruptions all derive from --seed;
--steps fixes the amount of training (--max-minutes is only a safety cap and stops early).

    .venv/bin/python scripts/train_tiny_synth.py --steps 1100 --max-minutes 14
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from vlcurate.models.tv_compat import ensure_torchvision
from vlcurate.synth.corrupt import corrupt
from vlcurate.synth.scene import scene_from_seed
from vlcurate.synth.scorer_eval import evaluate, make_eval_set
from vlcurate.synth.vocab import IMAGE_SIZE

ensure_torchvision()
import open_clip  # noqa: E402  (needs ensure_torchvision first)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src/vlcurate/models/weights/tiny-synth"
CONTEXT_LENGTH = 40  # the longest synthetic caption is 37 tokens with <sot>/<eot>
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
HARD_NEGATIVE_KINDS = ("wrong_colour", "wrong_count", "wrong_shape")
EVAL_SEED = 987_654  # never used for training (training streams use --seed)

MODEL_CFG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {
        # A list of layers makes open_clip build its ModifiedResNet: a conv stem and four
        # bottleneck stages (16x16 -> 2x2) with attention pooling. Convolutions tell small
        # shapes apart far better than a patch-8 ViT did here (wrong-shape AUC 0.63 with a
        # 3-layer ViT of width 96 after the same 14 minutes; 0.98 with this), and are faster on one
        # CPU core.
        "image_size": IMAGE_SIZE,
        "layers": [1, 1, 1, 1],
        "width": 16,
        "head_width": 32,
    },
    "text_cfg": {
        "context_length": CONTEXT_LENGTH,
        "vocab_size": 49408,  # open_clip's default BPE tokenizer, so get_tokenizer just works
        "width": 64,
        "heads": 4,
        "layers": 2,
        "mlp_ratio": 2.0,
    },
}
PREPROCESS_CFG: dict[str, Any] = {
    "size": IMAGE_SIZE,
    "image_size": IMAGE_SIZE,
    "mean": list(MEAN),
    "std": list(STD),
    "interpolation": "bicubic",
    "resize_mode": "shortest",
}


class SceneBatches(torch.utils.data.IterableDataset):  # type: ignore[type-arg]
    """Batch k holds scenes k*B .. k*B+B-1 of stream `seed`: images, captions, hard negatives."""

    def __init__(self, seed: int, batch_size: int, steps: int) -> None:
        self.seed, self.batch_size, self.steps = seed, batch_size, steps
        self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=CONTEXT_LENGTH)

    @functools.lru_cache(maxsize=200_000)  # noqa: B019 - one instance per process, captions repeat
    def _tokens(self, text: str) -> torch.Tensor:
        return self.tokenizer(text)[0]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for step in range(self.steps):
            images, texts, negs = [], [], []
            for j in range(self.batch_size):
                index = step * self.batch_size + j
                scene = scene_from_seed(self.seed, index)
                rng = np.random.default_rng([self.seed, index, 1])
                images.append(np.asarray(scene.image))
                texts.append(self._tokens(scene.caption_text))
                for kind in HARD_NEGATIVE_KINDS:
                    negs.append(self._tokens(corrupt(kind, scene.caption, scene.layout, rng).text))
            yield {
                "images": torch.from_numpy(np.stack(images)),
                "texts": torch.stack(texts),
                "negatives": torch.stack(negs).view(self.batch_size, len(HARD_NEGATIVE_KINDS), -1),
            }


def to_input(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> normalised float NCHW, identical to the saved preprocess on 64 px images."""
    x = images_u8.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def clip_loss_with_hard_negatives(
    model: torch.nn.Module, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, float]:
    """Symmetric CLIP loss; the image->text side also sees each image's own corrupted captions."""
    b, k, length = batch["negatives"].shape
    img = F.normalize(model.encode_image(to_input(batch["images"])), dim=-1)
    all_tokens = torch.cat([batch["texts"], batch["negatives"].reshape(b * k, length)])
    txt_all = F.normalize(model.encode_text(all_tokens), dim=-1)
    txt, neg = txt_all[:b], txt_all[b:].view(b, k, -1)
    scale = model.logit_scale.exp().clamp(max=100)
    logits = scale * img @ txt.t()
    neg_logits = scale * torch.einsum("bd,bkd->bk", img, neg)
    target = torch.arange(b)
    loss_i = F.cross_entropy(torch.cat([logits, neg_logits], dim=1), target)
    loss_t = F.cross_entropy(logits.t(), target)
    with torch.no_grad():
        hard_acc = (logits.diag().unsqueeze(1) > neg_logits).float().mean().item()
    return (loss_i + loss_t) / 2, hard_acc


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices only; embeddings, norms, biases and the temperature are left alone."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or "ln" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def save_model(model: torch.nn.Module, out: Path, used_tokens: set[int], meta: dict[str, Any]) -> None:
    """Write the open_clip local-dir folder atomically (temp folder, then rename)."""
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    # Rows of tokens never seen in training are untrained noise: zero them so unknown words
    # contribute nothing, and so the (mostly zero) file compresses to ~1 MB in git.
    emb = state["token_embedding.weight"]
    keep = torch.zeros(emb.shape[0], dtype=torch.bool)
    keep[sorted(used_tokens)] = True
    emb[~keep] = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-synth-", dir=out.parent))
    save_file(state, str(tmp / "open_clip_model.safetensors"), metadata={"format": "pt"})
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG, "vlcurate": meta}
    (tmp / "open_clip_config.json").write_text(json.dumps(config, indent=2) + "\n")
    tmp.chmod(0o755)  # mkdtemp makes it private; the weights ship inside the package
    for f in tmp.iterdir():
        f.chmod(0o644)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def load_and_check(out: Path, train_tokenizer: Any, eval_n: int) -> dict[str, float]:
    """Reload through open_clip's `local-dir:` path, check the tokenizer, return AUCs."""
    name = f"local-dir:{out}"
    model, _, preprocess = open_clip.create_model_and_transforms(name)
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    probe = ["two small red circles and a blue star on the left", "an image with four cyan crosses"]
    if not torch.equal(tokenizer(probe), train_tokenizer(probe)):
        raise RuntimeError("the saved config implies a different tokenizer than the one trained with")

    @torch.no_grad()
    def score_pairs(images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        out_scores = []
        for i in range(0, len(images), 256):
            x = torch.stack([preprocess(im) for im in images[i : i + 256]])
            a = F.normalize(model.encode_image(x), dim=-1)
            t = F.normalize(model.encode_text(tokenizer(list(texts[i : i + 256]))), dim=-1)
            out_scores.append((a * t).sum(-1).numpy())
        return np.concatenate(out_scores)

    return evaluate(score_pairs, make_eval_set(eval_n, EVAL_SEED))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1100)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1, help="1 is fastest on a busy 2-core machine")
    ap.add_argument("--workers", type=int, default=0, help="data loader processes (0: in-process)")
    ap.add_argument("--max-minutes", type=float, default=14.0, help="time cap (stops early)")
    ap.add_argument("--eval-n", type=int, default=1000)
    ap.add_argument("--init", type=Path, default=None, help="start from this saved tiny-synth folder")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model = open_clip.model.CLIP(**MODEL_CFG)
    if args.init is not None:  # continue from an earlier run (e.g. a second stage with another --seed)
        from safetensors.torch import load_file

        state = load_file(str(args.init / "open_clip_model.safetensors"))
        model.load_state_dict({k: v.float() for k, v in state.items()})
        print(f"initialised from {args.init}", flush=True)
    n_params = sum(p.numel() for p in model.parameters())
    n_visual = sum(p.numel() for p in model.visual.parameters())
    print(f"tiny-synth: {n_params / 1e6:.2f}M params (image tower {n_visual / 1e6:.2f}M)", flush=True)

    data = SceneBatches(args.seed, args.batch_size, args.steps)
    # On a 2-core machine a loader worker only fights the training threads for the CPU;
    # generating a batch in-process costs ~0.1 s against ~0.5 s for the step itself.
    loader: Iterable[dict[str, torch.Tensor]] = data
    if args.workers > 0:
        loader = torch.utils.data.DataLoader(
            data,
            batch_size=None,
            num_workers=args.workers,
            prefetch_factor=4,
            worker_init_fn=lambda _: torch.set_num_threads(1),
        )
    opt = torch.optim.AdamW(param_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    budget_s = args.max_minutes * 60

    def lr_at(step: int, elapsed: float) -> float:
        """Warmup then cosine to zero over the step budget, or over the time cap if that comes first.

        On an idle machine the steps budget binds and a run is exactly reproducible; on a busy
        shared machine the cosine follows wall time instead, so the model is still annealed
        (not cut off at a high learning rate) when the cap is reached.
        """
        if step < args.warmup:
            return args.lr * (step + 1) / args.warmup
        progress = max((step - args.warmup) / max(1, args.steps - args.warmup), elapsed / budget_s)
        return args.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    used_tokens: set[int] = set()
    start = time.monotonic()
    model.train()
    step = 0
    loss_avg, acc_avg = 0.0, 0.0
    for step, batch in enumerate(loader):
        lr = lr_at(step, time.monotonic() - start)
        for g in opt.param_groups:
            g["lr"] = lr
        used_tokens.update(batch["texts"].unique().tolist())
        used_tokens.update(batch["negatives"].unique().tolist())
        loss, hard_acc = clip_loss_with_hard_negatives(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_avg = 0.95 * loss_avg + 0.05 * loss.item() if step else loss.item()
        acc_avg = 0.95 * acc_avg + 0.05 * hard_acc if step else hard_acc
        elapsed = time.monotonic() - start
        if step % 25 == 0 or step == args.steps - 1:
            print(
                f"step {step:5d}/{args.steps}  loss {loss_avg:.3f}  hard-neg acc {acc_avg:.3f}  "
                f"lr {lr:.2e}  scale {model.logit_scale.exp().item():.1f}  {elapsed / 60:.1f} min",
                flush=True,
            )
        if elapsed > budget_s:
            print(f"time cap reached after {step + 1} steps", flush=True)
            break
    train_minutes = (time.monotonic() - start) / 60
    model.eval()
    meta = {
        "trained_steps": step + 1,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "train_minutes": round(train_minutes, 2),
        "script": "scripts/train_tiny_synth.py",
        "init": str(args.init) if args.init else None,
    }
    save_model(model, args.out, used_tokens, meta)
    size_mb = (args.out / "open_clip_model.safetensors").stat().st_size / 1e6
    print(f"saved {args.out} ({size_mb:.1f} MB) after {step + 1} steps, {train_minutes:.1f} min", flush=True)
    aucs = load_and_check(args.out, data.tokenizer, args.eval_n)
    print(f"ROC AUC on fresh scenes (seed {EVAL_SEED}, n={args.eval_n}):", flush=True)
    for kind, auc in aucs.items():
        print(f"  {kind:13s} {auc:.4f}", flush=True)
    meta["eval_auc"] = {k: round(v, 4) for k, v in aucs.items()}
    config_path = args.out / "open_clip_config.json"
    config = json.loads(config_path.read_text())
    config["vlcurate"] = meta
    config_path.write_text(json.dumps(config, indent=2) + "\n")


if __name__ == "__main__":
    main()
