"""The polish of `polish.py` as compiled code (numba): one element's Newton steps on
Moreau's form of the optimality conditions are one call (that module's docstring has the
method), run over the batch by the kept thread pool.

Matrices as `ipm_compiled.solve_one` takes them (dense P, A, or their values on the KKT
pattern where it is used), unscaled; everything float64 numpy.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from cvxlayer.cones import composite_kernels as cone
from cvxlayer.solvers import ipm_compiled as engine

_OPTIONS = {"cache": True, "nogil": True, "error_model": "numpy"}
_STEPS = 3
_DAMPING = (1.0, 0.5, 0.25)  # step lengths tried in turn
_TOL = 1e-13  # residuals below this (relative to 1 + the data's and solution's sizes) stop
_CLIP = 1e8  # H's spectrum on nonsymmetric blocks is clipped into [1/δ, δ]
_SHIFT = 1e-12  # (relative) the move of s, y inside the symmetric cones for their scaling


@njit(**_OPTIONS)
def _state(P, A, AT, system, b, c, p, lay, tol, x, v, y, s, r1, r2):
    """y = Π_{K*}(v) (v itself on the p equality rows, whose dual cone is free),
    s = y − v and the residuals r₁ = Px + Aᵀy + c, r₂ = Ax + s − b (written); returns
    max(‖r₁‖∞, ‖r₂‖∞)."""
    y[:p] = v[:p]
    cone.project_dual(lay, v[p:], tol, y[p:])
    s[:] = y - v
    r1[:] = engine._px(system, P, x) + engine._atz(system, AT, y) + c
    r2[:] = engine._ax(system, A, x) + s - b
    return max(engine._max_abs(r1), engine._max_abs(r2))


@njit(**_OPTIONS)
def moved_inside_each(lay, p, S, Y, shift_S, shift_Y):
    """`moved_inside` for each row of S, Y (B, m)."""
    for i in range(S.shape[0]):
        moved_inside(lay, p, S[i], Y[i], shift_S[i], shift_Y[i])


@njit(**_OPTIONS)
def moved_inside(lay, p, s, y, shift_s, shift_y):
    """Copies (shift_s, shift_y) of (s, y) moved inside the second-order and orthant blocks
    by ε = `_SHIFT` (1 + max |y − s|) along their identity, so that their Nesterov–Todd
    scaling exists at boundary solutions and tends to the exact linearization's 0 and ∞."""
    shift = _SHIFT * (1.0 + engine._max_abs(y - s))
    shift_s[:], shift_y[:] = s, y
    for k in range(lay.starts.size - 1):
        shift_s[p + lay.starts[k]] += shift
        shift_y[p + lay.starts[k]] += shift


@njit(**_OPTIONS)
def polish_one(P, A, a_vals, p_vals, b, c, p, lay, pat, lifted, tol, x, y, s):
    """Newton steps from one element's solution (x, y, s) (n,), (m,), (m,), written back
    where they lowered the residuals; lifted: `ipm_compiled.lifted_columns`; tol: the
    exponential cone's projection tolerance.
    Returns whether they reached rounding (residuals below `_TOL`)."""
    m, n = b.size, c.size
    AT = np.ascontiguousarray(A.T)
    system = engine._system(m, n, p, pat, a_vals, p_vals)
    xk, v = x.copy(), y - s
    yk, sk, r1, r2 = np.empty(m), np.empty(m), np.empty(n), np.empty(m)
    error = _state(P, A, AT, system, b, c, p, lay, tol, xk, v, yk, sk, r1, r2)
    size = max(
        max(engine._max_abs(x), engine._max_abs(yk)), max(engine._max_abs(b), engine._max_abs(c))
    )
    enough = _TOL * (1.0 + size)
    count = lay.kinds.size
    U, L_inv = np.empty((count, 3, 3)), np.empty((count, 3, 3))
    s_in, y_in, dx, dy = np.empty(m), np.empty(m), np.empty(n), np.empty(m)
    y_new, s_new, r1_new, r2_new = np.empty(m), np.empty(m), np.empty(n), np.empty(m)
    polished, todo = error <= enough, error > enough
    for _ in range(_STEPS):
        if not todo:
            break
        cone.moreau_factors(lay, yk[p:], sk[p:], _CLIP, U, L_inv)
        moved_inside(lay, p, sk, yk, s_in, y_in)
        ok = engine.adjoint_one(
            P, A, a_vals, p_vals, p, lay, pat, lifted, s_in, y_in, U, L_inv, -r1, -r2, np.zeros(m),
            dx, dy,
        )  # fmt: skip
        if not ok:
            break
        dv = dy + r2 + engine._ax(system, A, dx)  # Δv = Δy − Δs, Δs = −r₂ − AΔx
        # the full step, else a damped one (near a kink of Π the full step can overshoot)
        progress, better = 1.0, False
        for alpha in _DAMPING:
            x_new, v_new = xk + alpha * dx, v + alpha * dv
            e_new = _state(
                P, A, AT, system, b, c, p, lay, tol, x_new, v_new, y_new, s_new, r1_new, r2_new
            )
            if e_new < error:
                progress, better = e_new / error, True
                xk[:], v[:], yk[:], sk[:], r1[:], r2[:] = x_new, v_new, y_new, s_new, r1_new, r2_new
                error = e_new
                break
        # a step that halved the residual may take another; one that did not, stops
        todo = better and progress < 0.5 and error > enough
        polished = polished or better
    # otherwise the interior point's answer stays (its projection alone can be worse)
    if polished:
        x[:], y[:], s[:] = xk, yk, sk
    return error <= enough


@njit(**_OPTIONS)
def polish_each(P, A, a_vals, p_vals, b, c, p, lay, pat, lifted, tol, x, y, s, index, done):
    """`polish_one` for the elements in `index` of batch-first arrays; done[i] its
    result."""
    for i in index:
        done[i] = polish_one(
            P[i], A[i], a_vals[i], p_vals[i], b[i], c[i], p, lay, pat, lifted, tol, x[i], y[i], s[i]
        )
