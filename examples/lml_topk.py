"""Top-k learning with the LML layer (thesis ch. 6).

A multi-label task where each example has 3 of 20 labels but only one is observed. A linear
model's scores go through the LML projection p = Π_{L_k}(scores) (k = 5), written in cvxpy;
cvxlayer recognizes the problem and solves it by a root-find on its scalar dual, with an
analytic backward. Training maximizes log p of the observed label; the top-5 recall of all
true labels improves although only one label per example is seen.
"""

import cvxpy as cp
import matplotlib.pyplot as plt
import torch
from _common import save

from cvxlayer import CvxpyLayer


def lml_layer(d: int, k: int) -> CvxpyLayer:
    x, y = cp.Parameter(d), cp.Variable(d)
    objective = -x @ y - cp.sum(cp.entr(y) + cp.entr(1 - y))
    return CvxpyLayer(cp.Problem(cp.Minimize(objective), [cp.sum(y) == k]), [x], [y])


def recall_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    top = torch.zeros_like(labels).scatter(1, scores.topk(k, dim=1).indices, 1.0)
    return float((top * labels).sum() / labels.sum())


def main(iterations: int = 200, points: int = 256, d: int = 20, k: int = 5):
    torch.manual_seed(0)  # the model's initialization
    gen = torch.Generator().manual_seed(0)
    features = 10
    W_true = torch.randn(features, d, generator=gen, dtype=torch.float64)
    X = torch.randn(points, features, generator=gen, dtype=torch.float64)
    labels = torch.zeros(points, d, dtype=torch.float64)
    labels.scatter_(1, (X @ W_true).topk(3, dim=1).indices, 1.0)  # 3 true labels each
    observed = torch.multinomial(labels, 1, generator=gen).squeeze(1)  # one seen label

    layer = lml_layer(d, k)
    print(layer)
    model = torch.nn.Linear(features, d, dtype=torch.float64)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses, recalls = [], []
    for _ in range(iterations):
        opt.zero_grad()
        scores = model(X)
        (p,) = layer(scores)
        loss = -torch.log(p.gather(1, observed[:, None]).clamp(min=1e-12)).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        recalls.append(recall_at_k(scores.detach(), labels, k))
    print(
        f"lml top-{k}: loss {losses[0]:.3f} -> {losses[-1]:.3f}, recall of all true labels "
        f"{recalls[0]:.2f} -> {recalls[-1]:.2f} in {iterations} Adam steps"
    )
    fig, (ax_loss, ax_recall) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(losses)
    ax_loss.set(title="−log p(observed label), p = LML(scores)", xlabel="Adam step")
    ax_recall.plot(recalls, color="tab:green")
    ax_recall.set(title=f"top-{k} recall of the 3 true labels", xlabel="Adam step", ylim=(0, 1))
    for ax in (ax_loss, ax_recall):
        ax.grid(alpha=0.3)
    return save(fig, "lml_topk")


if __name__ == "__main__":
    main()
