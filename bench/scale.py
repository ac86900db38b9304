"""Scale (issue 10): time and peak memory against problem size and batch size.

Size sweep: a sparse QP family, min cᵀx + ½‖x‖²  s.t.  G x ≤ h with G (m = 2n rows, about
5 nonzeros per row) fixed and c, h batched parameters (B = 4), n = 500 … 5000; cvxlayer's
default, its torch mode with matrix-free CG, and cvxpylayers 1.2.0 (SCS + diffcp).
Batch sweep: the same family at n = 100, B = 128 … 4096, the torch mode (dense Cholesky, so
memory grows with B) without and with `max_batch=256` chunks.

Every configuration runs in its own subprocess, which reports its peak resident memory
(ru_maxrss, including the ~0.4 GB of Python, torch and cvxpy themselves).

    python bench/scale.py [--sizes 500,1000,2000,5000] [--batches 128,512,1024,4096]

Writes bench/results/scale/results.md and results.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).parent / "results" / "scale"
TIMEOUT_S = 600

CHILD = r"""
import json, resource, sys, time
import numpy as np, scipy.sparse as sp, cvxpy as cp, torch
torch.set_num_threads(2)
n, batch, system, max_batch = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
rng = np.random.default_rng(0)
m = 2 * n
G = sp.random(m, n, density=4 / n, random_state=1, format="csr") + sp.eye(m, n)
c, h = cp.Parameter(n), cp.Parameter(m)
x = cp.Variable(n)
prob = cp.Problem(cp.Minimize(c @ x + 0.5 * cp.sum_squares(x)), [G @ x <= h])
start = time.perf_counter()
args = {"eps": 1e-6}
if system == "cvxpylayers":
    from cvxpylayers.torch import CvxpyLayer
    layer = CvxpyLayer(prob, [c, h], [x])
else:
    from cvxlayer import CvxpyLayer
    if system == "cvxlayer":
        layer = CvxpyLayer(prob, [c, h], [x])
    else:  # cvxlayer[torch-cg] / cvxlayer[torch]
        layer = CvxpyLayer(prob, [c, h], [x], mode="torch", fast_path=False)
        args["linsys"] = "cg" if system.endswith("cg]") else "cholesky"
    if max_batch != "none":
        args["max_batch"] = int(max_batch)
build = time.perf_counter() - start
cv = torch.tensor(rng.standard_normal((batch, n)), requires_grad=True)
hv = torch.tensor(rng.uniform(0.5, 1.0, (batch, m)), requires_grad=True)
start = time.perf_counter()
(sol,) = layer(cv, hv, solver_args=args)
fwd = time.perf_counter() - start
sol.sum().backward()
total = time.perf_counter() - start
print(json.dumps({"build": build, "fwd": fwd, "total": total,
                  "rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
                  "x_head": sol[0, :5].tolist()}))
"""


def run(n: int, batch: int, system: str, max_batch: str = "none") -> dict:
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), str(batch), system, max_batch],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"over {TIMEOUT_S} s"}
    if proc.returncode != 0:
        lines = (proc.stderr or "").strip().splitlines()
        return {"error": lines[-1][:80] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,1000,2000,5000")
    parser.add_argument("--batches", default="128,512,1024,4096")
    args = parser.parse_args(argv)
    size_rows, batch_rows = [], []
    for n in map(int, args.sizes.split(",")):
        for system in ("cvxlayer", "cvxlayer[torch-cg]", "cvxpylayers"):
            result = run(n, 4, system)
            size_rows.append((n, system, result))
            print(n, system, result, flush=True)
    for batch in map(int, args.batches.split(",")):
        for max_batch in ("none", "256"):
            result = run(100, batch, "cvxlayer[torch]", max_batch)
            batch_rows.append((batch, max_batch, result))
            print(batch, max_batch, result, flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "results.json").write_text(
        json.dumps({"sizes": size_rows, "batches": batch_rows}, indent=1)
    )
    lines = [
        "# Scale: sparse QP family (m = 2n, ~5 nonzeros per row of G), 2-core CPU",
        "",
        "## Against problem size (B = 4, eps 1e-6)",
        "",
        "| n | system | build s | forward s | fwd+bwd s | peak RSS GB | fwd+bwd ratio |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    ours = {n: r.get("total") for n, s, r in size_rows if s == "cvxlayer"}
    for n, system, r in size_rows:
        if "error" in r:
            lines.append(f"| {n} | {system} | — | — | — | — | {r['error']} |")
            continue
        ratio = r["total"] / ours[n] if ours.get(n) else None
        lines.append(
            f"| {n} | {system} | {_fmt(r['build'])} | {_fmt(r['fwd'])} | {_fmt(r['total'])} "
            f"| {_fmt(r['rss_gb'])} | {_fmt(ratio, 1)}× |"
        )
    lines += [
        "",
        "## Against batch size (n = 100, torch mode with dense Cholesky)",
        "",
        "| B | max_batch | forward s | fwd+bwd s | peak RSS GB |",
        "|---:|---|---:|---:|---:|",
    ]
    for batch, max_batch, r in batch_rows:
        if "error" in r:
            lines.append(f"| {batch} | {max_batch} | — | — | {r['error']} |")
            continue
        lines.append(
            f"| {batch} | {max_batch} | {_fmt(r['fwd'])} | {_fmt(r['total'])} "
            f"| {_fmt(r['rss_gb'])} |"
        )
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    _plot(size_rows, batch_rows)
    print("\n".join(lines))


def _plot(size_rows, batch_rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m, ax_b) = plt.subplots(1, 3, figsize=(15, 4.2))
    for system in dict.fromkeys(s for _, s, _ in size_rows):
        pts = [(n, r) for n, s, r in size_rows if s == system and "error" not in r]
        if pts:
            ax_t.plot([n for n, _ in pts], [r["total"] for _, r in pts], "o-", label=system)
            ax_m.plot([n for n, _ in pts], [r["rss_gb"] for _, r in pts], "o-", label=system)
    for ax, title, unit in ((ax_t, "forward + backward", "s"), (ax_m, "peak memory", "GB")):
        ax.set(xscale="log", yscale="log", xlabel="n (m = 2n)", ylabel=unit, title=title)
        ax.legend()
    for max_batch in ("none", "256"):
        pts = [(b, r) for b, mb, r in batch_rows if mb == max_batch and "error" not in r]
        if pts:
            label = "whole batch" if max_batch == "none" else f"max_batch={max_batch}"
            ax_b.plot([b for b, _ in pts], [r["rss_gb"] for _, r in pts], "o-", label=label)
    ax_b.set(xscale="log", xlabel="batch size B (n = 100)", ylabel="GB", title="peak memory")
    ax_b.legend()
    fig.tight_layout()
    fig.savefig(OUT / "results.png", dpi=120)


if __name__ == "__main__":
    main()
