"""Benchmark cvxlayer against its peers on the tasks of design.md §3, in one process.

    python bench/run.py [--tasks T1,T2,T5-soc,T5-exp,T5-psd] [--batch 128] [--repeats 3]
                        [--device cuda] [--systems cvxlayer,cvxlayer[torch],...]

On a GPU: `--device cuda` puts the parameters there (the default mode then runs the torch
solver with cvxlayer_cuda's kernels; "cvxlayer[torch-refs]" is the same without kernels).

For each task and system: median forward seconds (no grad), median forward+backward seconds
(loss = ⟨w, x*⟩), the ratio of each system's time to the base system's (default "cvxlayer":
the layer's defaults, fast paths included; "cvxlayer[mode]" is a generic mode with fast
paths off), and the max deviation of each system's solution from the base's. Writes
bench/results/results.md, results.json and results.png. Peers that are not installed are
skipped with a note.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tasks import TASKS, Task  # noqa: E402

import cvxlayer_cuda  # noqa: E402
from cvxlayer import CvxpyLayer  # noqa: E402

RESULTS = Path(__file__).parent / "results"
EPS = 1e-6

Runner = Callable[[list[torch.Tensor]], torch.Tensor]


def cvxlayer_system(
    mode: str, fast_path: bool = False, kernels: str | None = None, **args
) -> Callable[[Task], Runner]:
    """cvxlayer in `mode`; `kernels` ("torch"/"triton") forces cvxlayer_cuda's backend."""

    def build(task: Task) -> Runner:
        layer = CvxpyLayer(
            task.problem, task.parameters, [task.variable], mode=mode, fast_path=fast_path
        )

        def run(vals):
            before = cvxlayer_cuda.get_backend()
            cvxlayer_cuda.set_backend(kernels or before)
            try:
                return layer(*vals, solver_args={"eps": EPS, **args})[0]
            finally:
                cvxlayer_cuda.set_backend(before)

        return run

    return build


def cvxpylayers_system(solver: str | None, **extra) -> Callable[[Task], Runner]:
    """cvxpylayers with `solver` (None: diffcp), and `extra` solver_args (diffcp's keys)."""

    def build(task: Task) -> Runner:
        from cvxpylayers.torch import CvxpyLayer as PeerLayer

        layer = PeerLayer(task.problem, task.parameters, [task.variable], solver=solver)
        args = {"eps_abs": EPS, "eps_rel": EPS} if solver is None and not extra else {}
        return lambda vals: layer(*vals, solver_args={**args, **extra})[0]

    return build


def qpth_system(task: Task) -> Runner:
    if task.qpth_args is None:
        raise NotImplementedError("qpth applies to QPs only")
    from qpth.qp import QPFunction, QPSolvers

    def run(vals):
        Q, p, G, h, A, b = task.qpth_args(vals)
        fn = QPFunction(verbose=-1, eps=EPS, maxIter=50, solver=QPSolvers.PDIPM_BATCHED)
        return fn(Q, p, G, h, A, b)

    return run


def proxsuite_system(task: Task) -> Runner:
    """proxsuite's QPLayer (ICLR'24; proxsuite==0.8.0): QPFunction(Q, p, A, b, G, l, u) with
    l = −∞ for one-sided inequalities, on qpth's form of the task."""
    if task.qpth_args is None:
        raise NotImplementedError("proxsuite's QPLayer applies to QPs only")
    from proxsuite.torch.qplayer import QPFunction

    def run(vals):
        Q, p, G, h, A, b = task.qpth_args(vals)
        lower = torch.full_like(h, -1e20)
        return QPFunction(eps=EPS, maxIter=1000)(Q, p, A, b, G, lower, h)[0]

    return run


def osqp_system(task: Task) -> Runner:
    """osqp's torch layer (osqp==1.1.3): OSQP(P_idx, P_shape, A_idx, A_shape) on the dense
    pattern, with l ≤ [G; A] x ≤ u."""
    if task.qpth_args is None:
        raise NotImplementedError("osqp's layer applies to QPs only")
    from osqp.nn.torch import OSQP

    def run(vals):
        Q, p, G, h, A, b = task.qpth_args(vals)
        batch, n = p.shape
        C = torch.cat([G.expand(batch, *G.shape[-2:]), A.reshape(-1, n).expand(batch, -1, n)], 1)
        lower = torch.cat([torch.full_like(h.expand(batch, -1), -1e20), b.expand(batch, -1)], 1)
        upper = torch.cat([h.expand(batch, -1), b.expand(batch, -1)], 1)
        Q = Q.expand(batch, n, n)
        P_idx = torch.nonzero(torch.ones(n, n)).T  # dense patterns
        A_idx = torch.nonzero(torch.ones(C.shape[1:])).T
        layer = OSQP((P_idx[0].numpy(), P_idx[1].numpy()), (n, n),
                     (A_idx[0].numpy(), A_idx[1].numpy()), tuple(C.shape[1:]),
                     eps_abs=EPS, eps_rel=EPS)  # fmt: skip
        P_val = Q[:, P_idx[0], P_idx[1]]
        A_val = C[:, A_idx[0], A_idx[1]]
        return layer(P_val, p, A_val, lower, upper)

    return run


def mpc_system(task: Task) -> Runner:
    """mpc.pytorch's LQR (time-major), on the same problem: T + 1 stages, the last one with a
    control of cost ½‖u‖² that the cvxpy form does not have (it comes out 0); with box-DDP
    on the controls' bounds for T7."""
    if "T" not in task.extras:
        raise NotImplementedError("mpc.pytorch applies to LQR tasks only")
    from mpc import mpc as mpc_lib
    from mpc.mpc import LinDx, QuadCost

    n, m, T = task.extras["n"], task.extras["m"], task.extras["T"]

    def run(vals):
        A, B, x0 = vals
        batch = x0.shape[0]
        C = torch.eye(n + m, dtype=x0.dtype).expand(T + 1, batch, n + m, n + m)
        c = torch.zeros(T + 1, batch, n + m, dtype=x0.dtype)
        F = torch.cat([A, B], 2).unsqueeze(0).expand(T, batch, n, n + m)
        box = {}
        if "u_max" in task.extras:  # box-DDP (T7): its own iterations on the bounds
            bound = torch.full((T + 1, batch, m), task.extras["u_max"], dtype=x0.dtype)
            box = {"u_lower": -bound, "u_upper": bound, "lqr_iter": 20}
        ctrl = mpc_lib.MPC(
            n, m, T + 1, n_batch=batch, verbose=-1, exit_unconverged=False,
            **{"lqr_iter": 1, **box},
        )
        _, u, _ = ctrl(x0, QuadCost(C, c), LinDx(F))
        return u[:T].permute(1, 2, 0)  # (B, m, T), like the cvxpy variable U

    return run


def bisection_system(task: Task) -> Runner:
    """A plain-torch LML reference: bisection on the dual (60 halvings of a bracket that holds
    the root), analytic backward through an autograd.Function."""
    if "k" not in task.extras:
        raise NotImplementedError("the LML reference applies to LML tasks only")
    k = float(task.extras["k"])

    class Bisection(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            d = x.shape[1]
            logit = torch.log(torch.tensor(k / (d - k), dtype=x.dtype))
            lo, hi = logit - x.amax(1), logit - x.amin(1)
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                above = torch.sigmoid(x + mid[:, None]).sum(1) > k
                lo, hi = torch.where(above, lo, mid), torch.where(above, mid, hi)
            y = torch.sigmoid(x + (0.5 * (lo + hi))[:, None])
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            s = y * (1 - y)
            return s * g - s * (s * g).sum(1, keepdim=True) / s.sum(1, keepdim=True)

    return lambda vals: Bisection.apply(vals[0])


SYSTEMS: dict[str, Callable[[Task], Runner]] = {
    "cvxlayer": cvxlayer_system("auto", fast_path=True),  # what users get by default
    "cvxlayer[ipm]": cvxlayer_system("ipm"),
    "cvxlayer[torch]": cvxlayer_system("torch"),
    # the torch mode with cvxlayer_cuda's kernels off (compare with the above on CUDA)
    "cvxlayer[torch-refs]": cvxlayer_system("torch", kernels="torch"),
    "cvxlayer[scs]": cvxlayer_system("scs"),
    "cvxlayer[clarabel]": cvxlayer_system("clarabel"),
    "cvxlayer[scs+lsqr]": cvxlayer_system("scs", backward="lsqr"),
    # native SCS set up once per thread where the batch shares A and P (opt-in)
    "cvxlayer[reuse_setup]": cvxlayer_system("auto", fast_path=True, reuse_setup=True),
    "cvxpylayers": cvxpylayers_system(None),
    "cvxpylayers[MOREAU]": cvxpylayers_system("MOREAU"),
    # diffcp with Clarabel as its forward (the VIX portfolio example's setting)
    "cvxpylayers[CLARABEL]": cvxpylayers_system(None, solve_method="CLARABEL"),
    "qpth": qpth_system,
    "proxsuite": proxsuite_system,
    "osqp": osqp_system,
    "mpc.pytorch": mpc_system,
    "lml-bisection": bisection_system,
}


SLOW_SECONDS = 5.0  # a run slower than this is not repeated


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, int]:
    """Median wall time of `repeats` runs (one run if it takes over SLOW_SECONDS), and the
    number of runs."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        if times[-1] > SLOW_SECONDS:
            break
    return statistics.median(times), len(times)


def measure(task: Task, runner: Runner, repeats: int) -> dict:
    weights = torch.randn(
        task.values[0].shape[0],
        *task.variable.shape,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(0),
    ).to(task.values[0].device)

    def forward():
        with torch.no_grad():
            return runner(task.values)

    def forward_backward():
        leaves = [v.clone().requires_grad_() for v in task.values]
        (runner(leaves) * weights).sum().backward()

    start = time.perf_counter()
    solution = forward()
    first = time.perf_counter() - start
    fwd, runs = (first, 1) if first > SLOW_SECONDS else _time(forward, repeats)
    if first <= SLOW_SECONDS:
        forward_backward()  # warm-up: one-time costs of the first backward are not timed
    fwd_bwd, runs_bwd = _time(forward_backward, repeats)
    return {
        "forward": fwd,
        "forward_backward": fwd_bwd,
        "runs": min(runs, runs_bwd),
        "solution": solution.detach().reshape(solution.shape[0], -1).cpu(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="T5-soc,T5-exp,T5-psd,T1,T2")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument(
        "--device", default="cpu", help="where the parameter tensors live (e.g. cuda)"
    )
    parser.add_argument(
        "--base", default="cvxlayer", help="system the ratios refer to (the defaults)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())

    rows, notes = [], []
    for task_name in args.tasks.split(","):
        task = TASKS[task_name](batch=args.batch)
        task.values = [v.to(args.device) for v in task.values]
        print(f"== {task.name}: {task.description}", flush=True)
        results = {}
        for system in args.systems.split(","):
            peer = system.split("[")[0]
            if (
                peer not in ("cvxlayer",)
                and peer not in task.peers
                and system != "cvxpylayers[MOREAU]"
            ):
                continue
            try:
                runner = SYSTEMS[system](task)
                results[system] = measure(task, runner, args.repeats)
            except Exception as err:  # a missing or failing peer is reported, not fatal
                notes.append(f"{task.name} / {system}: skipped ({type(err).__name__}: {err})")
                print(f"   {system}: skipped ({type(err).__name__}: {str(err)[:120]})")
                continue
            r = results[system]
            print(
                f"   {system:<22} fwd {r['forward']:8.3f}s  fwd+bwd {r['forward_backward']:8.3f}s",
                flush=True,
            )
        base = results.get(args.base)
        for system, r in results.items():
            dev = (
                float("nan")
                if base is None
                else float((r["solution"] - base["solution"]).abs().max())
            )
            rows.append(
                {
                    "task": task.name,
                    "description": task.description,
                    "system": system,
                    "forward_s": r["forward"],
                    "forward_backward_s": r["forward_backward"],
                    "forward_ratio": r["forward"] / base["forward"] if base else float("nan"),
                    "forward_backward_ratio": r["forward_backward"] / base["forward_backward"]
                    if base
                    else float("nan"),
                    "backward_s": r["forward_backward"] - r["forward"],
                    "backward_ratio": (r["forward_backward"] - r["forward"])
                    / max(base["forward_backward"] - base["forward"], 1e-9)
                    if base
                    else float("nan"),
                    "max_deviation": dev,
                    "runs": r["runs"],
                }
            )
    write(rows, notes, Path(args.out), args)


def write(rows: list[dict], notes: list[str], out: Path, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"rows": rows, "notes": notes}, indent=2))
    lines = [
        f"# Benchmarks (batch {args.batch}, device {args.device}, float64, eps {EPS:g}, "
        f"median of up to {args.repeats} runs, a run over {SLOW_SECONDS:g} s not repeated; "
        f"{torch.get_num_threads()} threads)",
        "",
        f"Ratio = the system's time / {args.base}'s time (> 1: {args.base} is faster); "
        "backward = fwd+bwd − fwd. "
        f"Deviation = max |x − x_{args.base}|.",
        "",
        "| task | system | forward s | fwd+bwd s | backward s | fwd ratio | fwd+bwd ratio "
        "| backward ratio | deviation | runs |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['task']} ({r['description']}) | {r['system']} | {r['forward_s']:.3f} | "
            f"{r['forward_backward_s']:.3f} | {r['backward_s']:.3f} | {r['forward_ratio']:.1f}× | "
            f"{r['forward_backward_ratio']:.1f}× | {r['backward_ratio']:.1f}× | "
            f"{r['max_deviation']:.1e} | {r['runs']} |"
        )
    if notes:
        lines += ["", "Skipped:"] + [f"- {n}" for n in notes]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, out / "results.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in rows))
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    width = 0.8 / max(1, len(systems))
    for ax, key, title in (
        (axes[0], "forward_s", "forward"),
        (axes[1], "forward_backward_s", "forward + backward"),
    ):
        for k, system in enumerate(systems):
            xs, ys = [], []
            for i, task in enumerate(tasks):
                for r in rows:
                    if r["task"] == task and r["system"] == system:
                        xs.append(i + k * width)
                        ys.append(r[key])
            ax.bar(xs, ys, width, label=system)
        ax.set_yscale("log")
        ax.set_xticks([i + width * (len(systems) - 1) / 2 for i in range(len(tasks))], tasks)
        ax.set_title(f"{title} (seconds, log scale)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
