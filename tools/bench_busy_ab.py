"""Two builds of bnfast side by side on a busy machine: default threads and one thread each,
and PyTorch, beside K spinning processes (the busy table of ``python -m bnfast bench --busy``,
with a second build in the same run).

Usage (each build's package folder, built in place):

    python tools/bench_busy_ab.py --base /path/to/old/bnfast --new bnfast --busy 0 2 4
        [--rounds 30] [--min-time 0.005] [--quick]

Every call is timed on its own (``bnfast.bench.timing.measure_calls``: medians and 90th
percentiles per call, contenders interleaved round by round), calls made as users make them:
no ``out=``, running statistics updated. The spinners are the bench's own (bounded, stopped
on exit). Prints one table per spinner count, with the load average before and after.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ab import calls, load, torch_call  # noqa: E402  (the calls as the A/B times them)


CASES = [((1024, 64), "NC", "float32"), ((4096, 64), "NC", "float32"),
         ((20000, 100), "NC", "float64"), ((4, 16, 32, 32), "NCHW", "float32"),
         ((32, 64, 56, 56), "NCHW", "float32"), ((32, 64, 80, 80), "NCHW", "float32")]
QUICK = [((4096, 64), "NC", "float32"), ((20000, 100), "NC", "float64"),
         ((32, 64, 56, 56), "NCHW", "float32")]


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 2, 4])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--min-time", type=float, default=0.005)
    ap.add_argument("--ops", nargs="+", default=["train", "infer", "backward"])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-torch", action="store_true")
    a = ap.parse_args(argv)
    # bnfast's own bench helpers first: a build imported under another name registers its
    # compiled module as bnfast._kernels too.
    from bnfast.bench.spinners import Spinners
    from bnfast.bench.timing import measure_calls
    mods = {"base": load("bnbusybase", a.base), "new": load("bnbusynew", a.new)}
    torch = None
    if not a.no_torch:
        try:
            import torch
        except ImportError:
            torch = None
    rng = np.random.default_rng(0)
    names = ["base def", "base 1t", "new def", "new 1t"] + (["torch"] if torch else [])
    for k in a.busy:
        before = os.getloadavg()
        with Spinners(k):
            time.sleep(0.5 if k else 0.0)
            print(f"\n## k = {k} spinning processes (load average before {before[0]:.2f})")
            print("| op | shape | dtype | MiB | " + " | ".join(
                f"{n} med (p90)" for n in names) + " | new def/1t | new p90/med | "
                "base def/1t | new def/torch |")
            print("|" + " --- |" * (len(names) + 8))
            for shape, layout, dtype in (QUICK if a.quick else CASES):
                x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
                dy = rng.standard_normal(shape).astype(dtype)
                C = shape[1]
                g = rng.uniform(0.5, 1.5, C).astype(dtype)
                b = rng.standard_normal(C).astype(dtype)
                for op in a.ops:
                    fs = {}
                    for tag, mod in mods.items():
                        fs[f"{tag} def"] = calls(mod, op, x, dy, g, b, 1, None)
                        fs[f"{tag} 1t"] = calls(mod, op, x, dy, g, b, 1, 1)
                    if torch is not None:
                        fs["torch"] = torch_call(torch, op, x, dy, g, b, "NCHW")
                    t = measure_calls(fs, a.rounds, a.min_time)
                    med = {n: t[n]["median"] for n in fs}
                    p90 = {n: t[n]["p90"] for n in fs}
                    cells = " | ".join(f"{med[n] * 1e3:.3f} ({p90[n] * 1e3:.2f})" for n in names)
                    tr = f"{med['new def'] / med['torch']:.2f}" if torch else "-"
                    print(f"| {op} | {shape} | {dtype} | {x.nbytes / 2**20:.2f} | {cells} | "
                          f"{med['new def'] / med['new 1t']:.2f} | "
                          f"{p90['new def'] / med['new def']:.2f} | "
                          f"{med['base def'] / med['base 1t']:.2f} | {tr} |", flush=True)
        print(f"(times in ms: median (90th percentile) per call; load average after "
              f"{os.getloadavg()[0]:.2f})")


if __name__ == "__main__":
    main()
