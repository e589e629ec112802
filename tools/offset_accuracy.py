"""The variance's relative error on float64 data with a large offset, against a long-double
two-pass reference: bnfast (one call, and 10 partial_fit calls of BatchNormScaler),
np.var and scikit-learn's StandardScaler (fit, and 10 partial_fit calls).

Usage: python tools/offset_accuracy.py [--offset 1e8] [--base PATH/TO/OTHER/bnfast]

With --base, another build of bnfast (a package folder built in place) is measured beside
this one. Deterministic: the figures do not depend on the machine's load.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

SHAPES = [(20000, 1), (20000, 2), (20000, 4), (20000, 8), (20000, 16), (20000, 64),
          (2000, 300), (2000, 1000)]


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_ab import builds as load_builds  # noqa: E402  (another build beside this one)


def rel_error(var, x):
    xl = x.astype(np.longdouble)
    exact = ((xl - xl.mean(axis=0)) ** 2).mean(axis=0)
    return float(np.max(np.abs((np.asarray(var, np.longdouble) - exact) / exact)))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--offset", type=float, default=1e8)
    ap.add_argument("--base", default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    import bnfast
    builds = load_builds(a.base)
    try:
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        StandardScaler = None
    rng = np.random.default_rng(a.seed)
    cols = [f"{k} one call" for k in builds] + ["bnfast 10 partial_fit", "np.var"]
    if StandardScaler is not None:
        cols += ["StandardScaler fit", "StandardScaler 10 partial_fit"]
    print(f"float64 {a.offset:g} + N(0, 1): the variance's largest relative error over the "
          "channels, against a long-double two-pass reference")
    print("| shape | " + " | ".join(cols) + " |")
    print("|" + " --- |" * (len(cols) + 1))
    for shape in SHAPES:
        x = a.offset + rng.standard_normal(shape)
        row = [rel_error(mod.moments(x, axis=1)[1], x) for mod in builds.values()]
        scaler = bnfast.BatchNormScaler(eps=0)
        for part in np.array_split(x, 10):
            scaler.partial_fit(part)
        row += [rel_error(scaler.var_, x), rel_error(x.var(axis=0), x)]
        if StandardScaler is not None:
            row.append(rel_error(StandardScaler().fit(x).var_, x))
            sk = StandardScaler()
            for part in np.array_split(x, 10):
                sk.partial_fit(part)
            row.append(rel_error(sk.var_, x))
        print(f"| {shape} | " + " | ".join(f"{v:.1e}" for v in row) + " |")


if __name__ == "__main__":
    main()
