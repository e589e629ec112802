"""PyTorch's and bnfast's accuracy on float32 data with a large offset, by shape and layout.

Usage::

    PYTHONPATH=. python tools/torch_accuracy.py [--offset 1e4] [--threads N] [--seeds 5]

Why the PyTorch headlines of README.md ("off by up to 4.6e2") and docs/torch.md ("about
3e-4") differed on the same ``1e4 + N(0, 1)`` data: they were taken on different shapes, and
PyTorch's error grows with the number of values per channel. This prints, for the (N, C),
NCHW and channels-last (NHWC) layouts and 4,096 to 1,000,000 values per channel, the
training forward's errors against the float64 reference computed from the same float32
values (``bnfast.reference``):

- **variance**: max relative error of the batch variance over the channels. PyTorch's is read
  from ``F.batch_norm``'s running variance with momentum 1 (the unbiased batch variance, in a
  float32 buffer), bnfast's from ``bnfast.moments`` (float64) and from ``bnfast.torch``'s
  ``batch_norm`` into the same float32 buffer as PyTorch's;
- **y**: max absolute error of the normalized output (|y| reaches about 5; a float32 ulp
  there is 4.8e-07).

Each cell is the median [min-max] over ``--seeds`` data sets (seeds 0, 1, ...): PyTorch's
error varies from one data set to the next by a few times. The data are seeded, so the figures
are deterministic for a given build, PyTorch version and thread count (PyTorch's reductions
split the work by thread, and their error changes with the split).
"""
import argparse

import numpy as np

import bnfast
from bnfast import reference

# (label, shape, channel axis in the NumPy array, torch memory format name)
CASES = [
    ("(N, C)", (4096, 64), 1, "contiguous"),
    ("NCHW", (4, 64, 32, 32), 1, "contiguous"),
    ("NHWC", (4, 64, 32, 32), 1, "channels_last"),
    ("(N, C)", (65536, 4), 1, "contiguous"),
    ("NCHW", (16, 4, 64, 64), 1, "contiguous"),
    ("NHWC", (16, 4, 64, 64), 1, "channels_last"),
    ("(N, C)", (1_000_000, 4), 1, "contiguous"),
    ("NCHW", (16, 4, 250, 250), 1, "contiguous"),
    ("NHWC", (16, 4, 250, 250), 1, "channels_last"),
]


def measure(torch, shape, fmt, offset, seed=0):
    """Errors of one case: dict of torch/bnfast variance and y errors."""
    import bnfast.torch as bt

    C = shape[1]
    rng = np.random.default_rng(seed)
    x32 = (offset + rng.standard_normal(shape)).astype(np.float32)   # NCHW order of values
    mean_ref, var_ref = reference.moments(x32, axis=1)               # float64, biased
    m = x32.size // C
    unbiased_ref = var_ref * m / (m - 1)
    y_ref = reference.batch_norm_forward(x32, axis=1, eps=1e-5)[0]

    memory_format = getattr(torch, "channels_last" if fmt == "channels_last"
                            else "contiguous_format")
    xt = torch.from_numpy(x32).contiguous(memory_format=memory_format)
    out = {}
    for name, fn in (("torch", torch.nn.functional.batch_norm), ("bnfast.torch", bt.batch_norm)):
        running_var = torch.ones(C)
        y = fn(xt, torch.zeros(C), running_var, training=True, momentum=1.0, eps=1e-5)
        out[f"{name} var"] = float(np.max(np.abs(running_var.double().numpy() - unbiased_ref)
                                          / unbiased_ref))
        out[f"{name} y"] = float(np.max(np.abs(y.double().numpy() - y_ref)))
    # bnfast's own float64 statistics, on the layout as stored (channels last: axis -1)
    xs = np.ascontiguousarray(np.moveaxis(x32, 1, -1)) if fmt == "channels_last" else x32
    axis = -1 if fmt == "channels_last" else 1
    _, var = bnfast.moments(xs, axis=axis)
    out["bnfast var (float64)"] = float(np.max(np.abs(var - var_ref) / var_ref))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--offset", type=float, default=1e4)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: PyTorch's)")
    parser.add_argument("--seeds", type=int, default=5, help="data sets per case")
    args = parser.parse_args()
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"float32 {args.offset:g} + N(0, 1); torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; bnfast {bnfast.__version__}")
    cols = ["torch var", "bnfast.torch var", "bnfast var (float64)", "torch y", "bnfast.torch y"]
    print("| layout | shape | values per channel | " + " | ".join(cols) + " |")
    print("| --- | --- | ---: | " + " | ".join("---:" for _ in cols) + " |")
    for label, shape, _, fmt in CASES:
        runs = [measure(torch, shape, fmt, args.offset, seed) for seed in range(args.seeds)]
        m = int(np.prod(shape)) // shape[1]
        cells = []
        for c in cols:
            values = [r[c] for r in runs]
            cells.append(f"{np.median(values):.1e} [{min(values):.1e}-{max(values):.1e}]")
        print(f"| {label} | {shape} | {m:,} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
