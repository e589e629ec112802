"""What a fresh output array costs: bnfast with and without ``out=`` next to a copy into a
buffer already touched and a copy into a fresh array, side by side in one process.

    python tools/bench_fresh_output.py [--shape 65536x256] [--rounds 21] [--threads 1]

Every round calls each contender once, in a rotating order; the table gives the median per
call and the interquartile range. docs/benchmarks.md ("Where the floor is still missed")
quotes its figures.
"""
import argparse
import statistics
import time

import numpy as np

import bnfast


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="65536x256", help="N x C, float32, channels last")
    ap.add_argument("--rounds", type=int, default=21)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    shape = tuple(int(s) for s in a.shape.split("x"))
    nt = a.threads
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    C = shape[-1]
    g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    rm, rv = np.zeros(C), np.ones(C)
    y, buf = np.zeros_like(x), np.zeros_like(x)  # touched: no page faults when timed
    calls = {
        "np.copyto(buf, x)": lambda: np.copyto(buf, x),
        "x.copy()": lambda: x.copy(),
        "np.empty_like(x).fill(1.0)": lambda: np.empty_like(x).fill(1.0),
        "batch_norm_forward(..., out=y)": lambda: bnfast.batch_norm_forward(
            x, g, b, running_mean=rm, running_var=rv, out=y, n_threads=nt),
        "batch_norm_forward(...)": lambda: bnfast.batch_norm_forward(
            x, g, b, running_mean=rm, running_var=rv, n_threads=nt),
        "batch_norm_inference(..., out=y)": lambda: bnfast.batch_norm_inference(
            x, rm, rv, g, b, out=y, n_threads=nt),
        "batch_norm_inference(...)": lambda: bnfast.batch_norm_inference(
            x, rm, rv, g, b, n_threads=nt),
    }
    names = list(calls)
    times = {k: [] for k in names}
    for r in range(a.rounds):
        for k in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            calls[k]()
            times[k].append(time.perf_counter() - t0)
    print(f"float32 {shape}, {nt} thread(s), {a.rounds} rounds: median [25th-75th] ms")
    for k in names:
        q = statistics.quantiles(times[k], n=4)
        print(f"{k:34s} {statistics.median(times[k]) * 1e3:8.2f} "
              f"[{q[0] * 1e3:.2f}-{q[2] * 1e3:.2f}]")


if __name__ == "__main__":
    main()
