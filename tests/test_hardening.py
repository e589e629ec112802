"""Hardening: concurrent callers, memory, interrupts, and state that a failed call leaves alone.

- Threads: 16 Python threads call every entry point at once on shared inputs and each gets
  the bits of a serial call; the kernels release the GIL.
- Memory: thousands of calls, succeeding and failing, keep the resident set flat and hold no
  reference to their arguments.
- Interrupts: SIGINT during a long call is raised as KeyboardInterrupt when the kernel returns;
  in-place outputs are then complete and the layer is untouched (README_issue5, "Interrupts").
- Bad input: the layer and the scaler are exactly as they were after any call that raised,
  including a KeyboardInterrupt raised just after the kernel ran.
The >2^31-element tests are in test_big_arrays.py (opt-in: -m slow).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest

import bnfast
from _helpers import (
    assert_bits_equal, make_channel_params, make_float, stat_rtol, stat_scales, unit_roundoff)

try:
    import sklearn  # noqa: F401
    HAVE_SKLEARN = True
except ImportError:
    HAVE_SKLEARN = False

needs_sklearn = pytest.mark.skipif(not HAVE_SKLEARN, reason="scikit-learn is not installed")
on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"),
                              reason="reads /proc/self/statm; POSIX signals")
# Under AddressSanitizer (tools/sanitize.sh) freed memory sits in a quarantine: the resident
# set says nothing about leaks there.
SANITIZED = os.environ.get("BNFAST_SANITIZED") == "1" or "libasan" in os.environ.get(
    "LD_PRELOAD", "")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_THREADS = 16


# ------------------------------------------------------------------------------ threads

class _Inputs:
    """Shared, read-only inputs: a thread that wrote into one would fail loudly."""

    def __init__(self, rng):
        def frozen(a):
            a = np.ascontiguousarray(a)
            a.flags.writeable = False
            return a

        self.nchw = frozen(make_float(rng, (16, 8, 32, 32), 1).astype(np.float32))  # parallel
        self.dy = frozen(make_float(rng, self.nchw.shape, 1).astype(np.float32))
        self.nc = frozen(make_float(rng, (300, 5), 1))                             # small
        self.nhwc = frozen(make_float(rng, (4, 6, 6, 3), -1).astype(np.float16))
        nan = make_float(rng, (200, 4), 1)
        nan[rng.random(nan.shape) < 0.1] = np.nan
        self.nan = frozen(nan)
        self.weights = frozen(rng.uniform(0.1, 2.0, 200))
        self.gamma, self.beta = (frozen(v) for v in make_channel_params(rng, 8))
        self.conv_w = frozen(rng.standard_normal((8, 3, 3, 3)))


def _workload(inp):
    """Every entry point once; a dict name -> array of everything each call produced."""
    r = {}
    r["moments"] = bnfast.moments(inp.nchw)
    r["moments.ddof1.nc"] = bnfast.moments(inp.nc, ddof=1)
    r["moments_state.skipna"] = bnfast.moments_state(inp.nan, skipna=True)
    r["moments_state.weighted"] = bnfast.moments_state(inp.nan, skipna=True,
                                                       sample_weight=inp.weights)
    halves = [bnfast.moments_state(inp.nc[:150]), bnfast.moments_state(inp.nc[150:])]
    r["merge_moments"] = bnfast.merge_moments(halves)
    rm, rv = np.zeros(8), np.ones(8)
    out = np.empty_like(inp.nchw)
    y, mean, invstd = bnfast.batch_norm_forward(inp.nchw, inp.gamma, inp.beta, running_mean=rm,
                                                running_var=rv, out=out)
    r["forward"] = (y, mean, invstd, rm, rv)
    r["forward.nhwc"] = bnfast.batch_norm_forward(inp.nhwc, axis=-1)
    r["inference"] = bnfast.batch_norm_inference(inp.nchw, rm, rv, inp.gamma, inp.beta)
    r["backward"] = bnfast.batch_norm_backward(inp.dy, inp.nchw, mean, invstd, inp.gamma)
    r["fold"] = bnfast.fold_batch_norm(inp.conv_w, None, rm, rv, inp.gamma, inp.beta)
    bn = bnfast.BatchNorm(8, momentum=None)
    for _ in range(2):
        r.setdefault("layer", []).append(bn(inp.nchw))
        r["layer"].append(bn.backward(inp.dy))
        bn.weight -= 0.1 * bn.dgamma
    r["layer"] += [bn.running_mean, bn.running_var, bn.eval()(inp.nchw), bn.backward(inp.dy)]
    if HAVE_SKLEARN:
        s = bnfast.BatchNormScaler(eps=0).fit(inp.nc[:100])
        s.partial_fit(inp.nc[100:], sample_weight=inp.weights[:200])
        t = s.transform(inp.nc)
        r["scaler"] = (s.mean_, s.var_, s.scale_, t, s.inverse_transform(t),
                       bnfast.BatchNormScaler().fit_transform(inp.nan))
    return r


def _flatten(result, prefix=""):
    if isinstance(result, np.ndarray):
        return {prefix: result}
    if isinstance(result, dict):
        items = result.items()
    else:
        items = ((str(i), v) for i, v in enumerate(result))
    flat = {}
    for key, value in items:
        flat.update(_flatten(value, f"{prefix}.{key}" if prefix else key))
    return flat


def test_sixteen_threads_get_the_serial_bits(rng):
    inp = _Inputs(rng)
    serial = _flatten(_workload(inp))
    start = threading.Barrier(N_THREADS)

    def run(_):
        start.wait()  # all at once
        return [_flatten(_workload(inp)) for _ in range(2)]

    with ThreadPoolExecutor(max_workers=N_THREADS) as pool:
        results = list(pool.map(run, range(N_THREADS)))
    for t, runs in enumerate(results):
        for got in runs:
            assert got.keys() == serial.keys()
            for key in serial:
                assert_bits_equal(got[key], serial[key], f"{key} (thread {t})")


def test_kernels_release_the_gil():
    """While one thread is inside a kernel, another runs Python code: it makes progress in
    the middle of the call (a kernel holding the GIL would let it run only before and after).

    The other thread needs the CPU too: on a loaded machine the scheduler may keep it off
    for a whole call, so each call gets three tries to show one step in its middle 80%."""
    x = np.ones(1 << 25, np.float32)  # 128 MiB: tens of milliseconds per call
    x[::3] = 4.0
    dy = np.full_like(x, 0.5)
    stamps = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            stamps.append(time.perf_counter())
            sum(range(50))

    calls = {
        "moments": lambda: bnfast.moments(x, axis=None, n_threads=1),
        "forward": lambda: bnfast.batch_norm_forward(x, axis=None, out=dy, n_threads=1),
        "inference": lambda: bnfast.batch_norm_inference(x, [1.0], [2.0], axis=None, out=dy,
                                                         n_threads=1),
        "backward": lambda: bnfast.batch_norm_backward(dy, x, [1.0], [0.7], axis=None, out=dy,
                                                       n_threads=1),
    }
    thread = threading.Thread(target=ticker)
    thread.start()
    try:
        time.sleep(0.01)
        for name, call in calls.items():
            tries = []
            for _ in range(3):
                t0 = time.perf_counter()
                call()
                t1 = time.perf_counter()
                margin = 0.1 * (t1 - t0)
                tries.append(sum(t0 + margin < s < t1 - margin for s in list(stamps)))
                if tries[-1]:
                    break
            assert tries[-1] > 0, (name, tries)
    finally:
        stop.set()
        thread.join()


# ------------------------------------------------------------------------------ memory

LEAK_CHILD = textwrap.dedent(r"""
    import gc, json, os, sys, warnings
    import numpy as np
    import bnfast

    try:
        import ctypes
        trim = ctypes.CDLL(None).malloc_trim   # glibc: give freed heap memory back
    except (OSError, AttributeError):
        trim = lambda pad: 0

    def rss():
        # Resident bytes, after handing free heap memory back to the OS (otherwise a leak
        # first fills the allocator's free lists, which are resident already).
        gc.collect()
        trim(0)
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    rng = np.random.default_rng(0)
    # Big enough that a leaked array per call shows: x 128 KiB, per-channel vectors 16 KiB.
    x = rng.standard_normal((16, 2048)).astype(np.float32)
    x4 = rng.standard_normal((4, 64, 8, 8))
    C = 2048
    g, b = rng.uniform(0.5, 2, C), rng.uniform(-1, 1, C)
    rm, rv = np.zeros(C), np.ones(C)
    rm32, rv32 = np.zeros(2 * C, np.float32)[::2], np.ones(2 * C, np.float32)[::2]
    out = np.empty_like(x)
    _, mean, invstd = bnfast.batch_norm_forward(x)
    bad = np.ones(C + 1)

    def expect(exc, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except exc:
            return
        raise AssertionError(f"{fn.__name__} did not raise {exc.__name__}")

    xl = x.copy()  # the layer keeps its last input for backward
    bn = bnfast.BatchNorm(C)
    scenarios = {
        "moments": lambda: bnfast.moments(x),
        "moments_state skipna": lambda: bnfast.moments_state(x, skipna=True),
        "merge_moments": lambda: bnfast.merge_moments([bnfast.moments_state(x)] * 2),
        "forward + running stats": lambda: bnfast.batch_norm_forward(
            x, g, b, running_mean=rm, running_var=rv),
        "forward strided float32 running stats, out=": lambda: bnfast.batch_norm_forward(
            x, running_mean=rm32, running_var=rv32, out=out),
        "forward NCHW": lambda: bnfast.batch_norm_forward(x4),
        "inference": lambda: bnfast.batch_norm_inference(x, rm, rv, g, b),
        "backward": lambda: bnfast.batch_norm_backward(x, x, mean, invstd, g),
        "layer train + backward": lambda: (bn.train()(xl), bn.backward(xl)),
        "layer eval + backward": lambda: (bn.eval()(xl), bn.backward(xl)),
        "error: gamma length": lambda: expect(ValueError, bnfast.batch_norm_forward, x, bad),
        "error: one value per channel": lambda: expect(
            ValueError, bnfast.batch_norm_forward, x[:1]),
        "error: complex x": lambda: expect(TypeError, bnfast.moments, x.astype(complex)),
        "error: axis": lambda: expect(np.exceptions.AxisError, bnfast.moments, x, axis=5),
        "error: out read-only": lambda: expect(
            ValueError, bnfast.batch_norm_inference, x, rm, rv,
            out=np.broadcast_to(out, out.shape)),
        "error: backward mean length": lambda: expect(
            ValueError, bnfast.batch_norm_backward, x, x, bad, invstd),
        "error: layer channels": lambda: expect(ValueError, bn.train(), xl[:, :7]),
        "error: layer state dict": lambda: expect(
            ValueError, bn.load_state_dict, {**bn.state_dict(), "weight": bad}),
    }
    try:
        import sklearn  # noqa: F401
        Xs = rng.standard_normal((256, 64))
        Xinf = Xs.copy(); Xinf[3, 3] = np.inf
        s = bnfast.BatchNormScaler().fit(Xs)
        scenarios.update({
            "scaler fit + transform": lambda: s.fit(Xs).transform(Xs),
            "scaler partial_fit + inverse": lambda: s.partial_fit(Xs).inverse_transform(Xs),
            "error: scaler infinity": lambda: expect(ValueError, s.fit, Xinf),
            "error: scaler features": lambda: expect(ValueError, s.transform, Xs[:, :3]),
        })
    except ImportError:
        pass

    n = int(sys.argv[1])
    refs = {k: sys.getrefcount(v) for k, v in dict(x=x, g=g, rm=rm, rm32=rm32, out=out,
                                                   mean=mean, bad=bad).items()}
    report = {}
    warnings.simplefilter("ignore")
    gc.freeze()  # what exists now (imports) is not garbage: keeps gc.collect() fast
    for name, fn in scenarios.items():
        for _ in range(max(50, n // 10)):  # warm up: caches, allocator arenas
            fn()
        before = rss()
        for _ in range(n):
            fn()
        report[name] = rss() - before
    after = {k: sys.getrefcount(v) for k, v in dict(x=x, g=g, rm=rm, rm32=rm32, out=out,
                                                    mean=mean, bad=bad).items()}
    print(json.dumps(dict(growth=report, refs_before=refs, refs_after=after)))
""")


@on_linux
@pytest.mark.skipif(SANITIZED, reason="ASan's quarantine keeps freed memory resident")
def test_repeated_calls_keep_memory_flat():
    """Thousands of calls per scenario, successes and errors: the resident set stays flat
    (a fresh process, so other tests' allocations don't blur it) and no call keeps a
    reference to an argument."""
    n = 1000
    done = subprocess.run([sys.executable, "-c", LEAK_CHILD, str(n)], capture_output=True,
                          text=True, timeout=300, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # Freed heap memory is handed back before each reading (malloc_trim), so a leak of
    # 1 KiB per call shows as 1 MiB; the noise is a few pages. (A leaked float per call
    # shows as 32 KiB: too little to test for, without false alarms.)
    tolerance = 1 << 20
    grown = {k: v for k, v in report["growth"].items() if v > tolerance}
    assert not grown, f"resident memory grew (bytes over {n} calls): {grown}"
    assert report["refs_before"] == report["refs_after"], "a call kept a reference"


# ------------------------------------------------------------------------------ interrupts

INTERRUPT_CHILD = textwrap.dedent(r"""
    import json, os, signal, sys, threading, time, traceback
    import numpy as np
    import bnfast

    n = int(sys.argv[1])
    # What an interactive Python has; a parent that ignores SIGINT (some test harnesses and
    # cluster tools do) would otherwise pass SIG_IGN on to this process.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    arrivals = []
    r, w = os.pipe()
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w)   # written by the C-level handler the moment SIGINT arrives

    def watch():
        while True:
            os.read(r, 1)
            arrivals.append(time.perf_counter())

    threading.Thread(target=watch, daemon=True).start()
    x = np.empty(n, np.float32)

    def fill():
        x[0::2] = 3.0   # mean 2, biased variance 1
        x[1::2] = 1.0

    def attempt(kind, call):
        print("calling", kind, flush=True)   # the parent sends SIGINT on this line
        t0 = time.perf_counter()
        try:
            call()
            outcome, where = "returned", None
        except KeyboardInterrupt as exc:
            outcome = "KeyboardInterrupt"
            where = traceback.extract_tb(exc.__traceback__)[-1].line
        t1 = time.perf_counter()
        try:
            time.sleep(0.5)   # a signal that came after the call is raised here
        except KeyboardInterrupt:
            pass
        hit = [a - t0 for a in arrivals if t0 <= a <= t1]
        arrivals.clear()
        return dict(outcome=outcome, where=where, seconds=t1 - t0,
                    signal_after=hit[0] if hit else None)

    results = {}
    # "functional": the validating path (1-D, axis None; a strided float32 running_var goes
    # through a float64 copy); "functional-plain": 2-D, the path without Python in between.
    for kind, view, axis in (("functional", x, None), ("functional-plain", x.reshape(-1, 1), 1)):
        for attempt_no in range(5):   # until the signal lands inside the call
            fill()
            rm = np.zeros(1)
            rv = np.zeros(2, np.float32)[::2] if axis is None else np.zeros(1)
            res = attempt(kind, lambda: bnfast.batch_norm_forward(
                view, axis=axis, out=view, running_mean=rm, running_var=rv, n_threads=1))
            a = np.float32(1.0 / np.sqrt(1.0 + 1e-5))
            res.update(out_complete=bool((x[0::2] == a).all() and (x[1::2] == -a).all()),
                       out_untouched=bool((x[0::2] == 3).all() and (x[1::2] == 1).all()),
                       running_mean=rm.tolist(), running_var=rv.tolist())
            if res["signal_after"] is not None:
                results[kind] = res
                break
    for attempt_no in range(5):
        fill()
        bn = bnfast.BatchNorm(1, axis=None, momentum=None, dtype=np.float64, n_threads=1)
        res = attempt("layer", lambda: bn(x))
        res.update(running_mean=bn.running_mean.tolist(), running_var=bn.running_var.tolist(),
                   num_batches_tracked=bn.num_batches_tracked, saved=bn._saved is not None,
                   x_untouched=bool((x[0::2] == 3).all() and (x[1::2] == 1).all()))
        if res["signal_after"] is not None:
            results["layer"] = res
            break
    print("done", json.dumps(results), flush=True)
""")


def run_interrupt_experiment(n_elements, delay=0.02, timeout=600):
    """Run INTERRUPT_CHILD on a float32 array of n_elements, sending SIGINT ``delay`` seconds
    after each call starts; returns the child's report."""
    child = subprocess.Popen([sys.executable, "-c", INTERRUPT_CHILD, str(n_elements)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    try:
        deadline = time.monotonic() + timeout
        for line in child.stdout:
            if line.startswith("calling"):
                time.sleep(delay)
                os.kill(child.pid, signal.SIGINT)
            elif line.startswith("done"):
                report = json.loads(line[5:])
                break
            assert time.monotonic() < deadline, "interrupt experiment timed out"
        else:
            raise AssertionError(f"child ended early: {child.stderr.read()[-3000:]}")
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return report


def check_interrupt_report(report, n_elements):
    """What SIGINT during a call must do (README_issue5, "Interrupts")."""
    missing = {"functional", "functional-plain", "layer"} - set(report)
    assert not missing, f"SIGINT never hit a call of {missing}: {report}"
    for kind in ("functional", "functional-plain"):
        fn = report[kind]
        # The kernel does not check for signals: the call runs to its end and
        # KeyboardInterrupt is raised as it returns, at the kernel call.
        assert fn["outcome"] == "KeyboardInterrupt", fn
        assert "_kernels.forward_train" in fn["where"], fn
        assert fn["signal_after"] < fn["seconds"], fn
        # In-place outputs hold the complete result; the running statistics are updated
        # whole (0.1 * the batch statistics: mean 2, unbiased variance 1 + 1/(n - 1)).
        assert fn["out_complete"], fn
        # The batch statistics of 3, 1, 3, 1, ... are exact (integer sums); the update rounds
        # a few times in float64 and once to the (float32 for "functional") buffer.
        rtol = unit_roundoff(np.float32) + 4 * unit_roundoff()
        np.testing.assert_allclose(fn["running_mean"], [0.2], rtol=rtol, atol=0)
        np.testing.assert_allclose(fn["running_var"], [0.1 * n_elements / (n_elements - 1)],
                                   rtol=rtol, atol=0)
    layer = report["layer"]
    assert layer["outcome"] == "KeyboardInterrupt", layer
    # The layer is left as it was: no half-update of running stats vs num_batches_tracked.
    assert layer["running_mean"] == [0.0] and layer["running_var"] == [1.0], layer
    assert layer["num_batches_tracked"] == 0 and not layer["saved"], layer
    assert layer["x_untouched"], layer


@on_linux
def test_sigint_during_a_call():
    """512 MiB: long enough (about 0.1 s per call) to send SIGINT while the kernel runs."""
    check_interrupt_report(run_interrupt_experiment(1 << 27), 1 << 27)


@pytest.mark.slow
@on_linux
def test_sigint_during_a_call_on_2gib():
    report = run_interrupt_experiment(1 << 29, delay=0.1)
    print(json.dumps(report, indent=1))
    check_interrupt_report(report, 1 << 29)


def test_functional_forward_interrupted_after_the_kernel(monkeypatch, rng):
    """KeyboardInterrupt raised as the kernel returns: running statistics that live in a
    float64 copy (float16, strided) are still written back whole, like the others."""
    from bnfast import _plain

    real = _plain._kernels

    class Interrupting:
        def __getattr__(self, name):
            return getattr(real, name)

        @staticmethod
        def forward_train(*args):
            result = real.forward_train(*args)
            if result is None:
                return None  # not the plain case: the validating path calls it again
            raise KeyboardInterrupt

    x = make_float(rng, (20, 3), 1)
    want_rm, want_rv = np.zeros(3), np.ones(3)
    want_y = bnfast.batch_norm_forward(x, running_mean=want_rm, running_var=want_rv)[0]
    monkeypatch.setattr(_plain, "_kernels", Interrupting())
    for make in (lambda v: v.copy(), lambda v: v.astype(np.float16),
                 lambda v: np.repeat(v, 2)[::2]):
        rm, rv = make(np.zeros(3)), make(np.ones(3))
        out = np.empty_like(x)
        with pytest.raises(KeyboardInterrupt):
            bnfast.batch_norm_forward(x, running_mean=rm, running_var=rv, out=out)
        # the same float64 update, rounded once to the buffer's dtype (float16 included)
        rtol = unit_roundoff(rm.dtype) + 4 * unit_roundoff()
        np.testing.assert_allclose(rm, want_rm.astype(rm.dtype), rtol=rtol,
                                   atol=rtol * np.abs(want_rm).max())
        np.testing.assert_allclose(rv, want_rv.astype(rv.dtype), rtol=rtol)
        np.testing.assert_array_equal(out, want_y)


# ------------------------------------------------------------------------------ layer state

def _layer_state(bn):
    """Every attribute: arrays by identity and content (optimizers hold references)."""
    state = {}
    for key, value in vars(bn).items():
        if isinstance(value, np.ndarray):
            state[key] = ("array", id(value), value.dtype.str, value.shape, value.tobytes())
        elif key == "_saved":
            state[key] = None if value is None else tuple(
                (id(v), None if v is None else np.asarray(v).tobytes()) for v in value)
        else:
            state[key] = (type(value), value)
    return state


def _trained_layer(rng, momentum, affine=True):
    bn = bnfast.BatchNorm(3, momentum=momentum, affine=affine)
    for _ in range(3):
        x = make_float(rng, (16, 3, 4), 1).astype(np.float32)
        bn(x)
        bn.backward(rng.standard_normal(x.shape).astype(np.float32))
    return bn


BAD_FORWARD = {
    "channels": lambda rng: make_float(rng, (8, 4, 4), 1),
    "one value per channel": lambda rng: make_float(rng, (1, 3, 1), 1),
    "empty batch": lambda rng: np.empty((0, 3, 4)),
    "0-d": lambda rng: np.float64(2.0),
    "1-d": lambda rng: np.arange(3.0),
    "complex": lambda rng: make_float(rng, (8, 3, 4), 1).astype(complex),
    "object": lambda rng: make_float(rng, (8, 3, 4), 1).astype(object),
    "strings": lambda rng: np.full((8, 3, 4), "a"),
    "datetime": lambda rng: np.zeros((8, 3, 4), "M8[s]"),
    "ragged list": lambda rng: [[1.0, 2.0, 3.0], [1.0]],
    "None": lambda rng: None,
}
BAD_BACKWARD = {
    "shape": lambda rng: np.ones((15, 3, 4), np.float32),
    "complex": lambda rng: np.ones((16, 3, 4), complex),
    "strings": lambda rng: np.full((16, 3, 4), "a"),
    "None": lambda rng: None,
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_layer_unchanged_by_failed_calls(rng, training, momentum):
    bn = _trained_layer(rng, momentum)
    bn.train(training)
    bn(make_float(rng, (16, 3, 4), 1).astype(np.float32))  # something saved for backward
    before = _layer_state(bn)
    for name, make in BAD_FORWARD.items():
        if not training and name in ("one value per channel", "empty batch"):
            continue  # fine in eval mode
        with pytest.raises((ValueError, TypeError)):
            bn(make(rng))
        assert _layer_state(bn) == before, f"forward({name}) changed the layer"
    for name, make in BAD_BACKWARD.items():
        with pytest.raises((ValueError, TypeError)):
            bn.backward(make(rng))
        assert _layer_state(bn) == before, f"backward({name}) changed the layer"
    for mode in ("yes", None, 1, np.array([True])):
        with pytest.raises(ValueError):
            bn.train(mode)
        assert _layer_state(bn) == before, f"train({mode!r}) changed the layer"
    for bad in ({"weight": np.ones(4)}, {**bn.state_dict(), "running_var": np.ones((3, 1))},
                {**bn.state_dict(), "num_batches_tracked": np.array(-1)}, "weight", None):
        with pytest.raises((ValueError, TypeError, KeyError)):
            bn.load_state_dict(bad)
        assert _layer_state(bn) == before, f"load_state_dict({bad!r:.40}) changed the layer"


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative"])
def test_layer_interrupted_after_the_kernel_is_unchanged(monkeypatch, rng, momentum):
    """KeyboardInterrupt raised as the kernel returns (what SIGINT does, see
    test_sigint_during_a_call): the running statistics the kernel updated are put back and
    num_batches_tracked stays, so the layer is as before the call."""
    from bnfast import layer

    real = layer.batch_norm_forward

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    bn = _trained_layer(rng, momentum)
    before = _layer_state(bn)
    monkeypatch.setattr(layer, "batch_norm_forward", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bn(make_float(rng, (16, 3, 4), 1).astype(np.float32))
    assert _layer_state(bn) == before
    monkeypatch.setattr(layer, "batch_norm_forward", real)
    x = make_float(rng, (16, 3, 4), 1).astype(np.float32)
    twin = _trained_layer(np.random.default_rng(0), momentum)
    twin.load_state_dict(bn.state_dict())
    np.testing.assert_array_equal(bn(x), twin(x))  # and it goes on as if nothing happened
    np.testing.assert_array_equal(bn.running_var, twin.running_var)


# ------------------------------------------------------------------------------ scaler state

def _scaler_state(s):
    state = {}
    for key, value in vars(s).items():
        if isinstance(value, np.ndarray):
            state[key] = ("array", id(value), value.dtype.str, value.shape, value.tobytes())
        else:
            state[key] = (type(value), repr(value))
    return state


def _fitted_scaler(rng, **params):
    X = make_float(rng, (40, 4), 1)
    X[3, 1] = np.nan
    return bnfast.BatchNormScaler(**params).fit(X).partial_fit(X[:10] + 1.0)


def _bad_fits(rng):
    X = make_float(rng, (30, 4), 1)
    Xinf = X.copy()
    Xinf[7, 2] = np.inf
    return {
        "infinity": (Xinf, None),
        "features": (X[:, :3], None),
        "complex": (X.astype(complex), None),
        "3-D": (X.reshape(30, 2, 2), None),
        "empty": (X[:0], None),
        "strings": (np.full((3, 4), "a"), None),
        "huge int": ([[10**400] * 4] * 3, None),
        "weight length": (X, np.ones(29)),
        "zero weights": (X, np.zeros(30)),
        "weight infinity": (X, np.full(30, np.inf)),
        "huge weight": (X, 10**400),
    }


@needs_sklearn
@pytest.mark.parametrize("momentum", [None, 0.3], ids=["exact", "ema"])
@pytest.mark.parametrize("method", ["fit", "partial_fit", "fit_transform"])
def test_scaler_unchanged_by_failed_fits(rng, method, momentum):
    s = _fitted_scaler(rng, momentum=momentum)
    before = _scaler_state(s)
    for name, (X, w) in _bad_fits(rng).items():
        if method != "partial_fit" and name == "features":
            continue  # a new fit may change the number of features
        with pytest.raises((ValueError, TypeError)):
            getattr(s, method)(X, sample_weight=w)
        assert _scaler_state(s) == before, f"{method}({name}) changed the scaler"
    for params in (dict(eps=-1.0), dict(momentum=2.0), dict(with_mean="no"), dict(copy=None),
                   dict(n_threads=0), dict(eps=10**400)):
        good = s.get_params()
        s.set_params(**params)
        with pytest.raises(ValueError):
            getattr(s, method)(make_float(rng, (10, 4), 1))
        s.set_params(**good)
        assert _scaler_state(s) == before, f"{method} with {params} changed the scaler"


@needs_sklearn
def test_scaler_unchanged_by_failed_transforms(rng):
    s = _fitted_scaler(rng)
    before = _scaler_state(s)
    X = make_float(rng, (30, 4), 1)
    for bad in (X[:, :3], X.astype(complex), np.full((3, 4), "a"), X.reshape(30, 2, 2), None):
        for method in ("transform", "inverse_transform"):
            with pytest.raises((ValueError, TypeError)):
                getattr(s, method)(bad)
            assert _scaler_state(s) == before
    with pytest.raises(ValueError):
        s.transform(X, copy="no")
    assert _scaler_state(s) == before


@needs_sklearn
@pytest.mark.parametrize("method", ["fit", "partial_fit", "fit_transform"])
def test_scaler_interrupted_fit_is_unchanged(monkeypatch, rng, method):
    """KeyboardInterrupt in the middle of a fit (after the statistics of the new batch were
    computed) leaves the fitted scaler as it was."""
    from bnfast import _scaler_stats  # where the scaler's batch statistics are taken

    real = _scaler_stats.moments_state

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    s = _fitted_scaler(rng)
    before = _scaler_state(s)
    monkeypatch.setattr(_scaler_stats, "moments_state", interrupted)
    with pytest.raises(KeyboardInterrupt):
        getattr(s, method)(make_float(rng, (30, 4), 1))
    assert _scaler_state(s) == before


# ------------------------------------------------------------------------------ found by fuzzing

@pytest.mark.parametrize("call", [
    lambda x: bnfast.batch_norm_forward(x, eps=10**400),
    lambda x: bnfast.batch_norm_forward(x, eps=Fraction(10**400)),
    lambda x: bnfast.batch_norm_forward(x, momentum=10**400),
    lambda x: bnfast.batch_norm_inference(x, [0.0] * 3, [1.0] * 3, eps=-10**400),
    lambda x: bnfast.moments(x, ddof=10**400),
    lambda x: bnfast.moments(x, ddof=-10**400),
    lambda x: bnfast.merge_moments([(1, 10**400, 0.0)]),
    lambda x: bnfast.merge_moments([(10**400, [1.0], [0.0])]),
    lambda x: bnfast.merge_moments([(None, None, None)]),
    lambda x: bnfast.merge_moments([(None, [1.0], [0.0])]),
    lambda x: bnfast.moments_state(x, skipna="no"),
    lambda x: bnfast.moments_state(x, skipna=None),
    lambda x: bnfast.fold_batch_norm(np.ones((3, 2)), None, np.zeros(3), np.ones(3), None,
                                     None, eps=10**400),
    lambda x: bnfast.BatchNorm(3, eps=10**400),
], ids=["eps-huge-int", "eps-huge-fraction", "momentum-huge-int", "inference-eps",
        "ddof-huge", "ddof-huge-negative", "merge-mean-huge", "merge-count-huge",
        "merge-none", "merge-count-none",
        "skipna-str", "skipna-None", "fold-eps", "layer-eps"])
def test_fuzzing_findings_are_value_errors(rng, call):
    """Python ints (and fractions) beyond float64 used to escape as OverflowError, a None
    state as AttributeError (or, for count and mean, to become NaN), skipna took any truthy
    object."""
    with pytest.raises(ValueError):
        call(make_float(rng, (6, 3), 1))


@pytest.mark.parametrize("axis", [Decimal("sNaN"), Decimal("0"), 0.0, "0", 1.5])
def test_non_integer_axis_is_a_type_error_for_1d_too(rng, axis):
    """1-D input used to compare the axis with (-1, 0, 1): 0.0 passed, sNaN raised
    decimal.InvalidOperation."""
    for x in (make_float(rng, (6,), 0), make_float(rng, (6, 3), 1)):
        with pytest.raises(TypeError, match="axis"):
            bnfast.moments(x, axis=axis)


def test_unsigned_ddof_does_not_wrap_around(rng):
    """m - ddof with an unsigned NumPy ddof wrapped to 2**64 - 2 and gave a variance of ~0."""
    x = make_float(rng, (3, 2), 1)
    with pytest.warns(RuntimeWarning):
        _, var = bnfast.moments(x, ddof=np.uint64(5))
    assert np.isinf(var).all()
    # M2's bound (stat_rtol of stat_scales), times n / (n - ddof) = 1.5
    _, var_scale = stat_scales(x, 1)
    np.testing.assert_allclose(bnfast.moments(x, ddof=np.uint8(1))[1], x.var(axis=0, ddof=1),
                               rtol=stat_rtol(3), atol=stat_rtol(3) * 1.5 * var_scale)


@needs_sklearn
def test_scaler_values_beyond_float_are_value_errors(rng):
    X = make_float(rng, (6, 3), 1)
    for call in (lambda: bnfast.BatchNormScaler().fit(10**400),
                 lambda: bnfast.BatchNormScaler().fit([[10**400, 1.0]] * 3),
                 lambda: bnfast.BatchNormScaler().fit(X, sample_weight=10**400),
                 lambda: bnfast.BatchNormScaler().fit(X).transform([[10**400] * 3])):
        with pytest.raises(ValueError):
            call()
