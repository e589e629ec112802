"""BatchNormScaler against dask-ml's StandardScaler on a dask DataFrame, on a LocalCluster.

    python tools/bench_dask_dataframe.py [--rows 1000000] [--cols 32] [--partitions 16]
                                         [--rounds 7] [--workers 2]

A float64 (rows, cols) frame (244 MiB by default) is generated partition by partition on
the workers of a LocalCluster (worker processes with one thread each, on 127.0.0.1) and
persisted there: the driver never holds it, and both scalers time their fit of data already
in the workers' memory. Then:

- fit: --rounds rounds, each timing ``BatchNormScaler(eps=0).fit(df)`` and dask-ml's
  ``StandardScaler().fit(df)`` once, in alternating order (a change of load on a shared
  machine hits both alike); medians with [p25-p75], and the median of the per-round ratios.
- transform: the same for ``transform(df)`` computed into the workers' memory (persist).
- driver memory: one more fit of each while a thread samples the driver's RSS every 2 ms;
  the peak growth over the RSS before the call, also as a fraction of the frame's size.
- statistics: the frame is then computed into the driver and fitted by scikit-learn's
  StandardScaler; the largest relative differences of mean_, var_ and scale_.

The load average is printed before and after. dask-ml is a benchmark-only dependency
(``pip install dask-ml``, or the ``bench-dask`` extra); without it only bnfast is timed.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time

import numpy as np
import pandas as pd
import psutil  # a dependency of dask.distributed

import dask
import dask.dataframe as dd
from dask.distributed import Client, LocalCluster, wait

import bnfast
from bnfast.preprocessing import BatchNormScaler

try:
    from dask_ml.preprocessing import StandardScaler as DaskMLStandardScaler
except ImportError:
    DaskMLStandardScaler = None


def make_partition(i: int, rows: int, cols: int) -> pd.DataFrame:
    """Partition i: normal columns with per-column offsets and spreads (seeded by i)."""
    rng = np.random.default_rng([12345, i])
    column_rng = np.random.default_rng(0)  # the same offsets and spreads in every partition
    loc, spread = column_rng.uniform(-50, 50, cols), column_rng.uniform(0.5, 20, cols)
    values = rng.standard_normal((rows, cols)) * spread + loc
    start = i * rows
    return pd.DataFrame(values, columns=[f"f{j}" for j in range(cols)],
                        index=pd.RangeIndex(start, start + rows))


def quartiles(times: list[float]) -> str:
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else times * 3
    return f"median {statistics.median(times) * 1e3:7.0f} ms  [p25-p75 {q[0] * 1e3:.0f}-" \
           f"{q[2] * 1e3:.0f}]"


class RSSPeak:
    """The driver's peak RSS growth while the block runs, sampled every 2 ms by a thread."""

    def __enter__(self) -> RSSPeak:
        self.proc = psutil.Process()
        self.before = self.proc.memory_info().rss
        self.peak = self.before
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self) -> None:
        while not self.done.wait(0.002):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc: object) -> None:
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.done.set()
        self.thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.before


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--cols", type=int, default=32)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    rows_per = args.rows // args.partitions
    rows = rows_per * args.partitions
    nbytes = rows * args.cols * 8
    print(f"python {sys.version.split()[0]}, bnfast {bnfast.__version__}, dask "
          f"{dask.__version__}, pandas {pd.__version__}, cpus {os.cpu_count()}")
    print(f"frame: float64 ({rows}, {args.cols}) = {nbytes / 2**20:.0f} MiB in "
          f"{args.partitions} partitions; LocalCluster of {args.workers} worker processes, "
          f"1 thread each")
    print(f"load average before: {os.getloadavg()}")
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      host="127.0.0.1", dashboard_address=None) as cluster, \
            Client(cluster) as client:
        meta = make_partition(0, 0, args.cols)
        divisions = [i * rows_per for i in range(args.partitions)] + [rows - 1]
        df = dd.from_map(make_partition, range(args.partitions), rows=rows_per,
                         cols=args.cols, meta=meta, divisions=divisions)
        df = df.persist()
        wait(df)

        scalers = {"bnfast BatchNormScaler": lambda: BatchNormScaler(eps=0)}
        if DaskMLStandardScaler is not None:
            scalers["dask-ml StandardScaler"] = DaskMLStandardScaler
        else:
            print("dask-ml is not installed: bnfast alone (pip install dask-ml)")
        fitted = {name: make().fit(df) for name, make in scalers.items()}  # warm-up

        def transform(name: str) -> None:
            out = fitted[name].transform(df)
            if isinstance(out, (dd.DataFrame, dask.array.Array)):
                wait(out.persist())

        fit_times = {name: [] for name in scalers}
        transform_times = {name: [] for name in scalers}
        for r in range(args.rounds):
            names = list(scalers) if r % 2 == 0 else list(scalers)[::-1]
            for name in names:
                t0 = time.perf_counter()
                scalers[name]().fit(df)
                fit_times[name].append(time.perf_counter() - t0)
            for name in names:
                t0 = time.perf_counter()
                transform(name)
                transform_times[name].append(time.perf_counter() - t0)

        for what, times in (("fit", fit_times), ("transform, persisted", transform_times)):
            print(f"\n{what} ({args.rounds} rounds, alternating order):")
            for name, t in times.items():
                print(f"  {name:24s} {quartiles(t)}   runs "
                      f"{', '.join(f'{v * 1e3:.0f}' for v in t)}")
            if len(times) == 2:
                ours, theirs = times.values()
                ratios = [b / a for a, b in zip(ours, theirs)]
                q = statistics.quantiles(ratios, n=4, method="inclusive")
                print(f"  dask-ml / bnfast: {statistics.median(theirs) / statistics.median(ours):.2f}x "
                      f"(ratio of medians); per-round ratios median "
                      f"{statistics.median(ratios):.2f}x [p25-p75 {q[0]:.2f}-{q[2]:.2f}]")

        print("\ndriver RSS growth during one fit (peak - before, sampled every 2 ms):")
        for name, make in scalers.items():
            with RSSPeak() as rss:
                make().fit(df)
            print(f"  {name:24s} {rss.growth / 2**20:7.1f} MiB = "
                  f"{rss.growth / nbytes:.3f} of the frame")
        print(f"load average after timing: {os.getloadavg()}")

        from sklearn.preprocessing import StandardScaler
        local = df.compute()
        ref = StandardScaler().fit(local.to_numpy())
        print("\nstatistics vs scikit-learn's StandardScaler on the computed frame "
              "(max relative difference):")
        for name, scaler in fitted.items():
            diffs = []
            for attr in ("mean_", "var_", "scale_"):
                got = np.asarray(getattr(scaler, attr), np.float64)
                want = getattr(ref, attr)
                diffs.append(f"{attr} {np.max(np.abs(got / want - 1)):.1e}")
            print(f"  {name:24s} {', '.join(diffs)}")


if __name__ == "__main__":
    main()
