"""One example per command, appended to its `--help`: what a user types first. A test checks that
every command has one, so a new command cannot ship without it."""

from __future__ import annotations

import inspect

import typer

EXAMPLES: dict[str, str] = {
    "score": "vlcurate score 'shards/{00000000..00000099}.tar' --out runs/pool --model dfn-b16",
    "filter": "vlcurate filter runs/pool --top-fraction 0.3 --basic --out subsets/top30",
    "reshard": "vlcurate reshard shards/ --subset subsets/top30/subset.npy --out kept/",
    "demo": "vlcurate demo --out demo-run",
    "serve": "vlcurate serve --db vlcurate.db --port 8000",
    "run": "vlcurate run recipes/datacomp_basic.yaml --input my/train.csv --out runs/basic",
    "ops": "vlcurate ops --format json",
    "recaption": "vlcurate recaption pool/shards --vlm-url http://127.0.0.1:8300/v1 --out runs/recaption",
    "version create": "vlcurate version create instruct/data.json --store vstore -m 'raw data'",
    "version list": "vlcurate version list --store vstore",
    "version show": "vlcurate version show main --store vstore",
    "version log": "vlcurate version log main --store vstore",
    "version diff": "vlcurate version diff main~1 main --store vstore",
    "version lineage": "vlcurate version lineage synth-0-0000001 --store vstore",
    "version export": "vlcurate version export main --store vstore --format llava --out exports/v2",
    "version validate": "vlcurate version validate main --store vs --base-run runs/base --new-run runs/new",
    "diagnose": "vlcurate diagnose runs/eval --out runs/diag --train train/data.json",
    "plan": "vlcurate plan runs/diag --out runs/plan",
    "loop": "vlcurate loop bench/bench.jsonl --store vstore --train train/ --out runs/loop --rounds 2",
    "models list": "vlcurate models list",
    "models download": "vlcurate models download dfn-b16",
    "synth pool": "vlcurate synth pool pool --n 2000 --corrupt-fraction 0.3",
    "synth scenes": "vlcurate synth scenes scenes --n 16",
    "synth instruct": "vlcurate synth instruct instruct --n 500",
    "synth bench": "vlcurate synth bench bench --n 300 --train 100 --focus colour=red",
    "eval": "vlcurate eval http://127.0.0.1:8300/v1 bench/bench.jsonl --out runs/eval --repeats 1",
    "agent run": "vlcurate agent run --server http://127.0.0.1:8000 --token $VLCURATE_TOKEN",
    "agent register": "vlcurate agent register --server http://127.0.0.1:8000 --contributor alice",
    "agent label": "vlcurate agent label --server http://127.0.0.1:8000 --token $VLCURATE_TOKEN",
    "platform add-dataset": "vlcurate platform add-dataset pool1 'pool/shards/*.tar'",
    "platform add-task": "vlcurate platform add-task score-pool1 --dataset pool1",
    "platform add-agent": "vlcurate platform add-agent alice",
    "platform revoke": "vlcurate platform revoke 3",
    "platform unpause": "vlcurate platform unpause 2",
    "platform export": "vlcurate platform export score-pool1 --out runs/pool1-verified",
    "platform audit": "vlcurate platform audit --db vlcurate.db",
    "vlm serve": "vlcurate vlm serve --port 8300 --weakness blind-colour=red --memory train/",
    "agent play": "vlcurate agent play --game g1 --server http://127.0.0.1:8000 --token $VLCURATE_TOKEN",
    "game create": "vlcurate game create g1 --pool main/ --easy-pool easy/ --vlm-url http://127.0.0.1:8300/v1"
    " --vlm-judge tiny-synth@http://127.0.0.1:8300/v1",
    "game list": "vlcurate game list --server http://127.0.0.1:8000",
    "game export": "vlcurate game export g1 --db vlcurate.db --out gap-data",
    "game audit": "vlcurate game audit --db vlcurate.db",
    "game play": "vlcurate game play --game g1 --server http://127.0.0.1:8000 --token $VLCURATE_TOKEN",
    "build": "vlcurate build '200 images each of cats and dogs for detection' --pool photos/ --out pets",
}


def command_paths(app: typer.Typer, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
    """Every command of `app` with its path (`("platform", "export")`) and typer's CommandInfo."""
    out: list[tuple[tuple[str, ...], object]] = []
    for info in app.registered_commands:
        assert info.callback is not None
        name = info.name or info.callback.__name__.replace("_", "-")
        out.append(((*prefix, name), info))
    for group in app.registered_groups:
        sub = group.typer_instance
        assert sub is not None
        out += command_paths(sub, (*prefix, group.name or str(sub.info.name)))
    return out


def add_examples(app: typer.Typer) -> None:
    """Append `Example: ...` to the help of every command that has one in EXAMPLES."""
    for path, info in command_paths(app):
        example = EXAMPLES.get(" ".join(path))
        if example is None:
            continue
        base = info.help or inspect.getdoc(info.callback) or ""  # type: ignore[attr-defined]
        if "Example:" not in base:
            info.help = f"{base.rstrip()}\n\nExample: {example}"  # type: ignore[attr-defined]
