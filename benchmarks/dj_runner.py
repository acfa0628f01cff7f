"""Run one Data-Juicer recipe and time it; executed by the Data-Juicer venv's python, not ours.

`datajuicer_compare.py` starts this in a fresh process of `.bench/dj-venv/bin/python` with a JSON
job: the JSONL dataset, the export path, the recipe's `process` list and `np`. It writes one JSON
object to the file `DJC_RESULT` names (not stdout, which Data-Juicer redirects into its log):
seconds from process start to imports done, the model's load seconds, the executor's run seconds,
the kept uids, and the similarity Data-Juicer computed for every pair it scored.

Work-arounds applied here (none edits Data-Juicer's installed files):
* torchvision from PyPI is a CUDA build whose compiled ops do not load against CPU torch, and
  `import torchvision` (which transformers does) then fails; vlcurate's `tv_compat` shim (loaded by
  file path, so this venv needs no vlcurate) defines the two op schemas first.
* Hugging Face hub offline mode, so that nothing is fetched: the model is a local folder.
* Data-Juicer loads the CLIP model lazily on the first sample; the filter module's `get_model` is
  wrapped to time that first call, so model load can be told apart from processing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

T_START = time.time()


def _install_tv_shim() -> None:
    path = Path(__file__).resolve().parents[1] / "src" / "vlcurate" / "models" / "tv_compat.py"
    spec = importlib.util.spec_from_file_location("_vlc_tv_compat", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # keep it alive: its Library object holds the op schemas
    spec.loader.exec_module(mod)
    mod.ensure_torchvision()


def main() -> None:
    job: dict[str, Any] = json.loads(Path(sys.argv[1]).read_text())
    t0 = float(os.environ.get("DJC_T0", T_START))  # set by the parent just before starting us
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    _install_tv_shim()
    import torch

    threads = int(job.get("torch_threads", os.cpu_count() or 1))
    torch.set_num_threads(threads)
    import yaml
    from data_juicer.config import init_configs
    from data_juicer.core import DefaultExecutor
    from data_juicer.ops.filter import image_text_similarity_filter as itsf

    # Model load seconds per process (np > 1 forks workers that each load the model): the first
    # get_model call of a process is the load; later calls hit Data-Juicer's model cache.
    loads_dir = Path(job["work_dir"]) / "model_loads"
    loads_dir.mkdir(parents=True, exist_ok=True)
    inner = itsf.get_model
    loaded: set[int] = set()

    def timed_get_model(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        if os.getpid() not in loaded:
            loaded.add(os.getpid())
            torch.set_num_threads(threads)  # a forked worker: keep cores / np threads
            (loads_dir / f"{os.getpid()}.txt").write_text(repr(time.perf_counter() - t))
        return out

    itsf.get_model = timed_get_model

    # Every pair's similarity, also for pairs the filter drops (the export holds only kept rows):
    # one JSON line per scored sample, to a file per process since `np` > 1 forks workers.
    scores_dir = Path(job["work_dir"]) / "scores"
    scores_dir.mkdir(parents=True, exist_ok=True)
    compute = itsf.ImageTextSimilarityFilter.compute_stats_single
    sinks: dict[int, Any] = {}

    def recording_compute(self: Any, sample: Any, *args: Any, **kwargs: Any) -> Any:
        out = compute(self, sample, *args, **kwargs)
        sink = sinks.get(os.getpid())
        if sink is None:
            sink = sinks[os.getpid()] = open(scores_dir / f"{os.getpid()}.jsonl", "a", buffering=1)  # noqa: SIM115
        sim = out["__dj__stats__"].get("image_text_similarity")
        sink.write(json.dumps({"uid": out["uid"], "score": float(sim[0]) if len(sim) else None}) + "\n")
        return out

    itsf.ImageTextSimilarityFilter.compute_stats_single = recording_compute
    imports_done = time.time()
    work = Path(job["work_dir"])
    work.mkdir(parents=True, exist_ok=True)
    config = {
        "project_name": "vlcurate-compare",
        "dataset_path": job["dataset"],
        "export_path": job["export"],
        "np": int(job["np"]),
        "text_keys": "text",
        "image_key": "images",
        "open_tracer": False,
        "use_cache": False,
        "work_dir": str(work),
        "keep_stats_in_res_ds": True,
        "process": job["process"],
    }
    cfg_path = work / "recipe.yaml"
    cfg_path.write_text(yaml.safe_dump(config, sort_keys=False))
    cfg = init_configs(args=["--config", str(cfg_path)])
    executor = DefaultExecutor(cfg)
    ready = time.time()
    executor.run()
    done = time.time()
    with open(job["export"]) as fh:
        kept = [json.loads(line)["uid"] for line in fh]
    scores: dict[str, float | None] = {}
    for path in sorted(scores_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            scores[row["uid"]] = row["score"]
    out = {
        "startup_s": imports_done - t0,
        "executor_init_s": ready - imports_done,
        "run_s": done - ready,
        # workers load in parallel, so the longest load is what the run waited for
        "model_load_s": max((float(p.read_text()) for p in loads_dir.glob("*.txt")), default=0.0),
        "model_loads": len(list(loads_dir.glob("*.txt"))),
        "kept": kept,
        "scores": scores,
        "torch_threads": torch.get_num_threads(),
        "versions": {
            "data_juicer": __import__("data_juicer").__version__,
            "transformers": __import__("transformers").__version__,
            "torch": torch.__version__,
        },
    }
    Path(os.environ["DJC_RESULT"]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
