"""The documentation: the site builds with `mkdocs build --strict` (a broken link or a missing page
fails), the quick-start block runs as written, and the README stays a short first page."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly_with_generated_pages(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    r = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(site)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    operators = (site / "operators" / "index.html").read_text()
    assert 'id="top_fraction"' in operators and 'id="datacomp_basic"' in operators
    api = (site / "api" / "index.html").read_text()
    assert "/api/v1/leases" in api
    assert "Decisions not to undo" in (site / "architecture" / "index.html").read_text()


def _quick_start() -> list[str]:
    text = (ROOT / "docs" / "getting-started.md").read_text()
    block = re.search(r"<!-- quick-start[^>]*-->\s*```bash\n(.*?)```", text, re.S)
    assert block is not None, "docs/getting-started.md lost its quick-start block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_the_quick_start_block_runs_as_written(tmp_path: Path) -> None:
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    for line in _quick_start():
        r = subprocess.run(
            ["bash", "-c", line], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
        )
        assert r.returncode == 0, (line, r.stdout[-2000:], r.stderr[-2000:])
    kept = sum(pq.read_metadata(p).num_rows for p in (tmp_path / "kept").glob("*.parquet"))
    assert kept > 0 and (tmp_path / "subsets" / "top50" / "report.md").exists()
    assert (tmp_path / "operators.json").stat().st_size > 1000


def test_the_readme_is_a_short_first_page_with_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    first_screen = "\n".join(text.splitlines()[:20])
    assert "bash scripts/bootstrap.sh && .venv/bin/vlcurate demo" in first_screen
    assert "bash scripts/bootstrap.sh && .venv/bin/pytest -q" in first_screen
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).exists(), link
