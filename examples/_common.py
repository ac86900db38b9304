"""Shared bits of the examples: where figures go, and the activation-function plot."""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

FIGURES = Path(__file__).parent / "figures"


def save(fig, name: str) -> Path:
    FIGURES.mkdir(exist_ok=True)
    path = FIGURES / f"{name}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    print(f"saved {path}")
    return path


def plot_activation(name, x, y, dy, y_ref, dy_ref):
    """Two panels: the layer's output and derivative (dots) over the closed forms (lines)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, got, ref, title in (
        (axes[0], y, y_ref, f"{name} as an argmin layer"),
        (axes[1], dy, dy_ref, f"derivative of the {name} layer"),
    ):
        ax.plot(x, ref, color="tab:blue", lw=2, label="closed form")
        ax.plot(x[::4], got[::4], "o", color="tab:orange", ms=4, label="CvxpyLayer")
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.grid(alpha=0.3)
    axes[0].legend()
    err = max((y - y_ref).abs().max().item(), (dy - dy_ref).abs().max().item())
    print(f"{name}: max deviation from the closed form (value and derivative) {err:.2e}")
    return fig


def value_and_derivative(layer, x: torch.Tensor, component: int = 0, **call):
    """Batched layer output y(x) and dy[component]/dx[component] for each grid point."""
    x = x.clone().requires_grad_()
    (y,) = layer(x, **call)
    (grad,) = torch.autograd.grad(y[:, component].sum(), x)
    return y.detach(), grad[:, component]


def fit(loss_fn, optimizer, snapshot, iterations: int, on_step=None):
    """Optimizer loop; records `snapshot()` at steps 0, ¼, ½ and the end.

    Returns:
        (snapshots {step: value}, losses per step, seconds).
    """
    marks = {0, iterations // 4, iterations // 2, iterations}
    snapshots, losses = {}, []
    start = time.perf_counter()
    for it in range(iterations + 1):
        if it in marks:
            snapshots[it] = snapshot()
        if it == iterations:
            break
        if on_step is not None:
            on_step(it)
        optimizer.zero_grad()
        loss = loss_fn()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return snapshots, losses, time.perf_counter() - start


def plot_learned_sets(name, title, targets, snapshots, losses, draw, truth, lim, cmap):
    """Left: the true set (`truth(ax)`), the targets, and the learned set at each snapshot
    (`draw(ax, snapshot, color)`); right: the training loss."""
    fig, (ax, ax_loss) = plt.subplots(1, 2, figsize=(10, 4.3))
    truth(ax)
    ax.plot(targets[:, 0], targets[:, 1], "x", color="tab:blue", ms=4)
    colors = cmap(np.linspace(0.35, 1, len(snapshots)))
    for color, (it, snap) in zip(colors, snapshots.items()):
        draw(ax, snap, color)
        ax.plot([], [], color=color, lw=2, label=f"learned, step {it}")
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal", title=title)
    ax.legend(loc="upper left", fontsize=8)
    ax_loss.semilogy(losses)
    ax_loss.set(title="MSE of projections", xlabel="Adam step")
    ax_loss.grid(alpha=0.3)
    return save(fig, name)


def imitate_dynamics(layer, x0, expert, truth, start, lr: float, iterations: int):
    """Fit (A, B) = `start` (leaf tensors, updated in place) by Adam so that the layer's
    (X, U) from x0 match the expert's; `truth` (A*, B*) only measures the model error.

    Returns:
        (imitation losses, ‖A − A*‖ + ‖B − B*‖) per step.
    """
    (X_exp, U_exp), (A_true, B_true), (A, B) = expert, truth, start
    opt = torch.optim.Adam([A, B], lr=lr)
    losses, errors = [], []
    for _ in range(iterations):
        opt.zero_grad()
        X, U = layer(A, B, x0)
        loss = (U - U_exp).square().mean() + (X - X_exp).square().mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        errors.append(((A - A_true).norm() + (B - B_true).norm()).item())
    return losses, errors


def plot_imitation_loss(ax, losses, errors, title: str) -> None:
    """The imitation loss and the model error per Adam step, log scale."""
    ax.semilogy(losses, label="imitation loss (state and control MSE)")
    ax.semilogy(errors, label="‖A − A*‖ + ‖B − B*‖")
    ax.set(xlabel="Adam step", title=title)
    ax.legend()
    ax.grid(alpha=0.3)
