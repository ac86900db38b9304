"""The documentation site builds in strict mode: a broken link, a missing figure or a
docstring mkdocstrings cannot parse fails the suite (and CI)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    api = (tmp_path / "api" / "index.html").read_text()
    for name in ("CvxpyLayer", "solve_qp", "lqr", "lml", "set_backend"):
        assert name in api
    gallery = tmp_path / "examples"
    for page in ("relu", "optnet_qp", "lqr_imitation", "lml_topk", "ellipsoid_projection"):
        assert (gallery / f"{page}.png").stat().st_size > 0
        assert f"{page}.png" in (gallery / page / "index.html").read_text()
    assert (tmp_path / "benchmarks" / "t5.png").exists()
