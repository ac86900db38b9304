"""Layer construction time against problem size (issue 10): the dense QP of T1 with
n = m = 50 … 1000, cvxlayer against cvxpylayers, one process.

    python bench/construction.py [--sizes 50,100,300,500,1000] [--peer-max 500]

Writes bench/results/construction/results.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from tasks import dense_qp  # noqa: E402

from cvxlayer import CvxpyLayer  # noqa: E402

OUT = Path(__file__).parent / "results" / "construction"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,100,300,500,1000")
    parser.add_argument(
        "--peer-max",
        type=int,
        default=500,
        help="largest n for cvxpylayers (it ran out of this machine's 24 GiB at n = 1000)",
    )
    args = parser.parse_args(argv)
    rows = []
    for n in map(int, args.sizes.split(",")):
        task = dense_qp(batch=1, n=n, m=n)
        start = time.perf_counter()
        CvxpyLayer(task.problem, task.parameters, [task.variable])
        ours = time.perf_counter() - start
        peer = float("nan")
        try:
            if n > args.peer_max:
                raise ImportError
            from cvxpylayers.torch import CvxpyLayer as PeerLayer

            task = dense_qp(batch=1, n=n, m=n)  # a fresh problem: no cache shared
            start = time.perf_counter()
            PeerLayer(task.problem, task.parameters, [task.variable])
            peer = time.perf_counter() - start
        except ImportError:
            pass
        rows.append((n, ours, peer))
        print(f"n = m = {n:5d}: cvxlayer {ours:7.2f} s, cvxpylayers {peer:7.2f} s", flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Layer construction time, dense QP (T1 form), n = m",
        "",
        "| n = m | cvxlayer s | cvxpylayers s |",
        "|---:|---:|---:|",
    ]
    lines += [f"| {n} | {a:.2f} | {b:.2f} |" for n, a, b in rows]
    (OUT / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
