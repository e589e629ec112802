"""The same rows in the cache and from memory: bnfast over the copy floor, measured by the
bench's own row code (``bnfast.bench.rows``), with ``out=``.

    python tools/bench_cache_floor.py [--batches 64 512] [--threads 1]

(N, 256, 14, 14) float32, NCHW and NHWC: N = 64 is 12.25 MiB (in a 32 MiB L3), N = 512 is
98 MiB. docs/benchmarks.md ("Where the floor is still missed") quotes its figures.
"""
import argparse
import sys

from bnfast.bench.cases import Case
from bnfast.bench.rows import run_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    grid = [(Case((n, 256, 14, 14), layout, "float32"), op)
            for n in a.batches for layout in ("NCHW", "NHWC")
            for op in ("train", "infer", "backward")]
    rows = run_rows(grid, threads=a.threads, progress=sys.stderr)
    print(f"{'op':9s} {'layout':6s} {'shape':18s} {'MiB':>6s} {'bnfast ms':>10s} "
          f"{'floor ms':>9s} {'bn/floor':>8s}")
    for r in rows:
        print(f"{r['op']:9s} {r['layout']:6s} {str(tuple(r['shape'])):18s} "
              f"{r['nbytes'] / 2**20:6.1f} {r['bnfast_s'] * 1e3:10.3f} "
              f"{r['floor_s'] * 1e3:9.3f} {r['bnfast_over_floor']:8.2f}")


if __name__ == "__main__":
    main()
