"""MkDocs hooks: the examples gallery and the benchmark plots, generated at build time.

Each example in `examples/run_all.EXAMPLES` gets a page with its docstring, the figure it
draws and its source. A figure that is missing, or older than its example, is drawn by
running the example first: the gallery shows what the code produces, never a pasted image.
Benchmark tables and plots (`bench/results/<name>/results.md`, `.png`) become
`benchmarks/<name>.md` and `.png`, which `benchmarks.md` links to.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FIGURES = EXAMPLES / "figures"
BENCH = ROOT / "bench" / "results"


def _example_names() -> list[str]:
    sys.path.insert(0, str(EXAMPLES))
    return list(importlib.import_module("run_all").EXAMPLES)


def _figure(name: str) -> Path:
    """The example's figure, drawn now if missing or stale."""
    figure = FIGURES / f"{name}.png"
    source = EXAMPLES / f"{name}.py"
    if not figure.exists() or figure.stat().st_mtime < source.stat().st_mtime:
        os.environ.setdefault("MPLBACKEND", "Agg")
        importlib.import_module(name).main()
    if not figure.exists():
        raise FileNotFoundError(f"example {name!r} did not write {figure}")
    return figure


def _page(name: str) -> str:
    source = (EXAMPLES / f"{name}.py").read_text()
    module = importlib.import_module(name)
    doc = (module.__doc__ or name).strip()
    title, _, rest = doc.partition("\n")
    return (
        f"# {title.strip().rstrip('.')}\n\n{rest.strip()}\n\n"
        f"![{name}]({name}.png)\n\n"
        f"Run it with `python examples/{name}.py` (or all of them with `make demo`).\n\n"
        f"```python\n{source}```\n"
    )


def on_files(files, config):
    for name in _example_names():
        figure = _figure(name)
        files.append(File.generated(config, f"examples/{name}.md", content=_page(name)))
        files.append(File.generated(config, f"examples/{name}.png", content=figure.read_bytes()))
    for result in sorted(BENCH.iterdir()):
        for kind in ("md", "png"):
            path = result / f"results.{kind}"
            if path.exists():
                uri = f"benchmarks/{result.name}.{kind}"
                content = path.read_text() if kind == "md" else path.read_bytes()
                files.append(File.generated(config, uri, content=content))
    return files
