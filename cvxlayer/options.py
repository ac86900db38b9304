"""`solver_args` at the API edge: a plain dict in, typed settings out, unknown keys rejected."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from cvxlayer.solvers.base import SolveSettings
from cvxlayer.solvers.linsys import LINSYS

_SETTINGS = frozenset(f.name for f in fields(SolveSettings))
ACCEPTED = frozenset({"eps", "backward", "failed_gradient", "max_batch"}) | _SETTINGS


@dataclass(frozen=True)
class CallOptions:
    """Typed form of `solver_args`.

    Attributes:
        settings: forward solver settings.
        backward: name of the backward (adjoint) method.
        failed_gradient: "zero" or "nan": the gradient of elements that were not solved.
        max_batch: solve at most this many elements at once (chunks bound the peak memory of
            a large batch); None: the whole batch together.
    """

    settings: SolveSettings
    backward: str
    failed_gradient: str = "zero"
    max_batch: int | None = None


def parse_solver_args(
    solver_args: Mapping | None, defaults: CallOptions | None = None
) -> CallOptions:
    """Merge `solver_args` into `defaults`.

    `eps` sets both `eps_abs` and `eps_rel` (as in cvxpylayers); explicit `eps_abs`/`eps_rel`
    win over it.

    Raises:
        ValueError: an unknown key (the message lists the accepted ones) or a bad value.
    """
    base = defaults or CallOptions(SolveSettings(), "auto")
    args = dict(solver_args or {})
    unknown = sorted(set(args) - ACCEPTED)
    if unknown:
        raise ValueError(f"unknown solver_args key(s) {unknown}; accepted keys: {sorted(ACCEPTED)}")
    backward = args.pop("backward", base.backward)
    failed_gradient = args.pop("failed_gradient", base.failed_gradient)
    if failed_gradient not in ("zero", "nan"):
        raise ValueError(
            f"solver_args['failed_gradient'] must be 'zero' or 'nan', got {failed_gradient!r}"
        )
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
    settings = replace(base.settings, **args)
    return CallOptions(settings, backward, failed_gradient, max_batch)
