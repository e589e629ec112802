"""The error of y on float16 and bfloat16 input, in units of the half type's spacing at the
float64 reference computed from the same half values, with and without beta.

Usage: python tools/half_accuracy.py [--base PATH/TO/OTHER/bnfast] [--seed 0]

With --base, another build of bnfast (a package folder built in place) is measured beside
this one. Deterministic: the figures do not depend on the machine's load. Needs ml_dtypes.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

CASES = [((32, 64, 56, 56), 1, "NCHW"), ((65536, 256), 1, "NC"), ((32, 56, 56, 64), -1, "NHWC")]


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ab import builds as load_builds  # noqa: E402  (another build beside this one)


def spacing(ref: np.ndarray, mantissa_bits: int, smallest_normal: float) -> np.ndarray:
    """The half type's spacing at |ref| (its subnormals' below the smallest normal)."""
    e = np.floor(np.log2(np.maximum(np.abs(ref), smallest_normal)))
    return np.exp2(e - mantissa_bits)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import ml_dtypes

    builds = load_builds(a.base)
    types = {"float16": (np.float16, 10, 2.0 ** -14),
             "bfloat16": (ml_dtypes.bfloat16, 7, 2.0 ** -126)}
    cols = [f"{t}: {b}" for t in types for b in builds]
    print("max error of y in ulps of the half type (values over 1 ulp), x = 0.5 + 2 N(0, 1), "
          "gamma in [0.5, 2]")
    print("| array | beta | " + " | ".join(cols) + " |")
    print("|" + " --- |" * (len(cols) + 2))
    rng = np.random.default_rng(a.seed)
    for shape, axis, layout in CASES:
        x32 = (rng.standard_normal(shape) * 2 + 0.5).astype(np.float32)
        C = shape[axis]
        bshape = [1] * len(shape)
        bshape[axis] = C
        gamma = rng.uniform(0.5, 2, C).astype(np.float32)
        for beta_kind in ("0", "U(-1, 1)"):
            beta = (np.zeros(C) if beta_kind == "0" else rng.uniform(-1, 1, C)).astype(np.float32)
            row = []
            for dtype, bits, tiny in types.values():
                x = x32.astype(dtype)
                xd = x.astype(np.float64)
                red = tuple(i for i in range(len(shape)) if i != axis % len(shape))
                mean = xd.mean(axis=red, keepdims=True)
                var = xd.var(axis=red, keepdims=True)
                ref = ((xd - mean) / np.sqrt(var + 1e-5) * gamma.reshape(bshape)
                       + beta.reshape(bshape).astype(np.float64))
                unit = spacing(ref, bits, tiny)
                for mod in builds.values():
                    y = mod.batch_norm_forward(x, gamma, beta, axis=axis)[0]
                    err = np.abs(y.astype(np.float64) - ref) / unit
                    over = int(np.sum(err > 1))
                    row.append(f"{err.max():.3f}" + (f" ({over} of {err.size})" if over else ""))
            print(f"| {layout} {shape} | {beta_kind} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
