"""Benchmark bnfast.torch in PyTorch training on the CPU, and the accuracy on offset data.

Usage::

    PYTHONPATH=. python tools/bench_torch_model.py [--repeats 15] [--threads 1 2] [--quick]

Three tables, printed as Markdown:

1. A training step (forward, backward, zero_grad) of a small ResNet-style block
   conv3x3 -> BN -> ReLU -> conv3x3 -> BN -> ReLU (float32), NCHW and channels_last, with
   torch's BatchNorm2d and with bnfast's (``bnfast.torch.convert``).
2. The BN layer alone, forward plus backward, the same two ways.
3. Accuracy on offset data, float32 ``1e4 + N(0, 1)``: the relative error of the variance
   (the running variance with momentum 1, i.e. the batch's unbiased variance) against the
   float64 NumPy reference, for torch's and bnfast's kernels.

Each thread count runs in a fresh process with OMP_NUM_THREADS and torch.set_num_threads set
to it (bnfast.torch passes torch.get_num_threads() to the kernels, so both use the same
count). Within a process the variants are interleaved: every repeat times each variant once,
in turn, so drifting machine load hits all of them alike. Times are medians over the repeats
with the interquartile range; the ratio column is the median (IQR) of the per-repeat ratios
of the two runs made back to back, which drifting load disturbs less.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

BLOCK_SHAPE = (32, 64, 28, 28)   # the block's input, (N, C, H, W), float32: 6.1 MiB
BN_SHAPES = [(32, 64, 56, 56), (64, 256, 14, 14), (4096, 1024)]  # BN alone


def _block(torch, channels):
    return torch.nn.Sequential(
        torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(channels), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        torch.nn.BatchNorm2d(channels), torch.nn.ReLU(inplace=True))


def _time(fn, inner):
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    return (time.perf_counter() - t0) / inner


def _interleaved(cases, repeats, inner):
    """{name: [seconds per call, one per repeat]}, each repeat running every case in turn."""
    for fn in cases.values():  # warm up: allocations, oneDNN primitives, page faults
        for _ in range(2):
            fn()
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(_time(fn, inner))
    return times


def worker(threads, repeats, quick):
    import torch
    import bnfast.torch as bt

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    shape = (8, 64, 28, 28) if quick else BLOCK_SHAPE
    results = {"threads": threads, "torch_threads": torch.get_num_threads(), "model": {},
               "bn": {}, "block_shape": shape}
    for fmt_name, fmt in (("NCHW", torch.contiguous_format),
                          ("channels_last", torch.channels_last)):
        x = torch.randn(shape).contiguous(memory_format=fmt)
        theirs = _block(torch, shape[1]).to(memory_format=fmt)
        ours = bt.convert(_block(torch, shape[1]).to(memory_format=fmt))
        ours.load_state_dict(theirs.state_dict())

        def step(model):
            def run():
                model.zero_grad(set_to_none=True)
                model(x).sum().backward()
            return run

        times = _interleaved({"torch": step(theirs), "bnfast": step(ours)}, repeats, 1)
        results["model"][fmt_name] = times

    for bn_shape in BN_SHAPES[:1] if quick else BN_SHAPES:
        layouts = [("NC", torch.contiguous_format)] if len(bn_shape) == 2 else [
            ("NCHW", torch.contiguous_format), ("channels_last", torch.channels_last)]
        for fmt_name, fmt in layouts:
            x = torch.randn(bn_shape).contiguous(memory_format=fmt).requires_grad_(True)
            dy = torch.randn(bn_shape).contiguous(memory_format=fmt)
            cls_t = torch.nn.BatchNorm1d if len(bn_shape) == 2 else torch.nn.BatchNorm2d
            cls_b = bt.BatchNorm1d if len(bn_shape) == 2 else bt.BatchNorm2d
            layers = {"torch": cls_t(bn_shape[1]), "bnfast": cls_b(bn_shape[1])}

            def fwd_bwd(layer):
                def run():
                    x.grad = None
                    layer.zero_grad(set_to_none=True)
                    layer(x).backward(dy)
                return run

            times = _interleaved({k: fwd_bwd(v) for k, v in layers.items()}, repeats, 1)
            results["bn"][f"{fmt_name} {bn_shape}"] = times
    return results


def accuracy():
    """Relative error of the float32 batch variance on 1e4 + N(0, 1) data, per layout."""
    import torch
    import bnfast.torch as bt
    from bnfast import reference

    torch.manual_seed(0)
    bt.set_torch_handoff(False)  # bnfast's kernels at every size: their accuracy is measured
    rows = []
    for name, shape, fmt in (("NC", (4096, 64), torch.contiguous_format),
                             ("NCHW", (32, 64, 28, 28), torch.contiguous_format),
                             ("channels_last", (32, 64, 28, 28), torch.channels_last)):
        x64 = torch.randn(shape, dtype=torch.float64) + 1e4
        x = x64.float().contiguous(memory_format=fmt)
        C = shape[1]
        xa = np.ascontiguousarray(x.double().numpy())
        *_, want = reference.batch_norm_forward(xa, axis=1, momentum=1.0,
                                                running_mean=np.zeros(C),
                                                running_var=np.ones(C))
        row = {"layout": name, "shape": shape}
        for impl, fn in (("torch", torch.nn.functional.batch_norm),
                         ("bnfast", bt.batch_norm)):
            rv = torch.ones(C)
            fn(x, torch.zeros(C), rv, training=True, momentum=1.0)
            row[impl] = float(np.max(np.abs(rv.double().numpy() - want) / want))
        rows.append(row)
    return rows


def _fmt_time(seconds):
    ms = np.asarray(seconds) * 1e3
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return med, f"{med:.2f} ({q1:.2f}-{q3:.2f})"


def _ratio(times):
    """torch / bnfast per repeat (the two ran back to back): median (IQR)."""
    r = np.asarray(times["torch"]) / np.asarray(times["bnfast"])
    q1, med, q3 = np.percentile(r, [25, 50, 75])
    return f"{med:.2f} ({q1:.2f}-{q3:.2f})"


def report(all_results, acc):
    shape = tuple(all_results[0]["block_shape"])
    lines = ["### Training step of the block (conv-BN-ReLU x2, float32, "
             f"input {shape}), ms: median (IQR)", "",
             "| layout | threads | torch BN | bnfast BN | torch / bnfast, paired |",
             "|---|---:|---:|---:|---:|"]
    for res in all_results:
        for layout, times in res["model"].items():
            t = _fmt_time(times["torch"])[1]
            b = _fmt_time(times["bnfast"])[1]
            lines.append(f"| {layout} | {res['threads']} | {t} | {b} | {_ratio(times)} |")
    lines += ["", "### BN layer alone, forward + backward (float32), ms: median (IQR)", "",
              "| layout and shape | threads | torch | bnfast | torch / bnfast, paired |",
              "|---|---:|---:|---:|---:|"]
    for res in all_results:
        for key, times in res["bn"].items():
            t = _fmt_time(times["torch"])[1]
            b = _fmt_time(times["bnfast"])[1]
            lines.append(f"| {key} | {res['threads']} | {t} | {b} | {_ratio(times)} |")
    lines += ["", "### Accuracy: float32 batch variance of 1e4 + N(0, 1) data, max relative "
              "error against the float64 reference", "",
              "| layout | shape | torch | bnfast |", "|---|---|---:|---:|"]
    for row in acc:
        lines.append(f"| {row['layout']} | {tuple(row['shape'])} | {row['torch']:.1e} | "
                     f"{row['bnfast']:.1e} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke test")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.repeats, args.quick)))
        return
    results = []
    for n in args.threads:
        env = dict(os.environ, OMP_NUM_THREADS=str(n))
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(n),
               "--repeats", str(args.repeats)] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    import torch
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs; {args.repeats} repeats, "
          "interleaved\n")
    print(report(results, accuracy()))


if __name__ == "__main__":
    main()
