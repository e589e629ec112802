"""Per-call cost of bnfast.torch's layers against PyTorch's own, side by side (issue 20).

Usage::

    PYTHONPATH=. python tools/bench_torch_calls.py [--rounds 15] [--threads 1]
        [--old REF] [--cases NAME ...] [--dtype float32|float64|float16|bfloat16]

For every case (a layer and an input shape and layout) it times, on the same tensors:

- ``train``: ``layer(x).backward(dy)`` in training mode, gradients reset before each call
  (the forward and backward a training step runs for each BN layer);
- ``eval``: ``layer(x)`` in eval mode under ``torch.no_grad()``.

The implementations are PyTorch's layer (``torch``), bnfast's from this tree (``bnfast``),
and with ``--old REF`` bnfast.torch as it was at git revision REF (its ``torch.py`` and
``_torch_grad.py`` loaded from ``git show``, over this tree's kernels and NumPy API).

Every round times each implementation in turn (interleaved; the order alternates between
rounds) for a batch of calls long enough to be measured (about 2 ms); each figure is the
median over the rounds of the per-round ratio to PyTorch, with its 25th-75th percentiles,
since a ratio of two timings taken back to back is what drifting load disturbs least. The
load average is printed before and after: on a loaded machine the spreads widen.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time

import numpy as np

# name: (layer dimension, shape, channels_last)
CASES = {
    "1d-32": (1, (32, 64), False),
    "1d-256": (1, (256, 64), False),
    "1d-4096": (1, (4096, 64), False),
    "2d-small": (2, (8, 16, 8, 8), False),
    "2d-small-cl": (2, (8, 16, 8, 8), True),
    "2d-large": (2, (32, 64, 56, 56), False),
    "2d-large-cl": (2, (32, 64, 56, 56), True),
}


def load_old(ref: str):
    """bnfast.torch at git revision ``ref``, as a module over this tree's bnfast."""
    import bnfast

    root = os.path.dirname(os.path.dirname(os.path.abspath(bnfast.__file__)))

    def show(path: str) -> str:
        return subprocess.run(["git", "show", f"{ref}:{path}"], cwd=root, check=True,
                              capture_output=True, text=True).stdout

    def load(name: str, source: str):
        spec = importlib.util.spec_from_loader(f"bnfast.{name}", loader=None)
        module = importlib.util.module_from_spec(spec)
        module.__package__ = "bnfast"
        sys.modules[spec.name] = module
        exec(compile(source, f"<{ref}:{name}>", "exec"), module.__dict__)
        return module

    source = show("bnfast/torch.py")
    try:
        grad = show("bnfast/_torch_grad.py")
    except subprocess.CalledProcessError:
        grad = None
    if grad is not None:
        load("_bench_old_torch_grad", grad)
        source = source.replace("from ._torch_grad import", "from ._bench_old_torch_grad import")
    return load("_bench_old_torch", source)


def make_layers(torch, impls, dim, shape, dtype):
    C = shape[1]
    layers = {}
    for name, module in impls.items():
        cls = getattr(module, f"BatchNorm{dim}d")
        layers[name] = cls(C, dtype=dtype)
    for layer in layers.values():
        layer.load_state_dict(layers["torch"].state_dict())
    return layers


CLOCK = time.perf_counter


def calls_for(fn, target_s=2e-3):
    """How many calls of ``fn`` make a measurable batch (about ``target_s``)."""
    fn()
    t0 = CLOCK()
    fn()
    one = max(CLOCK() - t0, 1e-7)
    return int(min(max(target_s / one, 1), 2000))


def run_case(torch, impls, dim, shape, channels_last, dtype, rounds, batch_s=2e-3):
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(shape, generator=gen, dtype=dtype) * 2 + 0.5)
    dy = torch.randn(shape, generator=gen, dtype=dtype)
    if channels_last:
        x, dy = x.contiguous(memory_format=fmt), dy.contiguous(memory_format=fmt)
    x.requires_grad_(True)
    layers = make_layers(torch, impls, dim, shape, dtype)

    def train(layer):
        def run():
            x.grad = None
            layer.weight.grad = layer.bias.grad = None
            layer(x).backward(dy)
        return run

    def evaluate(layer):
        def run():
            with torch.no_grad():
                layer(x)
        return run

    out = {}
    for mode, make in (("train", train), ("eval", evaluate)):
        for layer in layers.values():
            layer.train(mode == "train")
        fns = {name: make(layer) for name, layer in layers.items()}
        n = max(calls_for(fn, batch_s) for fn in fns.values())
        for fn in fns.values():  # warm-up: allocator, first-call paths
            for _ in range(min(n, 20)):
                fn()
        times = {name: [] for name in fns}
        order = list(fns)
        for r in range(rounds):
            for name in (order if r % 2 == 0 else order[::-1]):
                fn = fns[name]
                t0 = CLOCK()
                for _ in range(n):
                    fn()
                times[name].append((CLOCK() - t0) / n)
        out[mode] = {k: np.asarray(v) for k, v in times.items()}
    return out


def fmt_ratio(a, b):
    r = a / b
    p25, med, p75 = np.percentile(r, [25, 50, 75])
    return f"{med:.2f} [{p25:.2f}-{p75:.2f}]"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--old", metavar="REF", help="also time bnfast.torch at git REF")
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--batch-ms", type=float, default=2.0,
                        help="time of one batch of calls (default 2 ms)")
    parser.add_argument("--clock", choices=["wall", "thread"], default="wall",
                        help="thread: the calling thread's CPU time, which a loaded machine "
                        "disturbs less (1 thread only: other threads' work is not counted)")
    parser.add_argument("--handoff", choices=["on", "off"], default="on",
                        help="bnfast.torch.set_torch_handoff (off: bnfast's kernels always)")
    args = parser.parse_args(argv)
    global CLOCK
    if args.clock == "thread":
        if args.threads != 1:
            parser.error("--clock thread measures one thread: use it with --threads 1")
        CLOCK = time.thread_time
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    import bnfast.torch as bt

    torch.set_num_threads(args.threads)
    bt.set_torch_handoff(args.handoff == "on")
    impls = {"torch": torch.nn, "bnfast": bt}
    if args.old:
        impls["old"] = load_old(args.old)
    dtype = getattr(torch, args.dtype)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.dtype}, "
          f"{args.rounds} interleaved rounds of {args.batch_ms:g} ms, {args.clock} clock, "
          f"hand-off {args.handoff}; load average before "
          f"{tuple(round(v, 2) for v in os.getloadavg())}")
    others = [k for k in impls if k != "torch"]
    head = "| layer, input | mode | torch (us) | " + " | ".join(
        f"{k} / torch" for k in others) + " |"
    print(head)
    print("|---|---|---:|" + "---:|" * len(others))
    for name in args.cases:
        dim, shape, cl = CASES[name]
        res = run_case(torch, impls, dim, shape, cl, dtype, args.rounds, args.batch_ms / 1e3)
        label = f"BatchNorm{dim}d {shape}" + (" channels_last" if cl else "")
        for mode, times in res.items():
            cells = [fmt_ratio(times[k], times["torch"]) for k in others]
            print(f"| {label} | {mode} | {np.median(times['torch']) * 1e6:.1f} | "
                  + " | ".join(cells) + " |", flush=True)
    print(f"load average after {tuple(round(v, 2) for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
