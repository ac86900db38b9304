"""`solver_args` at the API edge: a plain dict in, typed settings out, unknown keys rejected.

cvxpylayers 1.2 hands its `solver_args` to diffcp 1.1, which passes what it does not use
itself on to SCS, ECOS or Clarabel. Code written for it keeps working here: every key those
accept is accepted. The ones with a meaning here are translated (`_FOREIGN`); the others
are ignored with a warning (once per key and call site, Python's default).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

import torch

from cvxlayer.solvers.base import SolveSettings
from cvxlayer.solvers.linsys import LINSYS

_SETTINGS = frozenset(f.name for f in fields(SolveSettings))
OWN = frozenset({"eps", "backward", "failed_gradient", "max_batch", "warm_start_shift"}) | _SETTINGS

# diffcp's derivative modes ↦ our backward (the LPGD modes have no counterpart: ignored)
_DIFFCP_MODES = {"dense": "dense", "lsqr": "lsqr", "lsmr": "lsqr"}
_LPGD_MODES = ("lpgd", "lpgd_right", "lpgd_left")
# diffcp's forward solvers ↦ our generic mode: native SCS, or native Clarabel for both of
# the interior-point methods (ECOS is not a dependency; Clarabel is its successor in cvxpy)
_SOLVE_METHODS = {"SCS": "scs", "ECOS": "clarabel", "CLARABEL": "clarabel"}


def _translate(key: str, value, args: dict) -> None:
    """Put the meaning of one foreign key into `args` (our keys), or raise for a bad value."""
    if key == "mode":
        if value in _DIFFCP_MODES:
            args.setdefault("backward", _DIFFCP_MODES[value])
        elif value in _LPGD_MODES:
            _ignore(key, f"{value!r} (diffcp's LPGD) has no counterpart; the backward is exact")
        else:
            raise ValueError(
                f"solver_args['mode'] (diffcp's derivative mode) must be one of "
                f"{sorted(_DIFFCP_MODES) + list(_LPGD_MODES)}, got {value!r}"
            )
    elif key == "solve_method":
        if str(value).upper() not in _SOLVE_METHODS:
            raise ValueError(
                f"solver_args['solve_method'] must be 'SCS', 'ECOS' or 'Clarabel', got {value!r}"
            )
        args.setdefault("generic_mode", _SOLVE_METHODS[str(value).upper()])
    elif key == "n_jobs_forward":
        args.setdefault("threads", int(value))
    elif key == "use_indirect":
        args.setdefault("linsys", "cg" if value else "auto")
    else:
        args.setdefault(_SAME_MEANING[key], value)


# keys of diffcp, SCS, ECOS and Clarabel with one of our settings' meaning
_SAME_MEANING = {
    "abstol": "eps_abs",  # ECOS
    "reltol": "eps_rel",
    "tol_gap_abs": "eps_abs",  # Clarabel
    "tol_gap_rel": "eps_rel",
    "max_iter": "max_iters",
    "time_limit": "time_limit_secs",
}
_TRANSLATED = frozenset({"mode", "solve_method", "n_jobs_forward", "use_indirect"}) | set(
    _SAME_MEANING
)
# accepted by diffcp 1.1 (and through it SCS 3, ECOS, Clarabel); no effect here
_IGNORED = {
    "n_jobs_backward": "the backward is one batched computation on torch's threads "
    "(torch.set_num_threads)",
    "warm_start": "diffcp's warm start is not used; the SolveInfo of a previous call (made "
    "with return_status=True) warm-starts the MPC and QP paths",
    "warm_starts": "warm starts are not used",
    "raise_on_error": "failures follow return_status (see CvxpyLayer.forward)",
    "derivative_kwargs": "the backward takes solver_args['backward']",
    "gpu": "the solver runs where the parameters live (mode='torch' on CUDA)",
    "mkl": "SCS's linear solver follows solver_args['linsys']",
    "write_data_filename": "SCS's data files are not written",
    "log_csv_filename": "SCS's logs are not written",
}
_IGNORED_SOLVER_SETTINGS = frozenset(
    {
        # ECOS
        "feastol",
        "feastol_inacc",
        "abstol_inacc",
        "reltol_inacc",
        "nitref",
        # Clarabel
        "max_step_fraction",
        "tol_feas",
        "tol_infeas_abs",
        "tol_infeas_rel",
        "tol_ktratio",
        "reduced_tol_gap_abs",
        "reduced_tol_gap_rel",
        "reduced_tol_feas",
        "reduced_tol_infeas_abs",
        "reduced_tol_infeas_rel",
        "reduced_tol_ktratio",
        "equilibrate_enable",
        "equilibrate_max_iter",
        "equilibrate_min_scaling",
        "equilibrate_max_scaling",
        "linesearch_backtrack_step",
        "min_switch_step_length",
        "min_terminate_step_length",
        "direct_kkt_solver",
        "direct_solve_method",
        "static_regularization_enable",
        "static_regularization_constant",
        "static_regularization_proportional",
        "dynamic_regularization_enable",
        "dynamic_regularization_eps",
        "dynamic_regularization_delta",
        "iterative_refinement_enable",
        "iterative_refinement_reltol",
        "iterative_refinement_abstol",
        "iterative_refinement_max_iter",
        "iterative_refinement_stop_ratio",
        "presolve_enable",
        "chordal_decomposition_enable",
        "chordal_decomposition_merge_method",
        "chordal_decomposition_compact",
        "chordal_decomposition_complete_dual",
        "input_sparse_dropzeros",
        "max_threads",
    }
)
FOREIGN = _TRANSLATED | set(_IGNORED) | _IGNORED_SOLVER_SETTINGS
ACCEPTED = OWN | FOREIGN


def _ignore(key: str, why: str) -> None:
    warnings.warn(
        f"solver_args[{key!r}] (a cvxpylayers/diffcp option) is ignored by cvxlayer: {why}",
        UserWarning,
        stacklevel=4,
    )


@dataclass(frozen=True)
class CallOptions:
    """Typed form of `solver_args`.

    Attributes:
        settings: forward solver settings.
        backward: name of the backward (adjoint) method.
        failed_gradient: "zero" or "nan": the gradient of elements that were not solved.
        max_batch: solve at most this many elements at once (chunks bound the peak memory of
            a large batch); None: the whole batch together.
        generic_mode: the generic mode for this call (from diffcp's `solve_method`); None:
            the layer's.
        warm_start: (B, n) the cone program's x from a previous call (its `SolveInfo.x`),
            where the MPC path starts and the QP path's active set begins; None: cold.
        warm_start_shift: stages the MPC path shifts that guess by (receding horizon: 1).
    """

    settings: SolveSettings
    backward: str
    failed_gradient: str = "zero"
    max_batch: int | None = None
    generic_mode: str | None = None
    warm_start: torch.Tensor | None = None
    warm_start_shift: int = 0


def parse_solver_args(
    solver_args: Mapping | None, defaults: CallOptions | None = None
) -> CallOptions:
    """Merge `solver_args` into `defaults`.

    `eps` sets both `eps_abs` and `eps_rel` (as in cvxpylayers); explicit `eps_abs`/`eps_rel`
    win over it. Keys of diffcp, SCS, ECOS and Clarabel (what cvxpylayers accepts) are
    translated where they have a meaning here and ignored with a warning otherwise; our own
    keys win over translated ones.

    Raises:
        ValueError: an unknown key (the message lists the accepted ones) or a bad value.
    """
    base = defaults or CallOptions(SolveSettings(), "auto")
    if not solver_args and base.warm_start is None and base.warm_start_shift == 0:
        return base  # the layer's defaults as they are (the common call)
    given = dict(solver_args)
    unknown = sorted(set(given) - ACCEPTED)
    if unknown:
        raise ValueError(
            f"unknown solver_args key(s) {unknown}; accepted keys: {sorted(OWN)}, and those "
            "of cvxpylayers/diffcp (docs/from_cvxpylayers.md)"
        )
    args = {k: v for k, v in given.items() if k in OWN}
    # ours: a previous call's SolveInfo; anything else is diffcp's (ignored with a warning)
    if isinstance(getattr(given.get("warm_start"), "x", None), torch.Tensor):
        args["warm_start"] = given.pop("warm_start").x
    for key in sorted(set(given) & FOREIGN):
        if key in _TRANSLATED:
            _translate(key, given[key], args)
        else:
            _ignore(key, _IGNORED.get(key, "a setting of ECOS or Clarabel, not of our solvers"))
    generic_mode = args.pop("generic_mode", base.generic_mode)
    backward = args.pop("backward", base.backward)
    failed_gradient = args.pop("failed_gradient", base.failed_gradient)
    if failed_gradient not in ("zero", "nan"):
        raise ValueError(
            f"solver_args['failed_gradient'] must be 'zero' or 'nan', got {failed_gradient!r}"
        )
    warm_start = args.pop("warm_start", None)
    shift = int(args.pop("warm_start_shift", 0))
    if shift < 0:
        raise ValueError(f"solver_args['warm_start_shift'] must be >= 0, got {shift}")
    max_batch = args.pop("max_batch", base.max_batch)
    if max_batch is not None:
        if int(max_batch) < 1:
            raise ValueError(f"solver_args['max_batch'] must be >= 1, got {max_batch!r}")
        max_batch = int(max_batch)
    if "eps" in args:
        eps = args.pop("eps")
        args.setdefault("eps_abs", eps)
        args.setdefault("eps_rel", eps)
    for key in ("eps_abs", "eps_rel", "eps_infeas"):
        if key in args and not float(args[key]) > 0:
            raise ValueError(f"solver_args[{key!r}] must be positive, got {args[key]!r}")
    if "linsys" in args and args["linsys"] not in {"auto", *LINSYS}:
        raise ValueError(
            f"solver_args['linsys'] must be one of {['auto', *sorted(LINSYS)]}, "
            f"got {args['linsys']!r}"
        )
    if "max_iters" in args:
        if int(args["max_iters"]) < 1:
            raise ValueError(f"solver_args['max_iters'] must be >= 1, got {args['max_iters']!r}")
        args["max_iters"] = int(args["max_iters"])
    if "threads" in args:
        args["threads"] = int(args["threads"])
        if args["threads"] == 0 or args["threads"] < -1:
            raise ValueError(
                f"solver_args['threads'] must be -1 (all) or >= 1, got {args['threads']!r}"
            )
    settings = replace(base.settings, **args)
    return CallOptions(
        settings, backward, failed_gradient, max_batch, generic_mode, warm_start, shift
    )
