"""Where bnfast's kernels overtake PyTorch's batch norm kernel: the crossover that
``bnfast.torch``'s hand-off to PyTorch uses (bnfast/torch/_policy.py, docs/torch.md).

Usage::

    PYTHONPATH=. python tools/bench_torch_crossover.py [--rounds 9] [--threads 1]
        [--clock wall|thread] [--layouts NC NCHW NHWC] [--modes train eval]
        [--dtype float32|float64|float16|bfloat16] [--large] [--compiled]

For each layout (NC: (N, 64); NCHW and NHWC (channels_last): (N, 64, 8, 8)) and mode
(training forward+backward, eval forward under no_grad) it doubles N and times bnfast's layer
with the hand-off off (``set_torch_handoff(False)``: always bnfast's kernels) against
PyTorch's layer, interleaved as tools/bench_torch_calls.py does, and prints the median ratio
bnfast/torch with its 25th-75th percentiles per size, then the smallest number of values per
call from which the median ratio stays at or below 1.

``--compiled``: the same for torch.compile (inductor) of batch norm followed by ReLU (what
inductor fuses), bnfast's operators against inductor's own batch norm, over fewer and larger
shapes (every shape and mode is a compilation of each variant, seconds apiece): the
crossover of the compiled path (``_policy._COMPILED_CROSSOVERS``).

``--large``: sizes from 0.4M to 13M values, where the half-precision calls cross
(``--dtype float16`` or ``bfloat16``; the layers are converted to that dtype, as
``model.to(torch.bfloat16)`` does).
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
# --large: past the float32 crossovers, where half-precision calls may cross (0.4M-13M values).
LARGE_SHAPES = {
    "NC": [(n, 64) for n in (8192, 16384, 32768, 65536, 131072, 262144)],
    "NCHW": [(n, 64, 28, 28) for n in (8, 16, 32)] + [(n, 64, 56, 56) for n in (16, 32, 64)],
    "NHWC": [(n, 64, 28, 28) for n in (8, 16, 32)] + [(n, 64, 56, 56) for n in (16, 32, 64)],
}
COMPILED_SHAPES = {
    "NC": [(n, 64) for n in (256, 2048, 16384, 131072)],
    "NCHW": [(n, 64, 14, 14) for n in (2, 8, 32, 128)],
    "NHWC": [(n, 64, 14, 14) for n in (2, 8, 32, 128)],
}


def compiled_case(torch, bt, shape, channels_last, dtype, rounds, clock):
    """{mode: {"torch": seconds per call, "bnfast": ...}} for compiled BN -> ReLU."""
    x = torch.randn(shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    dy = torch.randn_like(x)
    layer = torch.nn.BatchNorm1d if len(shape) == 2 else torch.nn.BatchNorm2d
    out = {}
    for mode in ("train", "eval"):
        fns = {}
        for name in ("torch", "bnfast"):
            block = torch.nn.Sequential(layer(shape[1], dtype=dtype), torch.nn.ReLU())
            if name == "bnfast":
                block = bt.convert(block)
            block.train(mode == "train")
            torch._dynamo.reset()
            run = torch.compile(block)
            if mode == "train":
                def fn(run=run):
                    x.grad = None
                    run(x).backward(dy)
            else:
                def fn(run=run):
                    with torch.no_grad():
                        run(x)
            for _ in range(3):
                fn()
            fns[name] = fn
        times = {k: [] for k in fns}
        for r in range(rounds):
            for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
                t0 = clock()
                fns[k]()
                times[k].append(clock() - t0)
        out[mode] = {k: np.asarray(v) for k, v in times.items()}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=["wall", "thread"], default="wall")
    parser.add_argument("--batch-ms", type=float, default=2.0)
    parser.add_argument("--layouts", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--modes", nargs="+", choices=["train", "eval"],
                        default=["train", "eval"])
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--large", action="store_true",
                        help="larger shapes (0.4M-13M values): the half-precision crossovers")
    parser.add_argument("--compiled", action="store_true",
                        help="torch.compile (inductor): bnfast's operators vs inductor's BN")
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
          f"clock, {args.rounds} rounds{', compiled (inductor)' if args.compiled else ''}; "
          "load average before "
          f"{tuple(round(v, 2) for v in os.getloadavg())}")
    print("| layout | mode | shape | values | torch (us) | bnfast / torch |")
    print("|---|---|---|---:|---:|---:|")
    crossover = {}
    for layout in args.layouts:
        rows = {mode: [] for mode in args.modes}
        grid = COMPILED_SHAPES if args.compiled else LARGE_SHAPES if args.large else SHAPES
        for shape in grid[layout]:
            dim = 1 if len(shape) == 2 else 2
            if args.compiled:
                res = compiled_case(torch, bt, shape, layout == "NHWC", dtype, args.rounds,
                                    calls.CLOCK)
            else:
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
