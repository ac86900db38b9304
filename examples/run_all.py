"""Run every example, report how long each took, and list the figures (`make demo`)."""

import importlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

EXAMPLES = [
    "relu",
    "sigmoid",
    "softmax",
    "polytope_projection",
    "ellipsoid_projection",
    "optnet_qp",
    "lqr_imitation",
    "mpc_imitation",
    "lml_topk",
]


def main() -> None:
    timings = {}
    for name in EXAMPLES:
        start = time.perf_counter()
        importlib.import_module(name).main()
        timings[name] = time.perf_counter() - start
    print("\nexample                  seconds")
    for name, seconds in timings.items():
        print(f"{name:<24} {seconds:7.1f}")


if __name__ == "__main__":
    main()
