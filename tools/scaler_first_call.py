"""What the first BatchNormScaler.fit_transform of a fresh process pays for.

Runs fresh Python processes, interleaved round by round over these variants, and prints
the median and min-max range of each measured quantity:

plain      one BatchNormScaler().fit_transform(X) and one StandardScaler().fit_transform(X),
           as ``python -m bnfast bench`` measures them, then a second call of each;
omp-warm   the same after a tiny bnfast call has started the OpenMP thread pool;
no-thp     the same with NUMPY_MADVISE_HUGEPAGE=0 (NumPy then does not ask the kernel for
           transparent huge pages for the fresh 64 MiB output);
phases     the two passes of fit_transform separately, first calls: moments_state(X)
           (reads X), then batch_norm_inference(X, ...) into a fresh output (allocates it),
           then an inference into a preallocated, already-touched output.

Each time comes with the minor page faults during it (getrusage). Usage:

    PYTHONPATH=. python tools/scaler_first_call.py [--processes 6] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import numpy as np
variant, threads = sys.argv[1], int(sys.argv[2])
res = {}
def timed(name, fn):
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    t0 = time.perf_counter()
    out = fn()
    res[name + "_ms"] = (time.perf_counter() - t0) * 1e3
    res[name + "_faults"] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    return out
t0 = time.perf_counter()
import bnfast
from bnfast.preprocessing import BatchNormScaler
from sklearn.preprocessing import StandardScaler
res["import_ms"] = (time.perf_counter() - t0) * 1e3
from bnfast.bench.cases import scaler_input
X = scaler_input()
if variant == "omp-warm":
    timed("omp_warmup", lambda: bnfast.moments(np.ones((64, 8)), n_threads=threads))
if variant == "phases":
    st = timed("moments_state", lambda: bnfast.moments_state(X, n_threads=threads))
    mean, var = st[1], st[2] / st[0]
    C = X.shape[1]
    args = (X, mean, np.ones(C), 1 / np.sqrt(var + 1e-5), None)
    kw = dict(axis=1, eps=0.0, n_threads=threads)
    timed("inference_fresh_out", lambda: bnfast.batch_norm_inference(*args, **kw))
    out = np.empty_like(X); out[...] = 0
    timed("inference_touched_out", lambda: bnfast.batch_norm_inference(*args, out=out, **kw))
    timed("inference_fresh_out_2", lambda: bnfast.batch_norm_inference(*args, **kw))
    timed("np_empty_like_fill", lambda: np.empty_like(X).fill(1))
else:
    timed("bnfast", lambda: BatchNormScaler(n_threads=threads).fit_transform(X))
    timed("sklearn", lambda: StandardScaler().fit_transform(X))
    timed("bnfast_2", lambda: BatchNormScaler(n_threads=threads).fit_transform(X))
    timed("sklearn_2", lambda: StandardScaler().fit_transform(X))
print(json.dumps(res))
"""

VARIANTS = ["plain", "omp-warm", "no-thp", "phases"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=6, help="per variant")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", help="write every process's numbers here")
    args = parser.parse_args()
    variants = args.variants.split(",")
    results: dict = {v: [] for v in variants}
    for i in range(args.processes):
        for v in variants[i % len(variants):] + variants[:i % len(variants)]:
            env = dict(os.environ)
            if v == "no-thp":
                env["NUMPY_MADVISE_HUGEPAGE"] = "0"
            done = subprocess.run([sys.executable, "-c", CHILD, v, str(args.threads)],
                                  env=env, capture_output=True, text=True, check=True)
            results[v].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {i + 1} {v}: {results[v][-1]}", file=sys.stderr, flush=True)
    print(f"{args.processes} fresh processes per variant, {args.threads} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    for v in variants:
        print(f"{v}:")
        for key in results[v][0]:
            vals = [r[key] for r in results[v]]
            unit = "" if key.endswith("faults") else " ms"
            print(f"  {key:26s} median {statistics.median(vals):9.1f}{unit}  "
                  f"range {min(vals):9.1f} - {max(vals):9.1f}")
        if "bnfast_ms" in results[v][0]:
            ratio = [r["sklearn_ms"] / r["bnfast_ms"] for r in results[v]]
            print(f"  {'ratio sklearn/bnfast':26s} median {statistics.median(ratio):9.2f}x "
                  f"range {min(ratio):.2f} - {max(ratio):.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
