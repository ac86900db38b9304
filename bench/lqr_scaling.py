"""LQR (T3) or box-constrained LQR (T7) forward+backward time against the horizon T
(n=10, m=2).

    python bench/lqr_scaling.py [--task T3|T7] [--horizons 5,10,25,50,100,200]
                                [--systems ...] [--batch 128] [--out DIR]

Runs cvxlayer (the LQR or MPC fast path), mpc.pytorch and cvxpylayers (MOREAU, and the
default path for short horizons) on the same problems in one process; writes results.md
and results.png (log-log time against T) to bench/results/lqr_scaling (T3) or
bench/results/mpc_scaling (T7), or --out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import SYSTEMS, measure  # noqa: E402
from tasks import box_lqr, lqr_control  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# task ↦ (its constructor, results folder, plot title)
TASKS = {
    "T3": (lqr_control, "lqr_scaling", "LQR"),
    "T7": (box_lqr, "mpc_scaling", "LQR, |u| ≤ 0.3"),
}
HORIZON_LIMITS = {"cvxpylayers": 25}  # the default path takes minutes beyond this


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizons", default="5,10,25,50,100,200")
    parser.add_argument("--systems", default="cvxlayer,mpc.pytorch,cvxpylayers[MOREAU],cvxpylayers")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--task", choices=sorted(TASKS), default="T3")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    make = TASKS[args.task][0]
    rows = []
    for horizon in map(int, args.horizons.split(",")):
        task = make(batch=args.batch, T=horizon)
        reference = None  # the first system's controls: deviations are from them
        for system in args.systems.split(","):
            if horizon > HORIZON_LIMITS.get(system, horizon):
                continue
            try:
                r = measure(task, SYSTEMS[system](task), args.repeats)
            except Exception as err:  # a failing peer is reported, not fatal
                print(f"T={horizon} {system}: skipped ({type(err).__name__}: {str(err)[:100]})")
                continue
            if reference is None:
                reference = r["solution"]
            rows.append(
                {
                    "T": horizon,
                    "system": system,
                    "fwd": r["forward"],
                    "fwd_bwd": r["forward_backward"],
                    "deviation": float((r["solution"] - reference).abs().max()),
                }
            )
            print(
                f"T={horizon:<4} {system:<22} fwd {r['forward']:8.3f}s  "
                f"fwd+bwd {r['forward_backward']:8.3f}s  deviation {rows[-1]['deviation']:.1e}",
                flush=True,
            )
    write(rows, args)


def write(rows, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, folder, title = TASKS[args.task]
    out = Path(args.out) if args.out else RESULTS / folder
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# {args.task} scaling: {title} (n=10, m=2, batch {args.batch}, float64, median of up "
        f"to {args.repeats} runs, {torch.get_num_threads()} threads)",
        "",
        "Deviation: max |u − u_first system| over the batch (NaN: the system's answer had NaN).",
        "",
        "| T | system | forward s | fwd+bwd s | deviation |",
        "|---:|---|---:|---:|---:|",
    ]
    lines += [
        f"| {r['T']} | {r['system']} | {r['fwd']:.3f} | {r['fwd_bwd']:.3f} | {r['deviation']:.1e} |"
        for r in rows
    ]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for system in dict.fromkeys(r["system"] for r in rows):
        pts = [(r["T"], r["fwd_bwd"]) for r in rows if r["system"] == system]
        ax.loglog(*zip(*pts), "o-", label=system)
    ax.set(
        xlabel="horizon T",
        ylabel="forward + backward (s)",
        title=f"{title}, n=10, m=2, B={args.batch}",
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "results.png", dpi=110)
    print(f"saved {out / 'results.png'}")


if __name__ == "__main__":
    main()
