"""BatchNormScaler against StandardScaler on a large CSR matrix: fit, and partial_fit in chunks.

    python tools/bench_sparse_scaler.py [--rows 200000] [--cols 2000] [--density 0.005]
        [--chunks 10] [--rounds 15] [--processes 10] [--threads N]

Two measurements, both side by side in one run (the order alternating round by round), with
the load average printed:

1. Warm, in one process: ``fit(X)`` and ``partial_fit`` over ``--chunks`` row blocks (sliced
   beforehand, outside the timing), each scaler timed ``--rounds`` times; medians with their
   quartiles, and the ratio of the medians, in wall time and in the process's CPU time (the
   steadier of the two on a loaded machine with ``--threads 1``; with more threads, CPU time
   also counts what the threads spin).
2. Fresh processes (``--processes`` pairs, 0 to skip): each process loads the matrix from a
   .npz file, imports the scaler and fits once; its whole wall time is taken from outside
   (start to exit: interpreter, imports, loading, the fit), and the fit alone from inside.

It also checks that both give the same statistics (mean_, var_, n_samples_seen_) to 1e-10
relative (for float64 data; StandardScaler sums float32 sparse data in float32).
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def _matrix(rows, cols, density, dtype, seed=0):
    from scipy import sparse
    rng = np.random.default_rng(seed)
    X = sparse.random_array((rows, cols), density=density, format="csr", rng=rng, dtype=dtype)
    # offsets and spreads that differ by column, as real features do
    X.data = (X.data * rng.uniform(1, 100, cols)[X.indices]
              + rng.uniform(-50, 50, cols)[X.indices]).astype(dtype)
    return X


def _quartiles(times):
    q = np.percentile(np.asarray(times) * 1e3, [25, 50, 75])
    return f"{q[1]:8.2f} ms [{q[0]:.2f}-{q[2]:.2f}]"


def _same_statistics(ours, theirs, rtol=1e-10):
    for attr in ("mean_", "var_", "n_samples_seen_"):
        a = np.asarray(getattr(ours, attr), np.float64)
        b = np.asarray(getattr(theirs, attr), np.float64)
        err = np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300))
        print(f"  {attr:16s} max relative difference {err:.2e}"
              f"{'' if err <= rtol else f'  > {rtol:g}'}")


def warm(X, chunks, rounds, threads):
    from sklearn.preprocessing import StandardScaler

    from bnfast import BatchNormScaler

    parts = [X[a:b] for a, b in zip(*(lambda e: (e[:-1], e[1:]))(
        np.linspace(0, X.shape[0], chunks + 1).astype(int)))]

    def fit(make):
        return make().fit(X)

    def partial(make):
        s = make()
        for part in parts:
            s.partial_fit(part)
        return s

    makers = {"BatchNormScaler": lambda: BatchNormScaler(eps=0, with_mean=False,
                                                          n_threads=threads),
              "StandardScaler": lambda: StandardScaler(with_mean=False)}
    for what, run in (("fit", fit), (f"partial_fit x{chunks}", partial)):
        times = {name: [] for name in makers}
        cpu = {name: [] for name in makers}
        fitted = {name: run(make) for name, make in makers.items()}  # warm-up, and the check
        for r in range(rounds):
            order = list(makers) if r % 2 == 0 else list(makers)[::-1]
            for name in order:
                c, t = time.process_time(), time.perf_counter()
                run(makers[name])
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.process_time() - c)
        print(f"{what} (warm, {rounds} rounds; median [p25-p75]), load {os.getloadavg()}")
        for name, ts in times.items():
            print(f"  {name:16s} wall {_quartiles(ts)}  cpu {_quartiles(cpu[name])}")
        for label, ts in (("wall", times), ("cpu", cpu)):
            ratio = np.median(ts["StandardScaler"]) / np.median(ts["BatchNormScaler"])
            per_round = np.array(ts["StandardScaler"]) / np.array(ts["BatchNormScaler"])
            q = np.percentile(per_round, [25, 75])
            print(f"  speed-up ({label}) {ratio:.2f}x (round by round [p25-p75] "
                  f"{q[0]:.2f}-{q[1]:.2f}x)")
        _same_statistics(fitted["BatchNormScaler"], fitted["StandardScaler"])


CHILD = """
import sys, time
from scipy import sparse
X = sparse.load_npz(sys.argv[1]).tocsr()
if sys.argv[2] == "bnfast":
    from bnfast import BatchNormScaler
    make = lambda: BatchNormScaler(eps=0, with_mean=False, n_threads={threads})
else:
    from sklearn.preprocessing import StandardScaler
    make = lambda: StandardScaler(with_mean=False)
t = time.perf_counter()
make().fit(X)
print(time.perf_counter() - t)
"""


def fresh(X, processes, threads):
    from scipy import sparse
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "X.npz")
        sparse.save_npz(path, X, compressed=False)
        code = CHILD.replace("{threads}", repr(threads))
        wall = {"bnfast": [], "sklearn": []}
        inner = {"bnfast": [], "sklearn": []}
        for p in range(processes):
            for name in (("bnfast", "sklearn") if p % 2 == 0 else ("sklearn", "bnfast")):
                t = time.perf_counter()
                done = subprocess.run([sys.executable, "-c", code, path, name],
                                      capture_output=True, text=True, check=True)
                wall[name].append(time.perf_counter() - t)
                inner[name].append(float(done.stdout.split()[-1]))
    print(f"fit, first call of a fresh process ({processes} pairs, alternating; median "
          f"[p25-p75]), load {os.getloadavg()}")
    for name in wall:
        print(f"  {name:8s} whole process {_quartiles(wall[name])}, fit {_quartiles(inner[name])}")
    r = np.array(inner["sklearn"]) / np.array(inner["bnfast"])
    print(f"  fit speed-up pair by pair: median {np.median(r):.2f}x "
          f"[{np.percentile(r, 25):.2f}-{np.percentile(r, 75):.2f}]")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=200000)
    ap.add_argument("--cols", type=int, default=2000)
    ap.add_argument("--density", type=float, default=0.005)
    ap.add_argument("--chunks", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--processes", type=int, default=10)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--float32", action="store_true")
    args = ap.parse_args(argv)
    import bnfast
    dtype = np.float32 if args.float32 else np.float64
    X = _matrix(args.rows, args.cols, args.density, dtype)
    print(f"CSR {X.shape} {X.dtype}, nnz {X.nnz}, density {args.density}; bnfast "
          f"{bnfast.__version__}, threads {args.threads or 'default'}, {os.cpu_count()} CPUs")
    warm(X, args.chunks, args.rounds, args.threads)
    if args.processes:
        fresh(X, args.processes, args.threads)


if __name__ == "__main__":
    main()
