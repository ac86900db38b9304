"""`solver_args` at the API edge: a plain dict in, typed settings out, unknown keys rejected."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace

from cvxlayer.solvers.base import SolveSettings

# Native SCS settings passed through unchanged to the "scs" and "scs-block" modes.
SCS_PASSTHROUGH = frozenset(
    {
        "normalize",
        "scale",
        "adaptive_scale",
        "rho_x",
        "alpha",
        "acceleration_interval",
        "time_limit_secs",
        "use_indirect",
    }
)
_SETTINGS = frozenset(f.name for f in fields(SolveSettings)) - {"extra"}
ACCEPTED = frozenset({"eps", "backward"}) | _SETTINGS | SCS_PASSTHROUGH


@dataclass(frozen=True)
class CallOptions:
    """Typed form of `solver_args`.

    Attributes:
        settings: forward solver settings.
        backward: name of the backward (adjoint) method.
    """

    settings: SolveSettings
    backward: str


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
    if "eps" in args:
        eps = args.pop("eps")
        args.setdefault("eps_abs", eps)
        args.setdefault("eps_rel", eps)
    extra = {**base.settings.extra, **{k: args.pop(k) for k in list(args) if k in SCS_PASSTHROUGH}}
    for key in ("eps_abs", "eps_rel", "eps_infeas"):
        if key in args and not float(args[key]) > 0:
            raise ValueError(f"solver_args[{key!r}] must be positive, got {args[key]!r}")
    if "max_iters" in args:
        if int(args["max_iters"]) < 1:
            raise ValueError(f"solver_args['max_iters'] must be >= 1, got {args['max_iters']!r}")
        args["max_iters"] = int(args["max_iters"])
    settings = replace(base.settings, extra=extra, **args)
    return CallOptions(settings, backward)
