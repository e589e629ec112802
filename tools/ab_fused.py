"""Side-by-side timing of the fused ReLU / residual add against the plain call and the unfused
NumPy sequence, and of float32 wide rows against another build and PyTorch.

    python tools/ab_fused.py fused --threads 1 2
    python tools/ab_fused.py wide --base /tmp/fused_base/bnfast --threads 1 2

``fused``: for each case and thread count, the training forward (running statistics updated,
y written into a preallocated ``out=``, as a training loop with reused buffers makes it) plain,
fused with the ReLU, fused with residual + ReLU, and the unfused sequences
``bn; np.maximum(y, 0, out=y)`` and ``bn; y += r; np.maximum(y, 0, out=y)``; then the backward
plain, fused with the ReLU mask (and the residual's gradient), and unfused
(``np.multiply(dy, y > 0, out=g)`` then the plain backward).

``wide``: the training forward, inference and backward of (4096, 1024) float32 (rows of 1024
channels) of this build, of the build at --base (tools/ab_kernels.py), and of PyTorch.

Every repetition calls each contender once, in a rotating order, so slow phases of a shared
machine hit them all alike; the tables give the median per call, the min-max over the
repetitions and the ratios of the medians.
"""

import argparse
import os
import statistics
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bnfast  # noqa: E402
from ab_kernels import bnfast_calls, fmt, interleaved, load_base, torch_calls  # noqa: E402

FUSED_CASES = [  # (name, shape, axis)
    ("(65536,256)", (65536, 256), 1),
    ("NCHW (32,64,56,56)", (32, 64, 56, 56), 1),
    ("NHWC (32,56,56,64)", (32, 56, 56, 64), -1),
]


def fused_calls(x, r, dy, gamma, beta, axis, nt):
    C = x.shape[axis]
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y = np.empty_like(x)
    kw = dict(axis=axis, running_mean=rm, running_var=rv, out=y, n_threads=nt)
    fwd = bnfast.batch_norm_forward

    def unfused_relu():
        fwd(x, gamma, beta, **kw)
        np.maximum(y, 0, out=y)

    def unfused_res_relu():
        fwd(x, gamma, beta, **kw)
        np.add(y, r, out=y)
        np.maximum(y, 0, out=y)

    forward = {
        "plain": lambda: fwd(x, gamma, beta, **kw),
        "fused relu": lambda: fwd(x, gamma, beta, activation="relu", **kw),
        "fused res+relu": lambda: fwd(x, gamma, beta, activation="relu", residual=r, **kw),
        "bn; maximum": unfused_relu,
        "bn; +=r; maximum": unfused_res_relu,
    }
    yr, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, activation="relu",
                                                 residual=r)
    dx = np.empty_like(x)
    g = np.empty_like(x)
    bwd = bnfast.batch_norm_backward
    bkw = dict(axis=axis, out=dx, n_threads=nt)

    def unfused_backward():
        np.multiply(dy, yr > 0, out=g)
        return bwd(g, x, mean, invstd, gamma, **bkw)

    backward = {
        "plain": lambda: bwd(dy, x, mean, invstd, gamma, **bkw),
        "fused relu": lambda: bwd(dy, x, mean, invstd, gamma, activation="relu", y=yr, **bkw),
        "fused relu+dres": lambda: bwd(dy, x, mean, invstd, gamma, activation="relu", y=yr,
                                       return_dresidual=True, **bkw),
        "mask; bn": unfused_backward,
    }
    return forward, backward


def table(title, t):
    med = {k: statistics.median(v) for k, v in t.items()}
    base = med[next(iter(med))]
    for name, ts in t.items():
        print(f"| {title} | {name} | {fmt(ts)} | {med[name] / base:.3f} |", flush=True)


def run_fused(args):
    rng = np.random.default_rng(0)
    print(f"reps={args.reps}; median per call (min-max over reps); ratio of medians to plain")
    print("| case, threads, op | variant | time | vs plain |")
    print("| --- | --- | --- | --- |")
    for name, shape, axis in FUSED_CASES:
        x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 3).astype(np.float32)
        r = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        C = shape[axis]
        gamma = rng.uniform(0.5, 2, C).astype(np.float32)
        beta = rng.uniform(-1, 1, C).astype(np.float32)
        for nt in args.threads:
            forward, backward = fused_calls(x, r, dy, gamma, beta, axis, nt)
            if "forward" in args.ops:
                table(f"{name}, {nt}, forward", interleaved(forward, args.reps, args.min_time))
            if "backward" in args.ops:
                table(f"{name}, {nt}, backward",
                      interleaved(backward, args.reps, args.min_time))


def run_wide(args):
    import torch
    base = load_base(args.base)
    rng = np.random.default_rng(0)
    shape, axis = (4096, 1024), 1
    x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 3).astype(np.float32)
    dy = rng.standard_normal(shape, dtype=np.float32)
    gamma = rng.uniform(0.5, 2, 1024).astype(np.float32)
    beta = rng.uniform(-1, 1, 1024).astype(np.float32)
    print(f"reps={args.reps}; (4096, 1024) float32; median per call (min-max over reps)")
    print("| threads | op | base | this branch | torch | branch/base | branch/torch |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for nt in args.threads:
        torch.set_num_threads(nt)
        tcalls = torch_calls(torch, x, dy, gamma, beta, axis)
        new = bnfast_calls(bnfast, x, dy, gamma, beta, axis, nt)
        old = bnfast_calls(base, x, dy, gamma, beta, axis, nt)
        for op in ("forward", "inference", "backward"):
            t = interleaved({"base": old[op], "branch": new[op], "torch": tcalls[op]},
                            args.reps, args.min_time)
            med = {k: statistics.median(v) for k, v in t.items()}
            print(f"| {nt} | {op} | {fmt(t['base'])} | {fmt(t['branch'])} | "
                  f"{fmt(t['torch'])} | {med['branch'] / med['base']:.2f} | "
                  f"{med['branch'] / med['torch']:.2f} |", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=["fused", "wide"])
    parser.add_argument("--base", help="package directory of the other build (wide)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--ops", nargs="+", default=["forward", "backward"])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--min-time", type=float, default=0.05,
                        help="seconds of calls per contender per round")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}")
    if args.what == "fused":
        run_fused(args)
    else:
        if not args.base:
            parser.error("wide needs --base")
        run_wide(args)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
