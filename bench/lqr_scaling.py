"""T3 scaling: LQR forward+backward time against the horizon T (n=10, m=2, B=128).

    python bench/lqr_scaling.py [--horizons 5,10,25,50,100,200] [--systems ...]

Runs cvxlayer (the LQR fast path), mpc.pytorch and cvxpylayers (MOREAU, and the default
path for short horizons) on the same problems in one process; writes
bench/results/lqr_scaling/results.md and results.png (log-log time against T).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from run import SYSTEMS, measure  # noqa: E402
from tasks import lqr_control  # noqa: E402

OUT = Path(__file__).parent / "results" / "lqr_scaling"
HORIZON_LIMITS = {"cvxpylayers": 25}  # the default path takes minutes beyond this


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--horizons", default="5,10,25,50,100,200")
    parser.add_argument("--systems", default="cvxlayer,mpc.pytorch,cvxpylayers[MOREAU],cvxpylayers")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    rows = []
    for horizon in map(int, args.horizons.split(",")):
        task = lqr_control(batch=args.batch, T=horizon)
        for system in args.systems.split(","):
            if horizon > HORIZON_LIMITS.get(system, horizon):
                continue
            try:
                r = measure(task, SYSTEMS[system](task), args.repeats)
            except Exception as err:  # a failing peer is reported, not fatal
                print(f"T={horizon} {system}: skipped ({type(err).__name__}: {str(err)[:100]})")
                continue
            rows.append(
                {
                    "T": horizon,
                    "system": system,
                    "fwd": r["forward"],
                    "fwd_bwd": r["forward_backward"],
                }
            )
            print(
                f"T={horizon:<4} {system:<22} fwd {r['forward']:8.3f}s  "
                f"fwd+bwd {r['forward_backward']:8.3f}s",
                flush=True,
            )
    write(rows, args)


def write(rows, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    OUT.mkdir(parents=True, exist_ok=True)
    lines = [
        f"# LQR scaling (n=10, m=2, batch {args.batch}, float64, median of up to {args.repeats} "
        f"runs, {torch.get_num_threads()} threads)",
        "",
        "| T | system | forward s | fwd+bwd s |",
        "|---:|---|---:|---:|",
    ]
    lines += [f"| {r['T']} | {r['system']} | {r['fwd']:.3f} | {r['fwd_bwd']:.3f} |" for r in rows]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for system in dict.fromkeys(r["system"] for r in rows):
        pts = [(r["T"], r["fwd_bwd"]) for r in rows if r["system"] == system]
        ax.loglog(*zip(*pts), "o-", label=system)
    ax.set(xlabel="horizon T", ylabel="forward + backward (s)", title="LQR, n=10, m=2, B=128")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(OUT / "results.png", dpi=110)
    print(f"saved {OUT / 'results.png'}")


if __name__ == "__main__":
    main()
