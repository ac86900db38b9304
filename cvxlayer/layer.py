"""`CvxpyLayer`: a DPP cvxpy problem as a differentiable, batched `torch.nn.Module`.

θ ──compile (once)──▶ CompiledProblem ──per call──▶ ConeProgram ──mode──▶ Solution
  ──recover──▶ variables;  gradients flow back by implicit differentiation.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import cvxpy as cp
import torch

from cvxlayer.compile import CompiledProblem, compile_problem
from cvxlayer.diff import get_adjoint, solve_and_differentiate
from cvxlayer.errors import SolverError
from cvxlayer.fastpaths import match_fast_path
from cvxlayer.linalg import all_finite
from cvxlayer.options import CallOptions, parse_solver_args
from cvxlayer.solvers import Solution, SolveSettings, Status, get_solver
from cvxlayer.solvers.base import put_rows
from cvxlayer.solvers.ipm import compiled_engine_supports

_CVXPYLAYERS_SOLVERS = (None, "SCS", "DIFFCP")
# mode="auto": the batched torch solver on CUDA; on the CPU native Clarabel (polished) for
# programs with exponential or power cones (docs/benchmarks.md: forward + backward
# 1.5-2.4x native SCS and 1.3-2.4x the compiled interior point on T5b and T5d at B = 1, 8
# and 128), the compiled interior point where `_ipm_pays` says it beats native SCS, and
# native SCS otherwise: always with PSD cones, whose forward it runs 1.5-1.7x faster than
# the compiled engine on T5c (their backward takes the KKT route after either)
AUTO_CPU, AUTO_CUDA, AUTO_CPU_IPM = "scs", "torch", "ipm"
# measured forward + backward against native SCS (docs/benchmarks.md, "Where auto runs
# it"): 1.1-1.4x faster from B = 8 when B·(n + m) ≥ ~1000 on programs whose A is 22-26%
# nonzero (T5a; an SOCP family, n + m = 43 to 603); slower at B = 1 (0.6-0.8x: its fixed
# cost) and at B·(n + m) = 344 (0.8x); 4x slower on T7 as a generic program (A 5.5%
# nonzero), where SCS's sparse factorization pays
AUTO_IPM_MIN_BATCH, AUTO_IPM_MIN_WORK, AUTO_IPM_MIN_DENSITY = 8, 1000, 0.1
AUTO_CPU_NONSYMMETRIC = "clarabel"
# modes whose unconverged elements an interior point finishes before the backward
FIRST_ORDER = ("scs", "scs-block", "torch")


@dataclass(frozen=True)
class SolveInfo:
    """Per-element outcome of one call (returned with `return_status=True`).

    Attributes:
        status: one `Status` per batch element ("solved", "infeasible", …).
        iterations: (B,) solver iterations per element.
        mode: the forward mode that ran: a fast path's name ("qp"), a generic mode, or
            "qp+scs" when the fast path left elements to the generic mode.
        finished: per element, whether the first-order mode (native SCS, "torch") left it
            unconverged (inaccurate, or its residuals beyond the tolerance) and native
            Clarabel finished it before it was differentiated.
        x: (B, n) the cone program's primal solution (detached): passed back as
            `solver_args={"warm_start": info}`, it starts the next call (MPC and QP paths).
    """

    status: tuple[Status, ...]
    iterations: torch.Tensor
    mode: str
    finished: tuple[bool, ...] = ()
    x: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def solved(self) -> torch.Tensor:
        """(B,) bool: which elements were solved accurately."""
        return torch.tensor([s.ok for s in self.status], dtype=torch.bool)


class CvxpyLayer(torch.nn.Module):
    """A differentiable convex optimization layer.

    Solves  x*(θ) = argmin f(x; θ) s.t. x ∈ C(θ)  for a DPP cvxpy problem in the forward
    pass and differentiates x*(θ) implicitly in the backward pass. Constructor and call are
    compatible with cvxpylayers' torch `CvxpyLayer`.

    Args:
        problem: a DPP (disciplined parametrized) `cvxpy.Problem`.
        parameters: every `cp.Parameter` of the problem, in the order the layer takes them.
        variables: the `cp.Variable`s to return, in order.
        solver: accepted for cvxpylayers compatibility (None, "SCS" or "DIFFCP"); the solver is
            chosen by `mode`.
        gp: the problem is a geometric program (DGP, positive parameters and variables): it
            is solved in log space, its parameters' values must be positive.
        verbose: print solver progress.
        canon_backend: cvxpy canonicalization backend (e.g. "SCIPY"); None lets cvxpy choose.
        solver_args: default solver settings for every call (see `forward`).
        mode: forward solver: "torch" (batched SCS-style ADMM in PyTorch on the parameters'
            device and dtype), "scs" (native SCS on each element, in parallel threads),
            "scs-block" (native SCS on one block-diagonal problem for the whole batch), or
            "auto" (default: "torch" for CUDA tensors, "scs" for CPU tensors, where native
            SCS is faster on small problems; see docs/benchmarks.md).
        fast_path: True (default): solve with a structure-specific method when the compiled
            problem has that structure (QPs: only equality and inequality constraints with
            a linear or convex quadratic objective, by a batched interior-point method);
            elements it does not solve are re-solved with `mode`. On the CPU, the QP path
            takes batches of 24 elements or more (smaller ones are cheaper one by one with
            native SCS). False: always `mode`.
            A name ("qp"): that fast path, or `ValueError` if the problem does not fit it.
            The chosen path is `layer.fast_path` (None for none) and shows in `repr`.

    Raises:
        ValueError: the problem is not DCP/DPP, the parameter list misses, repeats or adds a
            parameter, a variable is not in the problem, an unknown mode or solver_args key.

    Example:
        >>> x = cp.Parameter(3); y = cp.Variable(3)
        >>> prob = cp.Problem(cp.Minimize(cp.sum_squares(y - x)), [y >= 0])
        >>> layer = CvxpyLayer(prob, parameters=[x], variables=[y])
        >>> (y_star,) = layer(torch.tensor([-1.0, 0.5, 2.0]))   # ReLU: [0, 0.5, 2]
    """

    def __init__(
        self,
        problem: cp.Problem,
        parameters: Sequence[cp.Parameter],
        variables: Sequence[cp.Variable],
        solver: str | None = None,
        gp: bool = False,
        verbose: bool = False,
        canon_backend: str | None = None,
        solver_args: Mapping | None = None,
        *,
        mode: str = "auto",
        fast_path: bool | str = True,
    ) -> None:
        super().__init__()
        if solver not in _CVXPYLAYERS_SOLVERS:
            raise ValueError(
                f"solver={solver!r} is not available; cvxlayer picks its solver with "
                f"mode= (one of 'auto', 'torch', 'scs', 'scs-block')"
            )
        self.mode = mode
        self.solvers = {
            m: get_solver(m)
            for m in (
                (AUTO_CPU, AUTO_CUDA, AUTO_CPU_IPM, AUTO_CPU_NONSYMMETRIC)
                if mode == "auto"
                else (mode,)
            )
        }  # a call may name another mode (diffcp's solve_method): added when first used
        self.defaults: CallOptions = parse_solver_args(
            solver_args, CallOptions(SolveSettings(verbose=verbose), "auto")
        )
        adjoint = get_adjoint(self.defaults.backward)
        self.compiled: CompiledProblem = compile_problem(
            problem,
            parameters,
            variables,
            canon_backend=canon_backend,
            quad_obj=adjoint.supports_quadratic,
            gp=gp,
        )
        self.fast_path = match_fast_path(self.compiled, problem, fast_path)
        self._fast_path_named = isinstance(fast_path, str)

    def extra_repr(self) -> str:
        st = self.compiled.structure
        path = "none" if self.fast_path is None else self.fast_path.describe()
        return (
            f"mode={self.mode!r}, fast_path: {path}, "
            f"parameters={[s.name for s in self.compiled.parameters]}, "
            f"variables={[r.name for r in self.compiled.recoveries]}, "
            f"cone program: n={st.n}, m={st.m}, nnz(A)={st.a_nnz}, cones: {st.cones.describe()}"
        )

    def forward(
        self,
        *params: torch.Tensor,
        solver_args: Mapping | None = None,
        return_status: bool = False,
    ) -> tuple:
        """Solve for a batch of parameter values.

        Args:
            *params: one tensor per parameter, in the constructor's order; each either of the
                parameter's shape (shared by the batch) or (B, *shape) (batched).
            solver_args: settings for this call: `eps` (sets `eps_abs` and `eps_rel`), every
                field of `SolveSettings` (`eps_abs`, `eps_rel`, `eps_infeas`, `max_iters`,
                `linsys`, `scale`, `alpha`, `normalize`, …), `backward` ("auto", "dense",
                "lsqr", "diffcp"), `failed_gradient` ("zero", "nan"), `max_batch` (solve
                the batch in chunks of at most this many elements: bounds peak memory) and
                `warm_start` (a previous call's `SolveInfo`: its solution starts the MPC
                path, shifted by `warm_start_shift` stages, and the QP path's active set).
                The keys cvxpylayers passes to diffcp (`mode`, `solve_method`,
                `n_jobs_forward`, …, and those of SCS, ECOS, Clarabel) are accepted: mapped
                where they have a meaning here, else ignored with a warning. Other keys raise
                `ValueError`.
            return_status: if True, return `(solutions, SolveInfo)` and neither raise nor
                warn for elements that were not solved accurately. Elements not solved at all
                (infeasible, unbounded, failed) get zero gradients (or NaN with
                `solver_args={"failed_gradient": "nan"}`).

        Returns:
            A tuple with one tensor per requested variable, (B, *shape) if any parameter was
            batched, else (*shape); dtype and device follow the parameters. With
            `return_status=True`, the pair `(that tuple, SolveInfo)`.

        Raises:
            ValueError / TypeError: wrong number, shape, dtype, device of parameters; NaN/inf.
            SolverError: some element is infeasible or unbounded, or its solve failed
                (unless `return_status`).

        Warns:
            UserWarning ("Solved/Inaccurate"): some element reached only an inaccurate
                solution (status solved_inaccurate, or max_iters with a finite iterate), even
                after a retry without Anderson acceleration; as in cvxpylayers, its iterate
                is returned and differentiated (unless `return_status`).
        """
        values, batched = _prepare_parameters(self.compiled, params, allow_invalid=return_status)
        options = parse_solver_args(solver_args, self.defaults)
        adjoint = get_adjoint(options.backward)
        if torch.is_grad_enabled() and any(v.requires_grad for v in values):
            adjoint.check(self.compiled.structure)  # fail before solving, not in backward
        mode = options.generic_mode or self.mode
        if mode not in self.solvers and mode != "auto":
            self.solvers[mode] = get_solver(mode)
        if mode == "auto":
            mode = self._auto_mode(values)
        # with return_status, invalid elements are reported instead of raising (`_valid_rows`)
        valid = _valid_rows(self.compiled, values) if return_status else None
        _check_warm_start(options.warm_start, values[0].shape[0], self.compiled.structure.n)
        if valid is None or bool(valid.all()):
            solution, mode = self._solve_batch(values, options, adjoint, mode)
        else:  # only with return_status: the other elements are solved, these reported
            keep = valid.nonzero().flatten()
            solution = None
            if options.warm_start is not None:
                options = replace(options, warm_start=options.warm_start[keep])
            if keep.numel():
                solution, mode = self._solve_batch(
                    [v[keep] for v in values], options, adjoint, mode
                )
            solution = _with_invalid_rows(
                self.compiled, solution, keep, values, valid, options.failed_gradient
            )
        info = SolveInfo(
            solution.status,
            solution.iterations,
            mode,
            solution.finished_flags(),
            solution.x.detach(),
        )
        if not return_status:
            _raise_on_failure(info)
        outputs = self.compiled.recover(solution.x, solution.y)
        if not batched:
            outputs = tuple(o.squeeze(0) for o in outputs)
        return (outputs, info) if return_status else outputs

    def _auto_mode(self, values: list[torch.Tensor]) -> str:
        """mode="auto" for this call (see AUTO_CPU)."""
        if values[0].is_cuda:
            return AUTO_CUDA
        batch = values[0].shape[0]
        cones = self.compiled.structure.cones
        if compiled_engine_supports(cones) and (cones.exp or cones.power):
            return AUTO_CPU_NONSYMMETRIC
        if compiled_engine_supports(cones) and not cones.psd and self._ipm_pays(batch):
            return AUTO_CPU_IPM
        return AUTO_CPU

    def _ipm_pays(self, batch: int) -> bool:
        """Whether the compiled interior point beats native SCS on `batch` elements of this
        program (the measured rule above AUTO_IPM_MIN_BATCH)."""
        st = self.compiled.structure
        return (
            batch >= AUTO_IPM_MIN_BATCH
            and batch * (st.n + st.m) >= AUTO_IPM_MIN_WORK
            and st.a_nnz >= AUTO_IPM_MIN_DENSITY * st.n * st.m
        )

    def _solve_batch(self, values: list[torch.Tensor], options: CallOptions, adjoint, mode: str):
        """(Solution, mode that ran) for valid parameter values, in chunks of `max_batch`."""
        theta = self.compiled.theta(values)
        chunk = options.max_batch or theta.shape[0]
        warm = options.warm_start

        def part(start: int) -> CallOptions:
            if warm is None:
                return options
            return replace(options, warm_start=warm[start : start + chunk])

        if chunk >= theta.shape[0]:  # θ̃ itself: a slice's backward zero-fills a θ̃-sized
            parts = [self._solve(theta, options, adjoint, mode)]  # gradient and copies
        else:
            parts = [
                self._solve(theta[start : start + chunk], part(start), adjoint, mode)
                for start in range(0, theta.shape[0], chunk)
            ]
        modes = [name for _, name in parts]
        # a chunk that needed the generic fallback names the call's mode ("qp+scs")
        mode = next((name for name in modes if "+" in name), modes[0])
        return _concatenate([sol for sol, _ in parts]), mode

    def _solve(self, theta: torch.Tensor, options: CallOptions, adjoint, mode: str):
        """(Solution, mode that ran) for a batch of θ̃ (B, d)."""
        path = self.fast_path
        if path is not None and (
            self._fast_path_named or path.pays_off(theta.shape[0], theta.device, mode)
        ):
            return self._solve_fast(theta, options, adjoint, mode)
        solution = solve_and_differentiate(
            self.compiled.param_map.apply(theta),
            self.solvers[mode],
            options.settings,
            adjoint,
            failed_gradient=options.failed_gradient,
            finisher=_finisher(mode),
        )
        return solution, mode

    def _solve_fast(self, theta: torch.Tensor, options: CallOptions, adjoint, mode: str):
        """The fast path, then the generic `mode` for the elements it did not solve."""
        # the elements it does not solve are solved again below: their gradient is that
        # solve's, so the fast path gives them none (not NaN, whatever failed_gradient says)
        warm = (options.warm_start, options.warm_start_shift)
        solution = self.fast_path.solve(theta, options.settings, "zero", warm)
        failed = [i for i, st in enumerate(solution.status) if not st.ok]
        if not failed:
            return solution, self.fast_path.name
        index = torch.tensor(failed, device=theta.device)
        rest = solve_and_differentiate(
            self.compiled.param_map.apply(theta[index]),
            self.solvers[mode],
            options.settings,
            adjoint,
            failed_gradient=options.failed_gradient,
            finisher=_finisher(mode),
        )
        return put_rows(solution, index, rest), f"{self.fast_path.name}+{mode}"


def _check_warm_start(warm: torch.Tensor | None, batch: int, n: int) -> None:
    """Raise unless the warm start fits this call: (batch, n), from a call of this layer
    with the same batch size."""
    if warm is not None and tuple(warm.shape) != (batch, n):
        raise ValueError(
            f"solver_args['warm_start'] holds a solution of shape {tuple(warm.shape)}; this "
            f"call needs ({batch}, {n}): the SolveInfo of a call of this layer with the same "
            "batch size"
        )


def _finisher(mode: str):
    """The solver that finishes what a first-order mode leaves unconverged: native
    Clarabel (an interior point reaches the tolerance where SCS stalls); None for the
    interior-point modes."""
    return get_solver("clarabel") if mode in FIRST_ORDER else None


def _concatenate(parts: list[Solution]) -> Solution:
    """The solutions of consecutive chunks of a batch as one."""
    if len(parts) == 1:
        return parts[0]
    return Solution(
        torch.cat([p.x for p in parts]),
        torch.cat([p.y for p in parts]),
        torch.cat([p.s for p in parts]),
        tuple(status for p in parts for status in p.status),
        torch.cat([p.iterations for p in parts]),
        tuple(flag for p in parts for flag in p.finished_flags()),
    )


def _valid_rows(compiled: CompiledProblem, values: list[torch.Tensor]) -> torch.Tensor:
    """(B,) bool: elements whose parameters are all finite (and positive where a geometric
    program takes their logarithm)."""
    valid = torch.ones(values[0].shape[0], dtype=torch.bool, device=values[0].device)
    for slot, v in zip(compiled.parameters, values):
        flat = v.reshape(v.shape[0], -1)
        valid &= torch.isfinite(flat).all(1)
        if slot.log:
            valid &= (flat > 0).all(1)
    return valid


def _with_invalid_rows(
    compiled: CompiledProblem,
    solution: Solution | None,
    keep: torch.Tensor,
    values: list[torch.Tensor],
    valid: torch.Tensor,
    failed_gradient: str,
) -> Solution:
    """The batch's Solution from that of its valid elements (`keep`): NaN rows with status
    "invalid_input" for the others, whose parameters get zero gradient, or NaN gradient
    with failed_gradient="nan" (their rows then depend on those parameters through NaN)."""
    B, st = valid.shape[0], compiled.structure
    bad = (~valid).nonzero().flatten()
    nan_rows = values[0].new_full((bad.numel(), 1), float("nan"))
    if failed_gradient == "nan":
        nan_rows = nan_rows * sum(
            v[bad].reshape(bad.numel(), -1).sum(1, keepdim=True) for v in values
        )
    reported = Solution(
        *(
            values[0].new_zeros(B, size).index_put((bad,), nan_rows.expand(-1, size))
            for size in (st.n, st.m, st.m)
        ),
        (Status.INVALID_INPUT,) * B,
        torch.zeros(B, dtype=torch.long),
    )
    return reported if solution is None else put_rows(reported, keep, solution)


def _listed(info: SolveInfo, elements: list[int]) -> str:
    shown = ", ".join(f"element {i}: {info.status[i].value}" for i in elements[:10])
    return shown + (f" (and {len(elements) - 10} more)" if len(elements) > 10 else "")


def _raise_on_failure(info: SolveInfo) -> None:
    """Raise for elements without a usable answer (infeasible, unbounded, failed); warn for
    those returned with an inaccurate one (as cvxpylayers/diffcp do), and say how many
    an interior point had to finish."""
    finished = sum(info.finished)
    if finished:
        warnings.warn(
            f"{finished} of {len(info.status)} batch element(s) were left unconverged by mode "
            f"{info.mode!r} (inaccurate, or residuals beyond the tolerance) and were finished "
            "by Clarabel before differentiation; SolveInfo.finished (return_status=True) "
            "lists them. Raising solver_args['max_iters'] avoids the second solve.",
            UserWarning,
            stacklevel=3,
        )
    failed = [i for i, s in enumerate(info.status) if not s.usable]
    if failed:
        raise SolverError(
            f"{len(failed)} of {len(info.status)} batch element(s) were not solved by mode "
            f"{info.mode!r}: {_listed(info, failed)}. Check the parameters of those elements "
            "for infeasibility or unboundedness, or call with return_status=True to get "
            "per-element status instead of this error.",
            tuple(s.value for s in info.status),
            failed,
        )
    inaccurate = [i for i, s in enumerate(info.status) if not s.ok]
    if inaccurate:
        warnings.warn(
            f"Solved/Inaccurate: {len(inaccurate)} of {len(info.status)} batch element(s) "
            f"did not reach the tolerance in mode {info.mode!r} ({_listed(info, inaccurate)}); "
            "their last iterates are returned and differentiated. Raise "
            "solver_args['max_iters'] or loosen 'eps'; return_status=True reports the status.",
            UserWarning,
            stacklevel=3,
        )


def _warn_if_asymmetric(name: str, value: torch.Tensor) -> None:
    """Warn when a symmetric/PSD parameter's (B, k, k) value is not symmetric (to rounding)."""
    with torch.no_grad():
        gap = (value - value.transpose(-1, -2)).abs().amax()
        scale = value.abs().amax()
        if gap > 100 * torch.finfo(value.dtype).eps * scale:
            warnings.warn(
                f"parameter '{name}' is declared symmetric/PSD but its value is not symmetric "
                f"(max |C - Cᵀ| = {float(gap):.2e}); cvxlayer uses its upper triangle, "
                "mirrored (cvxpy's and cvxpylayers' convention)",
                stacklevel=6,  # the user's line: through nn.Module.__call__ and forward
            )


def _prepare_parameters(
    compiled: CompiledProblem, params: Sequence[torch.Tensor], allow_invalid: bool = False
) -> tuple[list[torch.Tensor], bool]:
    """Check the call's parameters and broadcast them to one batch size. NaN/inf values are
    an error unless `allow_invalid` (then those elements are reported, not solved).

    Returns:
        (values, batched): one (B, *shape) tensor per parameter, all of one floating dtype
        and device; `batched` says whether any input had a batch dimension.
    """
    slots = compiled.parameters
    if len(params) != len(slots):
        raise ValueError(
            "A tensor must be provided for each CVXPY parameter; "
            f"expected {len(slots)} parameter tensor(s) ({', '.join(s.name for s in slots)}), "
            f"got {len(params)}"
        )
    batch_sizes: dict[int, int] = {}
    for k, (slot, value) in enumerate(zip(slots, params)):
        if not isinstance(value, torch.Tensor):
            raise TypeError(
                f"parameter '{slot.name}' must be a torch.Tensor, got {type(value).__name__}"
            )
        if not (value.is_floating_point() and value.dtype in (torch.float32, torch.float64)):
            raise TypeError(
                f"parameter '{slot.name}' has dtype {value.dtype}; use float32 or float64"
            )
        if tuple(value.shape) == slot.shape:
            continue
        if value.dim() == len(slot.shape) + 1 and tuple(value.shape[1:]) == slot.shape:
            batch_sizes[k] = value.shape[0]
            continue
        kind = "shape" if value.dim() - len(slot.shape) in (0, 1) else "dimensionality"
        raise ValueError(
            f"Invalid parameter {kind} for parameter '{slot.name}': it has shape "
            f"{tuple(value.shape)}; expected {slot.shape} (shared by the batch) or "
            f"{('batch',) + slot.shape} (batched)"
        )
    if len(set(batch_sizes.values())) > 1:
        sizes = ", ".join(f"'{slots[k].name}': {b}" for k, b in batch_sizes.items())
        raise ValueError(f"Inconsistent batch sizes across parameters: {sizes}")
    devices = {value.device for value in params}
    if len(devices) > 1:
        raise ValueError(f"parameters are on different devices: {sorted(map(str, devices))}")
    batched = bool(batch_sizes)
    B = next(iter(batch_sizes.values())) if batched else 1
    if B == 0:
        raise ValueError("empty batch: the batch dimension of the parameters is 0")
    dtype = torch.float32
    for value in params:
        dtype = torch.promote_types(dtype, value.dtype)
    values = []
    for k, (slot, value) in enumerate(zip(slots, params)):
        if not allow_invalid and not all_finite(value):
            raise ValueError(
                f"parameter '{slot.name}' contains NaN or inf (call with return_status=True "
                "to solve the other elements and get status 'invalid_input' for these)"
            )
        value = value.to(dtype)
        if slot.symmetric:
            _warn_if_asymmetric(slot.name, value)
        if k not in batch_sizes:
            value = value.unsqueeze(0).expand(B, *slot.shape)
        values.append(value)
    return values, batched
