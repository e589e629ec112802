"""Where bnfast's kernels overtake PyTorch's batch norm kernel: the crossover that
``bnfast.torch``'s hand-off to PyTorch uses (bnfast/torch/_policy.py, docs/torch.md).

Usage::

    PYTHONPATH=. python tools/bench_torch_crossover.py [--rounds 9] [--threads 1]
        [--clock wall|thread] [--layouts NC NCHW NHWC] [--modes train eval]

For each layout (NC: (N, 64); NCHW and NHWC (channels_last): (N, 64, 8, 8)) and mode
(training forward+backward, eval forward under no_grad) it doubles N and times bnfast's layer
with the hand-off off (``set_torch_handoff(False)``: always bnfast's kernels) against
PyTorch's layer, interleaved as tools/bench_torch_calls.py does, and prints the median ratio
bnfast/torch with its 25th-75th percentiles per size, then the smallest number of values per
call from which the median ratio stays at or below 1.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_torch_calls as calls  # noqa: E402

SHAPES = {
    "NC": [(n, 64) for n in (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)],
    "NCHW": [(n, 64, 8, 8) for n in (1, 2, 4, 8, 16, 32, 64, 128)],
    "NHWC": [(n, 64, 8, 8) for n in (1, 2, 4, 8, 16, 32, 64, 128)],
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["wall", "thread"], default="wall")
    parser.add_argument("--batch-ms", type=float, default=2.0)
    parser.add_argument("--layouts", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--modes", nargs="+", choices=["train", "eval"],
                        default=["train", "eval"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import time

    import torch

    import bnfast.torch as bt

    if args.clock == "thread":
        if args.threads != 1:
            parser.error("--clock thread measures one thread: use it with --threads 1")
        calls.CLOCK = time.thread_time
    torch.set_num_threads(args.threads)
    bt.set_torch_handoff(False)
    dtype = getattr(torch, args.dtype)
    impls = {"torch": torch.nn, "bnfast": bt}
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.dtype}, {args.clock} "
          f"clock, {args.rounds} rounds; load average before "
          f"{tuple(round(v, 2) for v in os.getloadavg())}")
    print("| layout | mode | shape | values | torch (us) | bnfast / torch |")
    print("|---|---|---|---:|---:|---:|")
    crossover = {}
    for layout in args.layouts:
        rows = {mode: [] for mode in args.modes}
        for shape in SHAPES[layout]:
            dim = 1 if len(shape) == 2 else 2
            res = calls.run_case(torch, impls, dim, shape, layout == "NHWC", dtype,
                                 args.rounds, args.batch_ms / 1e3)
            for mode in args.modes:
                t = res[mode]
                ratio = np.median(t["bnfast"] / t["torch"])
                rows[mode].append((int(np.prod(shape)), ratio))
                print(f"| {layout} | {mode} | {shape} | {int(np.prod(shape))} | "
                      f"{np.median(t['torch']) * 1e6:.1f} | "
                      f"{calls.fmt_ratio(t['bnfast'], t['torch'])} |", flush=True)
        for mode, pts in rows.items():
            # The smallest size from which every larger size measured has a median <= 1.
            above = [n for n, r in pts if r > 1.0]
            later = [n for n, _ in pts if not above or n > max(above)]
            crossover[(layout, mode)] = later[0] if later else None
    print()
    for (layout, mode), n in crossover.items():
        print(f"crossover {layout} {mode}: "
              + (f"bnfast from {n} values per call" if n else "torch faster at every size"))
    print(f"load average after {tuple(round(v, 2) for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
