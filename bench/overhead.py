"""Fixed cost of one call on a small problem (issue 20): applications call a layer on one
problem (or a handful) thousands of times, so what a call costs beyond the solve matters.

    python bench/overhead.py [--calls 200] [--batches 1,8] [--sizes 10,50] [--kinds QP,SOCP]
                               [--out bench/results/overhead]

Problems, with n variables and parameters x (n) and M (n × n):
  QP:   min ‖y − x‖²  s.t.  M y ≤ 1
  SOCP: min ‖y − x‖²  s.t.  ‖M y‖₂ ≤ 1
Systems: cvxlayer (its defaults), cvxpylayers 1.2 (default diffcp/SCS) and
cvxpylayers[MOREAU], each timed in this process on the same tensors, their calls
interleaved (a noisy machine's drifts then hit all alike): the median over `--calls`
calls (after warm-up calls) of a forward under no_grad and of a forward+backward.
Writes bench/results/overhead/results.md, results.json and results.png.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import cvxpy as cp
import torch

from cvxlayer import CvxpyLayer

OUT = Path(__file__).parent / "results" / "overhead"
WARMUP = 10


def problem(kind: str, n: int) -> tuple[cp.Problem, list[cp.Parameter], cp.Variable]:
    x, M, y = cp.Parameter(n), cp.Parameter((n, n)), cp.Variable(n)
    constraint = M @ y <= 1 if kind == "QP" else cp.norm(M @ y) <= 1
    return cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [constraint]), [x, M], y


def values(n: int, batch: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(n * 1000 + batch)
    x = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    M = torch.eye(n, dtype=torch.float64) + 0.3 * torch.randn(
        batch, n, n, generator=gen, dtype=torch.float64
    )
    return [x, M]


def build(system: str, kind: str, n: int) -> Callable:
    prob, params, y = problem(kind, n)
    if system.startswith("cvxlayer"):
        eps = {"solver_args": {"eps": 1e-4}} if "eps" in system else {}
        layer = CvxpyLayer(prob, params, [y], **eps)
    else:
        from cvxpylayers.torch import CvxpyLayer as PeerLayer

        layer = PeerLayer(prob, params, [y], solver="MOREAU" if "MOREAU" in system else None)
    return lambda vals: layer(*vals)[0]


def median_seconds(fns: list[Callable[[], object]], calls: int) -> list[float]:
    """Median seconds per call of each of `fns`, timed interleaved (call k of every system,
    then call k + 1, …) so that drifts in the machine's speed hit all systems alike, and in
    an order rotated at each call, so that what one system leaves behind (BLAS or pool
    threads still spinning) slows each of the others alike, not only the one after it."""
    for fn in fns:
        for _ in range(WARMUP):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for k in range(calls):
        for i in range(len(fns)):
            j = (i + k) % len(fns)
            start = time.perf_counter()
            fns[j]()
            times[j].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def phases(run: Callable, vals: list[torch.Tensor]) -> tuple[Callable, Callable]:
    """(forward under no_grad, forward+backward) of one system on `vals`."""
    leaves = [v.clone().requires_grad_() for v in vals]

    def forward():
        with torch.no_grad():
            run(vals)

    def forward_backward():
        run(leaves).sum().backward()

    return forward, forward_backward


# cvxlayer solves to eps 1e-6 by default; diffcp's SCS (cvxpylayers' default) to SCS's 1e-4:
# "cvxlayer[eps=1e-4]" is cvxlayer at the peer's accuracy
SYSTEMS = ("cvxlayer", "cvxlayer[eps=1e-4]", "cvxpylayers", "cvxpylayers[MOREAU]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--sizes", default="10,50")
    parser.add_argument("--kinds", default="QP,SOCP")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    rows = []
    for kind in args.kinds.split(","):
        for n in map(int, args.sizes.split(",")):
            for batch in map(int, args.batches.split(",")):
                vals = values(n, batch)
                row = {"problem": kind, "n": n, "batch": batch}
                runs = {}
                for system in SYSTEMS:
                    try:
                        runs[system] = phases(build(system, kind, n), vals)
                    except ImportError as err:
                        print(f"  {system}: not installed ({err})")
                        row[system] = {"forward": float("nan"), "forward+backward": float("nan")}
                for k, phase in enumerate(("forward", "forward+backward")):
                    spent = median_seconds([fns[k] for fns in runs.values()], args.calls)
                    for system, seconds in zip(runs, spent):
                        row.setdefault(system, {})[phase] = seconds
                rows.append(row)
                print(
                    f"{kind:4s} n={n:3d} B={batch:2d}: "
                    + ", ".join(
                        f"{s} {1e3 * row[s]['forward']:.2f}/{1e3 * row[s]['forward+backward']:.2f}"
                        " ms"
                        for s in SYSTEMS
                    ),
                    flush=True,
                )
    write(rows, args)


def write(rows: list[dict], args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    lines = [
        f"# Fixed cost of a call on small problems (ms per call, median of {args.calls} calls)",
        "",
        "Forward (no grad) / forward+backward; ratio = peer's time ÷ cvxlayer's (> 1: "
        "cvxlayer is faster). QP: min ‖y − x‖² s.t. M y ≤ 1; SOCP: the same with ‖M y‖ ≤ 1. "
        "cvxlayer solves to eps 1e-6 by default, cvxpylayers (diffcp's SCS) to SCS's default "
        "1e-4: the column \"at 1e-4\" is cvxlayer with `solver_args={'eps': 1e-4}` and its "
        "ratio to cvxpylayers.",
        "",
        "| problem | n | B | cvxlayer | cvxpylayers | ratio | cvxlayer at 1e-4 | ratio "
        "| cvxpylayers[MOREAU] | ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cell(t):
        return f"{1e3 * t['forward']:.2f} / {1e3 * t['forward+backward']:.2f}"

    def ratio(slow, fast):
        return " / ".join(f"{slow[p] / fast[p]:.1f}×" for p in ("forward", "forward+backward"))

    for r in rows:
        ours, loose = r["cvxlayer"], r["cvxlayer[eps=1e-4]"]
        peer, moreau = r["cvxpylayers"], r["cvxpylayers[MOREAU]"]
        cells = [r["problem"], str(r["n"]), str(r["batch"]), cell(ours), cell(peer)]
        cells += [ratio(peer, ours), cell(loose), ratio(peer, loose)]
        cells += [cell(moreau), ratio(moreau, ours)]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    plot(rows, out)
    print("\n".join(lines))


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    labels = [f"{r['problem']} n={r['n']} B={r['batch']}" for r in rows]
    for ax, phase in zip(axes, ("forward", "forward+backward")):
        width = 0.8 / len(SYSTEMS)
        for k, system in enumerate(SYSTEMS):
            heights = [1e3 * r[system][phase] for r in rows]
            shift = (k - (len(SYSTEMS) - 1) / 2) * width
            ax.bar([i + shift for i in range(len(rows))], heights, width, label=system)
        ax.set_xticks(range(len(rows)), labels, rotation=60, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_title(phase)
    axes[0].set_ylabel("ms per call")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=120)


if __name__ == "__main__":
    main()
