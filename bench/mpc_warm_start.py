"""Warm starts in receding-horizon control: iterations and time per call of the MPC path
with and without the previous call's solution (shifted by one step) as the start.

    python bench/mpc_warm_start.py [--steps 30] [--batch 32] [--horizon 20] [--path qp]
                                   [--out DIR]

With `--path qp` the same loop runs on the QP path (the problem as a dense QP, DAQP per
element; its warm start is the previous solution as it is: DAQP's working set starts from
the constraints active there).

Closed loop on T7's systems (n = 10, m = 2, |u| ≤ 0.3, A = I + 0.1·randn, so some are
unstable): at each step the layer plans from the current states, the first controls are
applied, and the states move on. The cold and the warm loop see the same states (the
controls agree to the solver's accuracy; their largest difference is reported). Writes
results.md to bench/results/mpc_warm_start (or --out).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tasks import box_lqr  # noqa: E402

from cvxlayer import CvxpyLayer  # noqa: E402

OUT = Path(__file__).parent / "results" / "mpc_warm_start"


def closed_loop(layer, A, Bm, x0, steps: int, warm: bool):
    """Per step: (seconds, mean iterations), and the first controls applied (steps, B, m)."""
    x, info, records, applied = x0, None, [], []
    for _ in range(steps):
        args = {"warm_start": info, "warm_start_shift": 1} if warm and info else {}
        start = time.perf_counter()
        (U,), info = layer(A, Bm, x, solver_args=args, return_status=True)
        records.append((time.perf_counter() - start, float(info.iterations.double().mean())))
        u = U[:, :, 0]
        applied.append(u)
        x = (A @ x.unsqueeze(-1)).squeeze(-1) + (Bm @ u.unsqueeze(-1)).squeeze(-1)
    return records, torch.stack(applied)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--horizon", type=int, default=20)
    parser.add_argument("--path", default="mpc", choices=("mpc", "qp"))
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    task = box_lqr(batch=args.batch, T=args.horizon)
    A, Bm, x0 = task.values
    fast_path = "lqr" if args.path == "mpc" else "qp"
    layer = CvxpyLayer(task.problem, task.parameters, [task.variable], fast_path=fast_path)
    rows, applied = {}, {}
    for warm in (False, True, False, True):  # twice each: the first pass compiles/warms up
        rows[warm], applied[warm] = closed_loop(layer, A, Bm, x0, args.steps, warm)
    diff = float((applied[True] - applied[False]).abs().max())
    lines = [
        f"# Receding-horizon MPC on the {args.path.upper()} path: warm starts (T7 systems, "
        f"horizon {args.horizon}, batch "
        f"{args.batch}, {args.steps} closed-loop steps, {torch.get_num_threads()} threads)",
        "",
        "| start | mean iterations per call | ms per call (median) |",
        "|---|---:|---:|",
    ]
    previous = "previous solution" + (" shifted by one step" if args.path == "mpc" else "")
    for warm, name in ((False, "cold"), (True, previous)):
        its = sum(r[1] for r in rows[warm]) / len(rows[warm])
        ms = sorted(r[0] for r in rows[warm])[len(rows[warm]) // 2] * 1e3
        lines.append(f"| {name} | {its:.1f} | {ms:.1f} |")
    lines += ["", f"Largest difference of the applied controls, cold vs warm: {diff:.1e}."]
    out = Path(args.out or OUT.with_name(OUT.name + ("" if args.path == "mpc" else "_qp")))
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
