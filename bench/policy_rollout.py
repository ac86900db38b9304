"""The VIX portfolio pattern of cvxpylayers' examples: a trading policy layer called with
diffcp's keys ({"solve_method": "CLARABEL", "n_jobs_forward": 1}) at every step of a
simulated horizon, then one backward through the whole rollout. cvxlayer and cvxpylayers on
the same data, in one process; prints seconds and the ratio.

    python bench/policy_rollout.py [--n 20] [--batch 32] [--steps 20] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import cvxpy as cp
import numpy as np
import torch

from cvxlayer import CvxpyLayer

ARGS = {"solve_method": "CLARABEL", "n_jobs_forward": 1}


def policy(n: int):
    """max μᵀh⁺ − ‖S h⁺‖² s.t. h⁺ = h + u, 1ᵀu + κ‖u‖₁ ≤ 0, h⁺ ≥ −0.2 (limited shorts)."""
    h, S, mu = cp.Parameter(n), cp.Parameter((n, n)), cp.Parameter(n)
    u, h_plus = cp.Variable(n), cp.Variable(n)
    prob = cp.Problem(
        cp.Maximize(mu @ h_plus - cp.sum_squares(S @ h_plus)),
        [h_plus == h + u, cp.sum(u) + 0.001 * cp.norm1(u) <= 0, h_plus >= -0.2],
    )
    return prob, [h, S, mu], [u]


def rollout(layer, n: int, batch: int, steps: int, seed: int = 0) -> float:
    """Seconds for one forward rollout and its backward."""
    rng = np.random.default_rng(seed)
    F = rng.standard_normal((n, 3)) * 0.1
    sigma_half = torch.tensor(np.linalg.cholesky(F @ F.T + np.diag(rng.uniform(0.01, 0.04, n))).T)
    mu = torch.tensor(rng.uniform(0.0, 0.02, n))
    returns = torch.tensor(rng.standard_normal((steps, batch, n))) @ sigma_half + mu
    log_gamma = torch.tensor(np.log(5.0), dtype=torch.float64, requires_grad=True)
    start = time.perf_counter()
    holdings, loss = torch.full((batch, n), 1.0 / n, dtype=torch.float64), 0.0
    for t in range(steps):
        S = torch.exp(0.5 * log_gamma) * sigma_half
        (trade,) = layer(holdings, S.expand(batch, n, n), mu.expand(batch, n), solver_args=ARGS)
        holdings = (holdings + trade) * (1 + returns[t])
        loss = loss - holdings.sum(1).mean()
    loss.backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    prob, params, variables = policy(args.n)
    layers = {"cvxlayer": CvxpyLayer(prob, params, variables)}
    try:
        from cvxpylayers.torch import CvxpyLayer as PeerLayer

        layers["cvxpylayers"] = PeerLayer(prob, params, variables)
    except ImportError:
        print("cvxpylayers is not installed (make bench sets up .venv-bench): skipped")
    times = {name: [] for name in layers}
    for _ in range(args.repeats):  # interleaved: the machine's drift hits both alike
        for name, layer in layers.items():
            times[name].append(rollout(layer, args.n, args.batch, args.steps))
    medians = {name: statistics.median(t) for name, t in times.items()}
    print(f"policy rollout n={args.n} B={args.batch} steps={args.steps}, keys {ARGS}")
    for name, seconds in medians.items():
        ratio = medians.get("cvxpylayers", seconds) / seconds
        print(f"  {name:12s} {seconds:8.3f} s   cvxpylayers / this: {ratio:.2f}x")


if __name__ == "__main__":
    main()
