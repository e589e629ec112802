"""Scaling of bnfast.dask.moments over dask.distributed workers (notes for README_issue6.md).

    python tools/bench_dask_scaling.py [--gib 2] [--repeats 3] [--workers 1 2]

Statistics of a float32 (N, 64) array of --gib GiB generated lazily by dask.array.random
(64 MiB chunks), on LocalClusters of n worker processes with one thread each (the nanny sets
OMP_NUM_THREADS=1, so the kernels are single-threaded per worker). All clusters are started
first and the runs are interleaved (1, 2, 1, 2, ... workers), so that a change of load on a
shared machine hits every configuration alike. Reports the median wall time of --repeats
runs for: generating the chunks only, and bnfast.dask.moments; then --native-repeats runs of
dask's own x.mean(0), x.var(0) for comparison, and the accuracy of both against float64.
"""
import argparse
import contextlib
import statistics
import time

import dask
import dask.array as da
import numpy as np
from dask.distributed import Client, LocalCluster

import bnfast.dask as bd

C = 64
CHUNK_ROWS = 262_144  # 64 MiB of float32


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--native-repeats", type=int, default=1,
                    help="runs of dask's own mean/var (slow; for comparison only)")
    args = ap.parse_args()
    rows = int(args.gib * 2**30 / (4 * C)) // CHUNK_ROWS * CHUNK_ROWS
    print(f"x: float32 ({rows}, {C}) = {rows * C * 4 / 2**30:.2f} GiB, "
          f"{rows // CHUNK_ROWS} chunks of {CHUNK_ROWS * C * 4 / 2**20:.0f} MiB; "
          f"median of {args.repeats}")
    x = da.random.default_rng(0).random((rows, C), dtype=np.float32, chunks=(CHUNK_ROWS, C))
    cases = {
        "generate only": lambda: (x[::CHUNK_ROWS].sum(),),
        "bnfast.dask.moments": lambda: bd.moments(x),
        "dask x.mean(0), x.var(0)": lambda: (x.mean(axis=0), x.var(axis=0)),
    }
    with contextlib.ExitStack() as stack:
        clients = {}
        for n in args.workers:
            cluster = stack.enter_context(LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                dashboard_address=None))
            clients[n] = stack.enter_context(Client(cluster, set_as_default=False))
            dask.compute(*bd.moments(x[:CHUNK_ROWS]), scheduler=clients[n])  # warm-up
        times = {(n, name): [] for n in clients for name in cases}
        results = {}
        for name, make in cases.items():
            repeats = args.native_repeats if name.startswith("dask ") else args.repeats
            for _ in range(repeats):
                for n, client in clients.items():
                    start = time.perf_counter()
                    results[name] = dask.compute(*make(), scheduler=client)
                    times[n, name].append(time.perf_counter() - start)
        for name in results:
            for n in clients:
                t = times[n, name]
                print(f"workers={n}  {name:26s} median {statistics.median(t):6.2f} s   "
                      f"runs {', '.join(f'{v:.2f}' for v in t)}", flush=True)
        if "dask x.mean(0), x.var(0)" not in results:
            return
        x64 = x.astype(np.float64)
        ref_mean, ref_var = dask.compute(x64.mean(axis=0), x64.var(axis=0),
                                         scheduler=clients[max(clients)])
        for name in ("bnfast.dask.moments", "dask x.mean(0), x.var(0)"):
            mean, var = results[name]
            print(f"{name:26s} max rel. error vs float64: mean "
                  f"{np.max(np.abs(mean / ref_mean - 1)):.1e}, var "
                  f"{np.max(np.abs(var / ref_var - 1)):.1e}")


if __name__ == "__main__":
    main()
