"""Command line: ``python -m bnfast`` (config, self-check, speed table) and ``bench``.

    python -m bnfast              print the build, check every kernel against the float64
                                  NumPy reference on random data, print a short speed table
    python -m bnfast check        the self-check alone
    python -m bnfast bench ...    the full benchmark grid (see ``python -m bnfast bench -h``)
"""
import sys

import numpy as np

import bnfast
from bnfast import reference

# (shape, axis, dtype, tolerance on y / dx relative to its scale)
_CHECKS = [
    ((1000,), None, np.float64, 1e-12),
    ((4096, 64), 1, np.float32, 2e-6),
    ((512, 300), -1, np.float64, 1e-12),
    ((8, 16, 28, 28), 1, np.float32, 2e-6),
    ((8, 28, 28, 16), -1, np.float32, 2e-6),
    ((4, 3, 5, 7, 6), 2, np.float64, 1e-12),
    ((64, 8, 33), 1, np.float16, 2e-3),
]


def _max_rel(got, want):
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    return float(np.max(np.abs(got - want))) / scale if want.size else 0.0


def self_check(file=sys.stdout, seed=None):
    """Compare every kernel with bnfast.reference on random data; return True when all pass."""
    seq = np.random.SeedSequence(seed)
    rng = np.random.default_rng(seq)
    print(f"self-check against the float64 NumPy reference (seed {seq.entropy}):", file=file)
    ok = True
    for shape, axis, dtype, tol in _CHECKS:
        x = (rng.standard_normal(shape) * 3 + 50).astype(dtype)
        C = 1 if axis is None else shape[axis]
        gamma, beta = rng.uniform(0.5, 2, C), rng.standard_normal(C)
        rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
        dy = rng.standard_normal(shape).astype(dtype)
        y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis)
        ry, rmean, rinv, _, _ = reference.batch_norm_forward(x, gamma, beta, axis=axis)
        yi = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis)
        ryi = reference.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis)
        dx, dg, db = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
        rdx, rdg, rdb = reference.batch_norm_backward(dy, x, rmean, rinv, gamma, axis=axis)
        errors = {
            "train": max(_max_rel(y, ry), _max_rel(mean, rmean), _max_rel(invstd, rinv)),
            "infer": _max_rel(yi, ryi),
            "backward": max(_max_rel(dx, rdx), _max_rel(dg, rdg), _max_rel(db, rdb)),
        }
        passed = all(e <= tol for e in errors.values())
        ok &= passed
        detail = "  ".join(f"{k} {v:.1e}" for k, v in errors.items())
        print(f"  {'ok  ' if passed else 'FAIL'} {str(shape):18s} axis={str(axis):4s} "
              f"{np.dtype(dtype).name:8s} {detail}  (tol {tol:.0e})", file=file)
    return ok


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "bench":
        from bnfast import bench
        return bench.main(argv[1:])
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if argv and argv[0] not in ("check",):
        print(f"unknown command {argv[0]!r}\n{__doc__}", file=sys.stderr)
        return 2
    bnfast.show_config()
    print()
    ok = self_check()
    if not argv:
        from bnfast import bench
        print()
        bench.short_table(file=sys.stdout)
    print("\nself-check passed" if ok else "\nself-check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
