"""Published cvxpylayers applications, run as they are written: policies trained through
rollouts stay finite, the QP path solves their degenerate instances, and failed elements never
reach the gradient."""

import dataclasses

import cvxpy as cp
import numpy as np
import pytest
import torch

from cvxlayer import CvxpyLayer
from cvxlayer.solvers.base import Status
from cvxlayer.solvers.ipm import InteriorPoint

# the supply-chain policy of cvxpylayers' examples: 4 nodes, 2 suppliers, 2 retailers, 8 links
N, K, C, M = 4, 2, 2, 8
A_IN = np.array([[1, 0, 0, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0, 0, 0], [0, 0, 1, 0, 0, 1, 0, 0],
                 [0, 0, 0, 1, 1, 0, 0, 0]])  # fmt: skip
A_OUT = np.array([[0, 0, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 0, 0, 0], [0, 0, 0, 0, 0, 0, 1, 0],
                  [0, 0, 0, 0, 0, 1, 0, 1]])  # fmt: skip
H_MAX, U_MAX = 3.0, 2.0
TAU, PRICE = 0.05 * np.ones((M - K - C, 1)), 1.3 * np.ones((K, 1))

# states (x, P½ column-major, q) on which the QP path's interior point used to stall (the
# storage h is ~0, so A_out u ≤ h pins flows to zero: a degenerate QP with a singular Q)
DEGENERATE_STATES = [  # x = (h, p, d): storage h ≈ 0 in all but a node or two
    [
        0.24478320551495591,
        0.048074974942428184,
        0.4601568658175669,
        0.5916588088246866,
        0.8889802600698263,
        1.6815288826655814,
        1.6396687863719717,
        1.4743264350614356,
    ],  # noqa: E501
    [
        4.3408610039818996e-11,
        -2.62467915457254e-10,
        0.12548796984772426,
        0.1673702107340726,
        1.0617709595307976,
        1.0380790049662125,
        0.8111281829382402,
        1.271693184976973,
    ],  # noqa: E501
    [
        1.6290483744513598e-11,
        -1.3556899939073634e-10,
        1.1421225076801989e-11,
        -1.1517356512946719e-10,
        0.9175287299455396,
        1.0579884929027596,
        1.6681716364667147,
        1.2905540519263057,
    ],  # noqa: E501
]
# the trained policy's P½ (column-major) and q at which those states were met
DEGENERATE_POLICY = [
    1.0569574058812259,
    0.04620620614624477,
    0.02398353092923143,
    -0.0008083892622686929,
    0.045884969501910296,
    1.0329209943104511,
    0.008414063972921755,
    -0.024384189098218982,
    0.026465878055452842,
    0.009923620379220972,
    1.002374583434226,
    -0.045353724466186275,
    0.0011489391332532958,
    -0.0236025689839207,
    -0.04304876869600121,
    0.9019303245547259,
    0.15996115625751986,
    0.1502523089486893,
    -0.14146505910911192,
    -0.1687484060495397,
]  # noqa: E501
DEGENERATE = [state + DEGENERATE_POLICY for state in DEGENERATE_STATES]


def _supply_chain_policy(**kwargs):
    P_sqrt, q, x = cp.Parameter((N, N)), cp.Parameter((N, 1)), cp.Parameter((N + K + C, 1))
    h, p, d = x[:N], x[N : N + K], x[N + K :]
    u, h_next = cp.Variable((M, 1)), cp.Variable((N, 1))
    cost = cp.vstack([p, TAU, -PRICE]).T @ u + cp.sum_squares(P_sqrt @ h_next) + q.T @ h_next
    constraints = [
        h_next == h + (A_IN - A_OUT) @ u,
        h_next <= H_MAX,
        u >= 0,
        u <= U_MAX,
        A_OUT @ u <= h,
        u[[6, 7]] <= d,
    ]
    return CvxpyLayer(cp.Problem(cp.Minimize(cost), constraints), [x, P_sqrt, q], [u], **kwargs)


def _split(theta):
    theta = torch.tensor(theta, dtype=torch.float64)
    x, p_sqrt, q = theta[:, :8], theta[:, 8:24], theta[:, 24:]
    return x.unsqueeze(-1), p_sqrt.reshape(-1, N, N).transpose(1, 2), q.unsqueeze(-1)


def _supply_chain_cost(u, x, P_sqrt, q):
    """The policy's objective at u (the flows determine h_next)."""
    h, p = x[:N, 0], x[N : N + K, 0]
    h_next = h + (A_IN - A_OUT) @ u
    linear = np.concatenate([p, TAU[:, 0], -PRICE[:, 0]]) @ u
    return linear + np.sum((P_sqrt @ h_next) ** 2) + q[:, 0] @ h_next


def test_degenerate_supply_chain_states_are_solved_on_the_qp_path():
    layer = _supply_chain_policy(fast_path="qp")
    args = _split(DEGENERATE)
    (u,), info = layer(*args, return_status=True, solver_args={"acceleration_lookback": 0})
    assert info.mode == "qp" and all(s.ok for s in info.status)
    # the QP is degenerate (its solution need not be unique): compare optimal values with
    # Clarabel's, and feasibility, to the tolerance both meet (eps = 1e-6 scaled, ~1e-5)
    x, P_sqrt, q = (a.numpy() for a in args)
    for i, u_i in enumerate(u.numpy()[:, :, 0]):
        ref = cp.Variable(M)
        h, d = x[i, :N, 0], x[i, N + K :, 0]
        h_next = h + (A_IN - A_OUT) @ ref
        cons = [h_next <= H_MAX, ref >= 0, ref <= U_MAX, A_OUT @ ref <= h, ref[[6, 7]] <= d]
        linear = np.concatenate([x[i, N : N + K, 0], TAU[:, 0], -PRICE[:, 0]]) @ ref
        objective = linear + cp.sum_squares(P_sqrt[i] @ h_next) + q[i, :, 0] @ h_next
        value = cp.Problem(cp.Minimize(objective), cons).solve(solver=cp.CLARABEL)
        assert _supply_chain_cost(u_i, x[i], P_sqrt[i], q[i]) <= value + 1e-5
        assert (u_i >= -1e-6).all() and (u_i <= U_MAX + 1e-6).all()
        assert (A_OUT @ u_i <= h + 1e-6).all() and (u_i[[6, 7]] <= d + 1e-6).all()


def test_supply_chain_policy_trains_to_finite_parameters():
    """SGD with a large step on P½ and q through short rollouts (the setting in which P½
    used to turn NaN): every step's parameters and gradients are finite."""
    layer = _supply_chain_policy()
    gen = torch.Generator().manual_seed(0)
    dynamics = torch.tensor(np.vstack([A_IN - A_OUT, np.zeros((K + C, M))]))
    P_sqrt = torch.eye(N, dtype=torch.float64, requires_grad=True)
    q = torch.zeros(N, 1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([P_sqrt, q], lr=2.0)
    B = 8

    def noise():  # log-normal prices and demands
        return torch.exp(0.2 * torch.randn(B, K + C, 1, generator=gen, dtype=torch.float64))

    for _ in range(24):
        opt.zero_grad()
        x = torch.cat([H_MAX * torch.rand(B, N, 1, generator=gen, dtype=torch.float64), noise()], 1)
        cost = 0.0
        for _ in range(3):
            (u,) = layer(x, P_sqrt.expand(B, N, N), q.expand(B, N, 1))
            prices = torch.cat([x[:, N : N + K], torch.tensor(TAU).expand(B, -1, -1),
                                -torch.tensor(PRICE).expand(B, -1, -1)], 1)  # fmt: skip
            x = torch.cat([x[:, :N], torch.zeros(B, K + C, 1, dtype=torch.float64)], 1)
            x = (
                x
                + dynamics @ u
                + torch.cat([torch.zeros(B, N, 1, dtype=torch.float64), noise()], 1)
            )
            cost = (
                cost
                + ((prices * u).sum((1, 2)) + (0.01 * x[:, :N] * (1 + x[:, :N])).sum((1, 2))).mean()
            )
        cost.backward()
        # finite, and not the 1e16 of a singular Jacobian's LU solve (~1 here at most)
        assert torch.isfinite(P_sqrt.grad).all() and torch.isfinite(q.grad).all()
        assert max(P_sqrt.grad.abs().max(), q.grad.abs().max()) < 1e3
        opt.step()
    assert torch.isfinite(P_sqrt).all() and torch.isfinite(q).all()


def test_markowitz_policy_trains_to_finite_parameters():
    """A trading policy max μᵀh⁺ − ‖S h⁺‖² s.t. h⁺ = h + u, 1ᵀu + κᵀ|u| + sᵀneg(h⁺) ≤ 0, with
    S = √γ Σ½, tuned by SGD through rollouts: γ and μ stay finite."""
    rng = np.random.default_rng(0)
    n = 12
    F = rng.standard_normal((n, 3)) * 0.1
    Sigma = F @ F.T + np.diag(rng.uniform(0.01, 0.04, n))
    sigma_half = torch.tensor(np.linalg.cholesky(Sigma).T)
    h, S, mu = cp.Parameter(n), cp.Parameter((n, n)), cp.Parameter(n)
    u, h_plus = cp.Variable(n), cp.Variable(n)
    costs = 0.001 * np.ones(n) @ cp.abs(u) + 0.0005 * np.ones(n) @ cp.neg(h_plus)
    prob = cp.Problem(
        cp.Maximize(mu @ h_plus - cp.sum_squares(S @ h_plus)),
        [h_plus == h + u, cp.sum(u) + costs <= 0],
    )
    layer = CvxpyLayer(prob, [h, S, mu], [u])
    mu_true = torch.tensor(rng.uniform(0.0, 0.02, n))
    log_gamma = torch.tensor(np.log(5.0), requires_grad=True)
    mu_hat = (mu_true + 0.01 * torch.tensor(rng.standard_normal(n))).requires_grad_()
    opt = torch.optim.SGD([log_gamma, mu_hat], lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    B = 10
    for _ in range(12):
        opt.zero_grad()
        holdings = torch.full((B, n), 1.0 / n, dtype=torch.float64)
        utility = 0.0
        for _ in range(6):
            args = {"acceleration_lookback": 0, "max_iters": 10000}
            S_t = torch.exp(0.5 * log_gamma) * sigma_half
            (trade,) = layer(holdings, S_t.expand(B, n, n), mu_hat.expand(B, n), solver_args=args)
            holdings = holdings + trade
            r = mu_true + torch.randn(B, n, generator=gen, dtype=torch.float64) @ sigma_half
            ret = (holdings * r).sum(1)
            utility = utility + (ret - 2 * ret**2).mean()
            holdings = holdings * (1 + r)
            holdings = holdings / holdings.sum(1, keepdim=True)
        (-utility).backward()
        opt.step()
        assert torch.isfinite(log_gamma) and torch.isfinite(mu_hat).all()


@pytest.mark.parametrize("failed_gradient", ["zero", "nan"])
def test_a_failed_fast_path_element_does_not_reach_the_gradient(monkeypatch, failed_gradient):
    """The last element's interior point is made to break down (NaN, FAILURE); the generic
    mode solves it again. Outputs and gradients equal those of a run where nothing failed."""
    layer = _supply_chain_policy(fast_path="qp")
    args = [a.clone().requires_grad_() for a in _split(DEGENERATE)]
    solver_args = {"failed_gradient": failed_gradient, "eps": 1e-9}
    (reference,) = layer(*args, solver_args=solver_args)
    reference.sum().backward()
    expected = [a.grad.clone() for a in args]
    for a in args:
        a.grad = None
    solve = InteriorPoint.solve

    def poisoned(self, program, settings, warm_start=None):  # the last element breaks down
        sol = solve(self, program, settings)
        sol.x[-1] = float("nan")
        return dataclasses.replace(sol, status=(*sol.status[:-1], Status.FAILURE))

    monkeypatch.setattr(InteriorPoint, "solve", poisoned)
    (u,), info = layer(*args, solver_args=solver_args, return_status=True)
    assert info.mode == "qp+scs" and all(s.ok for s in info.status)
    u.sum().backward()
    torch.testing.assert_close(u, reference, atol=1e-6, rtol=0)
    for a, g in zip(args, expected):
        assert torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad, g, atol=1e-4, rtol=1e-4)


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


@pytest.mark.parametrize("fast_path", [False, "qp"])
def test_training_memory_stays_flat(fast_path):
    """Two stacked projection layers and a linear layer trained with Adam: the live tensors
    after 10 iterations are those after 2, and resident memory is within 10% of it. A call
    whose tensors outlived it (a reference cycle through the autograd graph, which Python's
    garbage collector cannot break) added tensors and ~15 MB every iteration here."""
    import gc
    import warnings

    n, B = 60, 32
    x, y = cp.Parameter(n), cp.Variable(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [y >= 0, cp.sum(y) <= n / 4])
    layers = [CvxpyLayer(prob, [x], [y], fast_path=fast_path) for _ in range(2)]
    gen = torch.Generator().manual_seed(0)
    inputs = torch.randn(B, n, generator=gen, dtype=torch.float64)
    target = torch.randn(B, 1, generator=gen, dtype=torch.float64)
    scale = torch.nn.Parameter(torch.ones(n, dtype=torch.float64))
    head = torch.nn.Linear(n, 1, dtype=torch.float64)
    opt = torch.optim.Adam([scale, *head.parameters()], lr=1e-2)
    tensors, rss = [], []
    for _ in range(10):
        opt.zero_grad()
        (hidden,) = layers[0](inputs * scale)
        (out,) = layers[1](hidden - 0.1)
        ((head(out) - target) ** 2).mean().backward()
        opt.step()
        del hidden, out
        gc.collect()
        with warnings.catch_warnings():  # touching every object trips deprecation shims
            warnings.simplefilter("ignore")
            tensors.append(sum(isinstance(o, torch.Tensor) for o in gc.get_objects()))
        rss.append(_rss_mb())
    assert tensors[-1] == tensors[1], f"live tensors grew from {tensors[1]} to {tensors[-1]}"
    assert rss[-1] <= 1.1 * rss[1], f"resident memory grew from {rss[1]:.0f} to {rss[-1]:.0f} MB"


def test_relu_network_with_a_pinned_weight_variable_is_a_small_qp():
    """z = argmin ‖z − W̃x − b‖² s.t. z ≥ 0, W̃ = W (a variable W̃ keeps W̃x DPP): the 100
    entries of W̃ are eliminated at compile time, leaving a 10-variable QP, and two stacked
    layers equal relu(W₂ relu(W₁x + b₁) + b₂) in value and gradient."""
    n, B = 10, 16

    def layer():
        x, W, b = cp.Parameter(n), cp.Parameter((n, n)), cp.Parameter(n)
        W_var, z = cp.Variable((n, n)), cp.Variable(n)
        prob = cp.Problem(cp.Minimize(cp.sum_squares(z - W_var @ x - b)), [z >= 0, W_var == W])
        return CvxpyLayer(prob, [x, W, b], [z])

    first, second = layer(), layer()
    assert first.fast_path.keep.size == n and "100 pinned" in first.fast_path.describe()
    gen = torch.Generator().manual_seed(4)
    X = torch.randn(B, n, generator=gen, dtype=torch.float64)
    params = [torch.randn(*s, generator=gen, dtype=torch.float64) * 0.5 for s in [(n, n), (n,)] * 2]
    results = []
    for use_layers in (True, False):
        leaves = [p.clone().requires_grad_() for p in params]
        W1, b1, W2, b2 = leaves
        if use_layers:
            (h,) = first(X, W1.expand(B, n, n), b1.expand(B, n), solver_args={"eps": 1e-10})
            (out,) = second(h, W2.expand(B, n, n), b2.expand(B, n), solver_args={"eps": 1e-10})
        else:
            out = torch.relu(torch.relu(X @ W1.T + b1) @ W2.T + b2)
        (out**2).sum().backward()
        results.append((out.detach(), [leaf.grad for leaf in leaves]))
    torch.testing.assert_close(results[0][0], results[1][0], atol=1e-8, rtol=0)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_portfolio_policy_with_clarabel_keys_runs_clarabel_step_after_step():
    """The VIX portfolio pattern of cvxpylayers' examples: a trading policy called with
    diffcp's keys {"solve_method": "CLARABEL", "n_jobs_forward": 1} at every step of a
    simulated horizon runs native Clarabel; its trades and the horizon loss's gradient
    equal native SCS's at eps 1e-9 (both accurate to ~1e-8; asserted at 1e-6)."""
    rng = np.random.default_rng(3)
    n, B, steps = 6, 16, 4
    F = rng.standard_normal((n, 2)) * 0.1
    sigma_half = torch.tensor(np.linalg.cholesky(F @ F.T + np.diag(rng.uniform(0.01, 0.04, n))).T)
    h, S, mu = cp.Parameter(n), cp.Parameter((n, n)), cp.Parameter(n)
    u, h_plus = cp.Variable(n), cp.Variable(n)
    prob = cp.Problem(
        cp.Maximize(mu @ h_plus - cp.sum_squares(S @ h_plus)),
        [h_plus == h + u, cp.sum(u) + 0.001 * cp.norm1(u) <= 0, h_plus >= -0.2],
    )
    layer = CvxpyLayer(prob, [h, S, mu], [u], fast_path=False)
    mu_t = torch.tensor(rng.uniform(0.0, 0.02, n))
    returns = torch.tensor(rng.standard_normal((steps, B, n))) @ sigma_half + mu_t
    runs = {}
    for name, args in {
        "clarabel": {"solve_method": "CLARABEL", "n_jobs_forward": 1, "eps": 1e-9},
        "scs": {"eps": 1e-9, "max_iters": 200_000},
    }.items():
        log_gamma = torch.tensor(np.log(5.0), dtype=torch.float64, requires_grad=True)
        holdings, loss, modes = torch.full((B, n), 1.0 / n, dtype=torch.float64), 0.0, set()
        for t in range(steps):
            S_t = torch.exp(0.5 * log_gamma) * sigma_half
            (trade,), info = layer(
                holdings, S_t.expand(B, n, n), mu_t.expand(B, n), solver_args=args,
                return_status=True,
            )  # fmt: skip
            assert all(s.ok for s in info.status)
            modes.add(info.mode)
            holdings = (holdings + trade) * (1 + returns[t])
            loss = loss - (holdings.sum(1)).mean()
        loss.backward()
        runs[name] = (modes, loss.detach(), log_gamma.grad)
    assert runs["clarabel"][0] == {"clarabel"} and runs["scs"][0] == {"scs"}
    torch.testing.assert_close(runs["clarabel"][1], runs["scs"][1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(runs["clarabel"][2], runs["scs"][2], atol=1e-6, rtol=1e-6)
