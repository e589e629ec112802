"""End to end: a ResNet-style model's training step with PyTorch's batch norm and with
bnfast's (``bnfast.torch.convert``), eager and compiled, at 1 and 2 threads.

Usage::

    PYTHONPATH=. python tools/bench_torch_resnet.py [--threads 1 2] [--rounds 7]
        [--batch 16] [--size 32] [--width 32] [--formats NCHW channels_last]
        [--modes eager compiled] [--autocast bfloat16] [--quick]

The model is written here (no torchvision): a ResNet-18-like stack of basic blocks (conv3x3
-> BN -> ReLU -> conv3x3 -> BN, plus the identity or a strided 1x1 conv -> BN, then ReLU), four
stages of two blocks with widths width, 2 width, 4 width, 8 width, global average pooling and
a linear layer: 20 batch norm layers. A step is forward, cross-entropy loss, backward and an
SGD update; "eval" is a forward under no_grad in eval mode. ``--autocast bfloat16`` runs the
forwards under ``torch.autocast("cpu", dtype=torch.bfloat16)``: the convolutions compute in
bfloat16, and batch norm receives bfloat16 input with float32 parameters.

Each thread count runs in a fresh process (OMP_NUM_THREADS and torch.set_num_threads set to
it). Within a process, "torch" and "bnfast" run the same weights and data; every round times
each variant once in turn (interleaved, the order alternating), after warm-up steps that also
compile the compiled variants (inductor, compile time excluded). ``--clock thread`` (1 thread
only) times the main thread's CPU time instead of the wall clock: on a loaded machine it
keeps the spread far smaller. Each line gives the median
time of PyTorch's step and the median [25th-75th percentile] of the per-round ratio
bnfast / torch. The load average is printed with the results: on a loaded machine, rerun.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np


def build(torch, width, classes=10):
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x):
            out = torch.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return torch.relu(out + (x if self.down is None else self.down(x)))

    widths = [width, 2 * width, 4 * width, 8 * width]
    layers = [nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
    cin = width
    for i, w in enumerate(widths):
        for j in range(2):
            layers.append(Block(cin, w, 2 if (j == 0 and i > 0) else 1))
            cin = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes)]
    return nn.Sequential(*layers)


def worker(args, threads):
    import copy

    import torch

    import contextlib

    import bnfast.torch as bt

    def autocast():
        if args.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=getattr(torch, args.autocast))

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    fmt = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}
    x0 = torch.randn(args.batch, 3, args.size, args.size)
    target = torch.randint(0, 10, (args.batch,))
    results = []
    for fmt_name in args.formats:
        base = build(torch, args.width).to(memory_format=fmt[fmt_name])
        x = x0.contiguous(memory_format=fmt[fmt_name])
        for mode in args.modes:
            models = {"torch": copy.deepcopy(base), "bnfast": bt.convert(copy.deepcopy(base))}
            steps, evals = {}, {}
            for name, model in models.items():
                if mode == "compiled":
                    torch._dynamo.reset()
                    run = torch.compile(model)
                    run_eval = run
                else:
                    run = run_eval = model
                opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

                def step(model=model, run=run, opt=opt):
                    model.train()
                    with autocast():
                        loss = torch.nn.functional.cross_entropy(run(x), target)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()

                def evaluate(model=model, run=run_eval):
                    model.eval()
                    with torch.no_grad(), autocast():
                        run(x)

                steps[name], evals[name] = step, evaluate
            for kind, fns in (("train", steps), ("eval", evals)):
                for fn in fns.values():  # warm-up (compiles the compiled variants)
                    for _ in range(args.warmup):
                        fn()
                times = {name: [] for name in fns}
                order = list(fns)
                clock = time.thread_time if args.clock == "thread" else time.perf_counter
                for r in range(args.rounds):
                    for name in (order if r % 2 == 0 else order[::-1]):
                        t0 = clock()
                        fns[name]()
                        times[name].append(clock() - t0)
                results.append({"format": fmt_name, "mode": mode, "kind": kind,
                                "threads": threads, "torch": times["torch"],
                                "bnfast": times["bnfast"]})
    return {"results": results, "load": os.getloadavg()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--formats", nargs="+", default=["NCHW", "channels_last"],
                        choices=["NCHW", "channels_last"])
    parser.add_argument("--modes", nargs="+", default=["eager", "compiled"],
                        choices=["eager", "compiled"])
    parser.add_argument("--clock", choices=["wall", "thread"], default="wall",
                        help="thread: the main thread's CPU time, which a loaded machine "
                        "disturbs less (with --threads 1 only)")
    parser.add_argument("--autocast", choices=["bfloat16"],
                        help="run the forwards under torch.autocast('cpu', dtype=...)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: width 8, 16x16 input, 2 rounds, 1 warm-up")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.width, args.size, args.rounds, args.warmup = 8, 16, 2, 1
    if args.clock == "thread" and args.threads != [1] and args.worker is None:
        parser.error("--clock thread measures one thread: use it with --threads 1")
    if args.worker is not None:
        print(json.dumps(worker(args, args.worker)))
        return
    import torch

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; batch {args.batch}, input "
          f"{args.size}x{args.size}, width {args.width}; {args.rounds} interleaved rounds, "
          f"{args.clock} clock; autocast {args.autocast or 'off'}; "
          f"load average before {tuple(round(v, 2) for v in os.getloadavg())}")
    print("| layout | mode | step | threads | torch (ms) | bnfast / torch |")
    print("|---|---|---|---:|---:|---:|")
    for n in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(n))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(n)] + [
            a for a in (argv if argv is not None else sys.argv[1:])
            if a != "--worker"]
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        data = json.loads(out.strip().splitlines()[-1])
        for row in data["results"]:
            t, b = np.asarray(row["torch"]), np.asarray(row["bnfast"])
            p25, med, p75 = np.percentile(b / t, [25, 50, 75])
            print(f"| {row['format']} | {row['mode']} | {row['kind']} | {row['threads']} | "
                  f"{np.median(t) * 1e3:.1f} | {med:.2f} [{p25:.2f}-{p75:.2f}] |", flush=True)
        print(f"(load average after the {n}-thread process: "
              f"{tuple(round(v, 2) for v in data['load'])})")


if __name__ == "__main__":
    main()
