"""Fast paths (QP interior point, LQR Riccati, LML, closed forms): each a `match()` on the
compiled structure plus its own solve and adjoint. None is registered yet."""
