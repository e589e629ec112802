"""Command line: ``python -m bnfast [check | bench] [options]`` (see ``--help``)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional, TextIO

import numpy as np
from numpy.typing import ArrayLike

import bnfast
from bnfast import reference

DESCRIPTION = """\
bnfast: batch normalization for NumPy on the CPU.

Without a command: print how bnfast was built, check every kernel against the
float64 NumPy reference on random data, then print a short speed table (bnfast,
NumPy, PyTorch when installed, and the memory-copy floor). Exit status 1 if the
check fails.
"""

EPILOG = """\
examples:
  python -m bnfast
  python -m bnfast check
  python -m bnfast bench --quick
  python -m bnfast bench --threads 4 --json bench.json
"""

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


def _max_rel(got: ArrayLike, want: ArrayLike) -> float:
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(want)))) if want.size else 1.0
    return float(np.max(np.abs(got - want))) / scale if want.size else 0.0


def self_check(file: TextIO = sys.stdout, seed: Optional[int] = None) -> bool:
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


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``python -m bnfast``, with its ``check`` and ``bench`` commands."""
    from bnfast.bench import cli as bench_cli

    parser = argparse.ArgumentParser(
        prog="python -m bnfast", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"bnfast {bnfast.__version__}",
                        help="print the version (bnfast X.Y.Z) and exit")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="{check,bench}")
    commands.add_parser(
        "check", help="only the check against the float64 NumPy reference (exit status 1 "
                      "if it fails)",
        description="Check every kernel (training forward, inference, backward) against "
                    "the float64 NumPy reference on random data, in float16, float32 and "
                    "float64 and several layouts. Exit status 0 when every check passes, "
                    "1 otherwise.")
    bench = commands.add_parser(
        "bench", help="the full speed table: bnfast against NumPy, PyTorch and the copy "
                      "floor, and BatchNormScaler against StandardScaler (see bench --help)",
        description=bench_cli.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_cli.configure_parser(bench)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``python -m bnfast`` with ``argv`` (default ``sys.argv[1:]``); return the status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "bench":
        from bnfast.bench import cli as bench_cli
        try:
            return bench_cli.run(args)
        except KeyboardInterrupt:  # the bench has stopped its spinners on the way out
            print("bench: interrupted", file=sys.stderr)
            return 130
    bnfast.show_config()
    print()
    ok = self_check()
    if args.command is None:
        from bnfast.bench import cli as bench_cli
        print()
        bench_cli.short_table(file=sys.stdout)
    print("\nself-check passed" if ok else "\nself-check FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
