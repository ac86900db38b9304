"""Shared bits of the examples: where figures go, and the activation-function plot."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
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
