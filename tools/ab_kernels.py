"""Side-by-side timing of two bnfast builds (and PyTorch) in one process, interleaved.

    python tools/ab_kernels.py --base /tmp/bn_base/bnfast          # timing table
    python tools/ab_kernels.py --base /tmp/bn_base/bnfast --accuracy

--base is the package directory of another build (for example main's, built in a copy of
its checkout with ``python setup.py build_ext --inplace``); it is imported under the name
``bnfast_base`` next to the ``bnfast`` found on sys.path (this checkout, built in place).
Each repetition calls every contender once, in a rotating order, so slow phases of a shared
machine hit them all alike; the table gives the median per call and the min-max spread over
the repetitions, and the ratios of the medians.  Calls are made without ``out=`` and with
running statistics, as a training loop makes them.

--accuracy prints max |y - y_ref| of both builds on float32 data with a large offset
(offset + N(0, 1)) in every layout, against the float64 reference of the same float32 values.
"""

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import bnfast
from bnfast import reference as ref

CASES = [  # (name, shape, axis)
    ("(4096,1024)", (4096, 1024), 1),
    ("(65536,256)", (65536, 256), 1),
    ("NCHW (32,64,56,56)", (32, 64, 56, 56), 1),
    ("NHWC (32,56,56,64)", (32, 56, 56, 64), -1),
    ("(256,64)", (256, 64), 1),
]
ACCURACY_LAYOUTS = [  # the layouts of tests/test_accuracy.py
    ("NC", (1_000_000, 2), 1),
    ("NCHW", (4, 2, 500, 500), 1),
    ("NHWC", (4, 500, 500, 2), -1),
    ("1d", (1_000_000,), 0),
]


def load_base(path):
    """Import the package directory `path` as `bnfast_base`."""
    path = Path(path).resolve()
    spec = importlib.util.spec_from_file_location(
        "bnfast_base", path / "__init__.py", submodule_search_locations=[str(path)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["bnfast_base"] = module
    spec.loader.exec_module(module)
    return module


def bnfast_calls(bn, x, dy, gamma, beta, axis, n_threads):
    """Training forward, inference and backward of module `bn`, as zero-argument callables."""
    C = x.shape[axis]
    rm, rv = np.zeros(C), np.ones(C)
    _, mean, invstd = bn.batch_norm_forward(x, gamma, beta, axis=axis, n_threads=n_threads)
    return {
        "forward": lambda: bn.batch_norm_forward(x, gamma, beta, axis=axis, running_mean=rm,
                                                 running_var=rv, n_threads=n_threads),
        "inference": lambda: bn.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis,
                                                     n_threads=n_threads),
        "backward": lambda: bn.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis,
                                                   n_threads=n_threads),
    }


def torch_calls(torch, x, dy, gamma, beta, axis):
    """The same three operations in PyTorch (channels_last for a channels-last layout)."""
    F = torch.nn.functional

    def as_torch(a):
        t = torch.from_numpy(a)
        return t.permute(0, 3, 1, 2) if a.ndim == 4 and axis in (-1, 3) else t

    xt, dyt = as_torch(x), as_torch(dy)
    w, b = torch.from_numpy(gamma), torch.from_numpy(beta)
    C = gamma.shape[0]
    rm, rv = torch.zeros(C), torch.ones(C)
    _, save_mean, save_invstd = torch.ops.aten.native_batch_norm(xt, w, b, None, None, True,
                                                                  0.1, 1e-5)
    return {
        "forward": lambda: F.batch_norm(xt, rm, rv, w, b, training=True),
        "inference": lambda: F.batch_norm(xt, rm, rv, w, b, training=False),
        "backward": lambda: torch.ops.aten.native_batch_norm_backward(
            dyt, xt, w, rm, rv, save_mean, save_invstd, True, 1e-5, [True, True, True]),
    }


def interleaved(fns, reps, min_time):
    """Per-call seconds of each callable: `reps` rounds, each callable once per round (as many
    calls as make min_time), the order rotated every round."""
    names = list(fns)
    inner = {}
    for name in names:  # warm up, and size the inner loop
        fns[name]()
        t0 = time.perf_counter()
        fns[name]()
        inner[name] = max(1, int(min_time / max(time.perf_counter() - t0, 1e-7)))
    times = {name: [] for name in names}
    for r in range(reps):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, n = fns[name], inner[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[name].append((time.perf_counter() - t0) / n)
    return times


def fmt(ts):
    med = statistics.median(ts)
    unit, k = ("ms", 1e3) if med >= 1e-3 else ("us", 1e6)
    return f"{med * k:.3g} ({min(ts) * k:.3g}-{max(ts) * k:.3g}) {unit}"


def timing(args, base):
    try:
        import torch
    except ImportError:
        torch = None
    rng = np.random.default_rng(0)
    print(f"reps={args.reps}; median per call (min-max over reps); ratios of medians")
    print("| case | threads | op | base | this branch | torch | branch/base | branch/torch |"
          " base/torch |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, shape, axis in CASES:
        x = (rng.standard_normal(shape, dtype=np.float32) * 2 + 3).astype(np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        C = shape[axis]
        gamma = rng.uniform(0.5, 2, C).astype(np.float32)
        beta = rng.uniform(-1, 1, C).astype(np.float32)
        for nt in args.threads:
            if torch is not None:
                torch.set_num_threads(nt)
                tcalls = torch_calls(torch, x, dy, gamma, beta, axis)
            new = bnfast_calls(bnfast, x, dy, gamma, beta, axis, nt)
            old = bnfast_calls(base, x, dy, gamma, beta, axis, nt)
            for op in args.ops:
                fns = {"base": old[op], "branch": new[op]}
                if torch is not None:
                    fns["torch"] = tcalls[op]
                t = interleaved(fns, args.reps, args.min_time)
                med = {k: statistics.median(v) for k, v in t.items()}
                tt = t.get("torch")
                print(f"| {name} | {nt} | {op} | {fmt(t['base'])} | {fmt(t['branch'])} | "
                      f"{fmt(tt) if tt else '-'} | {med['branch'] / med['base']:.2f} | "
                      + (f"{med['branch'] / med['torch']:.2f} | {med['base'] / med['torch']:.2f} |"
                         if tt else "- | - |"), flush=True)


def accuracy(base):
    rng = np.random.default_rng(1)
    print("max |y - y_ref| (forward y / inference y), float32 offset + N(0, 1)")
    print("| layout | offset | base forward | branch forward | base inference |"
          " branch inference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, shape, axis in ACCURACY_LAYOUTS:
        for offset in (1e4, 1e5, 1e6):
            x = (offset + rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
            ry = ref.batch_norm_forward(x, axis=axis)[0]
            rmean, rvar = ref.moments(x, axis=axis)
            ryi = ref.batch_norm_inference(x, rmean, rvar, axis=axis)
            row = []
            for bn in (base, bnfast):
                row.append(np.max(np.abs(bn.batch_norm_forward(x, axis=axis)[0] - ry)))
            for bn in (base, bnfast):
                yi = bn.batch_norm_inference(x, rmean, rvar, axis=axis)
                row.append(np.max(np.abs(yi - ryi)))
            print(f"| {name} | {offset:.0e} | " + " | ".join(f"{v:.2e}" for v in row) + " |",
                  flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", required=True, help="package directory of the other build")
    parser.add_argument("--threads", type=int, nargs="+", default=[2, 1])
    parser.add_argument("--ops", nargs="+", default=["forward", "inference", "backward"])
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--min-time", type=float, default=0.02,
                        help="seconds of calls per contender per round")
    parser.add_argument("--accuracy", action="store_true")
    args = parser.parse_args()
    base = load_base(args.base)
    if args.accuracy:
        accuracy(base)
    else:
        timing(args, base)


if __name__ == "__main__":
    main()
