"""Side-by-side timing of two bnfast builds and PyTorch, interleaved in one process.

Usage (each build's package directory, built in place):

    python tools/bench_ab.py --base /tmp/perf_base/bnfast --new bnfast [--threads 1 2]
        [--rounds 15] [--ops train infer backward moments fused backward_relu]
        [--shapes NC:4096x1024 ...] [--dtype float32|float16|bfloat16|float64]

The two builds are imported under the names ``bnbase`` and ``bnnew`` (bnfast uses relative
imports only), so both run in the same process on the same arrays.  Every round times each
contender once (a batch of calls sized to about 20 ms), in a shuffled order; the table gives
the median per call over the rounds and the interquartile range, plus the load average
before and after.  Calls are made the way a user makes them: without ``out=``, with running
statistics updated (training), gamma and beta given.  With --cpu, process CPU time instead
of wall time: on a loaded machine a single thread's CPU time is far steadier than its wall
time (not meaningful for several threads, whose waits it leaves out).  The copy floor is ``passes`` times a
``np.copyto`` of x (train 1.5, infer 1.0, backward 2.5, moments 0.5, fused 2.0,
backward_relu 4.0), split over the threads. ``fused`` is relu(bn(x) + r) with dy as r;
``backward_relu`` its backward with the residual's gradient.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

# Copy floors in streaming copies of x (a copy reads and writes: each array pass is half):
# fused: x twice, the residual, y; backward_relu: dy, x and y twice each, dx and the
# residual's gradient written.
PASSES = {"train": 1.5, "infer": 1.0, "backward": 2.5, "moments": 0.5, "fused": 2.0,
          "backward_relu": 4.0}
SHAPES = {
    "NC:65536x256": ((65536, 256), -1),
    "NC:4096x1024": ((4096, 1024), -1),
    "NHWC:32x56x56x64": ((32, 56, 56, 64), -1),
    "NCHW:32x64x56x56": ((32, 64, 56, 56), 1),
    "NCHW:64x256x14x14": ((64, 256, 14, 14), 1),
    "NC:256x64": ((256, 64), -1),
}


def parse_shape(name: str):
    """A shape not in SHAPES: LAYOUT:AxBx... with the channel axis of NC/NHWC last, NCHW 1."""
    layout, dims = name.split(":")
    if layout not in ("NC", "NHWC", "NCHW"):
        raise SystemExit(f"unknown layout in {name!r}: NC, NHWC or NCHW")
    return tuple(int(d) for d in dims.split("x")), (1 if layout == "NCHW" else -1)


def load(name: str, pkg_dir: str):
    """Import the package at pkg_dir under the module name `name`."""
    link_dir = tempfile.mkdtemp(prefix="bnab_")
    os.symlink(os.path.abspath(pkg_dir), os.path.join(link_dir, name))
    sys.path.insert(0, link_dir)
    return importlib.import_module(name)


def builds(base: str | None) -> dict:
    """{"bnfast": this checkout's bnfast}, led by {"base": the build at base} when given."""
    import bnfast
    return {"base": load("bnbase", base), "bnfast": bnfast} if base else {"bnfast": bnfast}


def vector_dtype(dtype):
    """Per-channel vectors and running statistics: float32 for half data, as in PyTorch."""
    return np.float32 if np.dtype(dtype).itemsize == 2 else dtype


def array_dtype(name: str):
    """--dtype: a NumPy name, or bfloat16 (ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def calls(mod, op, x, dy, g, b, axis, nt):
    C = x.shape[axis]
    rm, rv = np.zeros(C, vector_dtype(x.dtype)), np.ones(C, vector_dtype(x.dtype))
    if op == "train":
        return lambda: mod.batch_norm_forward(x, g, b, axis=axis, running_mean=rm,
                                              running_var=rv, n_threads=nt)
    if op == "infer":
        return lambda: mod.batch_norm_inference(x, rm, rv, g, b, axis=axis, n_threads=nt)
    if op == "moments":
        return lambda: mod.moments(x, axis=axis, n_threads=nt)
    if op == "fused":  # relu(bn(x) + r), dy standing in for the residual r
        return lambda: mod.batch_norm_forward(x, g, b, axis=axis, running_mean=rm,
                                              running_var=rv, residual=dy, activation="relu",
                                              n_threads=nt)
    if op == "backward_relu":  # its backward: dy masked by y > 0, and the residual's gradient
        y, mean, invstd = mod.batch_norm_forward(x, g, b, axis=axis, residual=dy,
                                                 activation="relu")
        return lambda: mod.batch_norm_backward(dy, x, mean, invstd, g, axis=axis,
                                               activation="relu", y=y, return_dresidual=True,
                                               n_threads=nt)
    _, mean, invstd = mod.batch_norm_forward(x, axis=axis)
    return lambda: mod.batch_norm_backward(dy, x, mean, invstd, g, axis=axis, n_threads=nt)


def as_tensor(torch, a):
    """torch.from_numpy, also for ml_dtypes' bfloat16 (through its bits)."""
    if a.dtype.name == "bfloat16":
        return torch.from_numpy(a.view(np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def torch_call(torch, op, x, dy, g, b, layout):
    t = as_tensor(torch, x)
    tdy = as_tensor(torch, dy)
    if layout == "NHWC":
        t, tdy = t.permute(0, 3, 1, 2), tdy.permute(0, 3, 1, 2)
    C = t.shape[1]
    w, bb = torch.from_numpy(g), torch.from_numpy(b)
    rm, rv = torch.zeros(C, dtype=w.dtype), torch.ones(C, dtype=w.dtype)
    F = torch.nn.functional.batch_norm
    if op == "train":
        return lambda: F(t, rm, rv, w, bb, True, 0.1, 1e-5)
    if op == "infer":
        return lambda: F(t, rm, rv, w, bb, False, 0.1, 1e-5)
    if op in ("moments", "fused", "backward_relu"):
        return None
    _, mean, invstd = torch.native_batch_norm(t, w, bb, None, None, True, 0.1, 1e-5)
    return lambda: torch.ops.aten.native_batch_norm_backward(
        tdy, t, w, rm, rv, mean, invstd, True, 1e-5, [True, True, True])


CLOCK = time.perf_counter


def time_batch(f, n):
    t0 = CLOCK()
    for _ in range(n):
        f()
    return (CLOCK() - t0) / n


def make_case(sname, dtype, rng):
    shape, axis = SHAPES[sname] if sname in SHAPES else parse_shape(sname)
    dtype = array_dtype(dtype)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    g = rng.uniform(0.5, 1.5, C).astype(vector_dtype(dtype))
    b = rng.standard_normal(C).astype(vector_dtype(dtype))
    return x, dy, g, b, axis, sname.split(":")[0]


def contender_calls(who, a, nt, x, dy, g, b, axis, layout, pool, mods, torch):
    """{name: call} for the contenders named in `who` (base, new, torch, copy)."""
    fs = {}
    for k in who:
        if k in mods:
            fs[k] = calls(mods[k], a_op(a), x, dy, g, b, axis, nt)
        elif k == "torch" and torch is not None:
            tf = torch_call(torch, a_op(a), x, dy, g, b, layout)
            if tf is not None:
                fs[k] = tf
        elif k == "copy":
            dst = np.empty_like(x).reshape(-1)
            srcs, dsts = np.array_split(x.reshape(-1), nt), np.array_split(dst, nt)
            fs[k] = lambda: list(pool.map(np.copyto, dsts, srcs))  # noqa: E731
    return fs


def a_op(a):
    return a._op


def worker(a):
    """--worker: time every (threads, shape, op) case of one contender once; JSON lines."""
    who = a.worker
    mods = {}
    torch = None
    if who in ("base", "new"):
        mods[who] = load("bnbase" if who == "base" else "bnnew", getattr(a, who))
    elif who == "torch":
        import torch
    out = {}
    for nt in a.threads:
        if torch is not None:
            torch.set_num_threads(nt)
        pool = ThreadPoolExecutor(nt)
        rng = np.random.default_rng(0)
        for sname in a.shapes:
            x, dy, g, b, axis, layout = make_case(sname, a.dtype, rng)
            for op in a.ops:
                a._op = op
                fs = contender_calls([who], a, nt, x, dy, g, b, axis, layout, pool, mods, torch)
                if who not in fs:
                    continue
                f = fs[who]
                f()
                reps = max(1, int(0.02 / max(time_batch(f, 1), 1e-7)))
                time_batch(f, reps)             # warm: pages touched, threads started
                out[f"{nt}|{sname}|{op}"] = time_batch(f, reps)
        pool.shutdown()
    print(json.dumps(out))


def run_processes(a, argv):
    """--processes: per round, one process per contender in a shuffled order."""
    who = ["base", "new", "copy"] + ([] if a.no_torch else ["torch"])
    res = {}
    for _ in range(a.rounds):
        order = list(who)
        random.shuffle(order)
        for k in order:
            cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", k]
            got = json.loads(subprocess.run(cmd, check=True, capture_output=True,
                                            text=True).stdout.strip().splitlines()[-1])
            for case, t in got.items():
                res.setdefault(case, {}).setdefault(k, []).append(t)
    return res


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True)
    ap.add_argument("--new", required=True)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--ops", nargs="+", default=["train", "infer", "backward"])
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--cpu", action="store_true",
                    help="time process CPU time instead of wall time (1 thread: less affected "
                         "by a loaded machine's scheduling)")
    ap.add_argument("--processes", action="store_true",
                    help="each contender in processes of its own, one per round (see above)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    raw = list(sys.argv[1:] if argv is None else argv)
    a = ap.parse_args(raw)
    global CLOCK
    if a.cpu:
        CLOCK = time.process_time
    if a.worker:
        return worker(a)
    if a.processes:
        return report_processes(a, run_processes(a, [r for r in raw if r != "--processes"]))
    mods = {"base": load("bnbase", a.base), "new": load("bnnew", a.new)}
    torch = None
    if not a.no_torch:
        import torch
    rng = np.random.default_rng(0)
    print(f"# load average at start: {os.getloadavg()}")
    print(f"{'op':8} {'shape':18} thr  {'base':>16} {'new':>16} {'torch':>16} "
          f"{'floor':>9}  new/base new/torch new/floor")
    for nt in a.threads:
        if torch is not None:
            torch.set_num_threads(nt)
        pool = ThreadPoolExecutor(nt)
        for sname in a.shapes:
            x, dy, g, b, axis, layout = make_case(sname, a.dtype, rng)
            dst = np.empty_like(x).reshape(-1)
            srcs, dsts = np.array_split(x.reshape(-1), nt), np.array_split(dst, nt)
            copy = lambda: list(pool.map(np.copyto, dsts, srcs))  # noqa: E731
            for op in a.ops:
                fs = {k: calls(m, op, x, dy, g, b, axis, nt) for k, m in mods.items()}
                if torch is not None:
                    tf = torch_call(torch, op, x, dy, g, b, layout)
                    if tf is not None:
                        fs["torch"] = tf
                fs["copy"] = copy
                reps = {}
                for k, f in fs.items():
                    f()
                    reps[k] = max(1, int(0.02 / max(time_batch(f, 1), 1e-7)))
                res = {k: [] for k in fs}
                for _ in range(a.rounds):
                    order = list(fs)
                    random.shuffle(order)
                    for k in order:
                        res[k].append(time_batch(fs[k], reps[k]))
                med = {k: float(np.median(v)) for k, v in res.items()}
                iqr = {k: (np.percentile(v, 25), np.percentile(v, 75)) for k, v in res.items()}

                def cell(k):
                    if k not in med:
                        return f"{'-':>16}"
                    lo, hi = iqr[k]
                    return f"{med[k] * 1e3:7.3f}[{lo * 1e3:.2f}-{hi * 1e3:.2f}]".rjust(16)

                floor = PASSES[op] * med["copy"]
                tr = f"{med['new'] / med['torch']:9.2f}" if "torch" in med else f"{'-':>9}"
                print(f"{op:8} {sname:18} {nt:3}  {cell('base')} {cell('new')} {cell('torch')} "
                      f"{floor * 1e3:9.3f}  {med['new'] / med['base']:8.2f} {tr} "
                      f"{med['new'] / floor:9.2f}", flush=True)
        pool.shutdown()
    print(f"# load average at end: {os.getloadavg()}  (times in ms: median[p25-p75])")


def report_processes(a, res):
    print(f"# load average at end: {os.getloadavg()}  (times in ms: median[p25-p75] over "
          f"{a.rounds} processes each)")
    print(f"{'op':8} {'shape':18} thr  {'base':>16} {'new':>16} {'torch':>16} "
          f"{'floor':>9}  new/base new/torch new/floor")
    for case, per in res.items():
        nt, sname, op = case.split("|")
        med = {k: float(np.median(v)) for k, v in per.items()}

        def cell(k):
            if k not in per:
                return f"{'-':>16}"
            lo, hi = np.percentile(per[k], 25), np.percentile(per[k], 75)
            return f"{med[k] * 1e3:7.3f}[{lo * 1e3:.2f}-{hi * 1e3:.2f}]".rjust(16)

        floor = PASSES[op] * med["copy"]
        tr = f"{med['new'] / med['torch']:9.2f}" if "torch" in med else f"{'-':>9}"
        print(f"{op:8} {sname:18} {nt:>3}  {cell('base')} {cell('new')} {cell('torch')} "
              f"{floor * 1e3:9.3f}  {med['new'] / med['base']:8.2f} {tr} "
              f"{med['new'] / floor:9.2f}", flush=True)


if __name__ == "__main__":
    main()
