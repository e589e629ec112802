"""More than 2**31 elements: in the whole array and in a single channel (opt-in, slow).

One float32 buffer of 2**31 + 2**20 elements (8 GiB + 4 MiB), worked on in place (out=x)
so the whole test stays near 8 GiB: viewed as 1-D (one channel of 2**31 + 2**20 elements),
as (N, 2) with axis=1 (channels last) and as (2, N) with axis=0 (each channel a contiguous
run that ends past element 2**31). For each: the statistics against an exact closed form,
the training forward in place with running statistics, every element of y, the inference
forward in place and the backward in place (dy = x = out) at sampled positions and against
chunked float64 NumPy sums.

Run with ``pytest -m slow tests/test_big_arrays.py`` (or BNFAST_SLOW=1); a plain ``pytest``,
which is what CI runs, skips it. Needs about 8.5 GiB of free memory and a few minutes.
"""

import resource
import sys
import time

import numpy as np
import pytest

import bnfast

from _helpers import gamma_n, unit_roundoff  # noqa: E402

N_BLOCKS = 2049                  # blocks of every channel; block b adds b - 1024
N_TOTAL = N_BLOCKS * 2**20       # 2**31 + 2**20 elements
SCALE = (1.0, 2.0)               # per channel: spread of the ramp inside a block
OFFSET = (5000.0, -3000.0)       # per channel: the mean
NEED_BYTES = 4 * N_TOTAL + (512 << 20)

# (id, shape, axis, channels, block length K): every channel is N_BLOCKS blocks of K values.
LAYOUTS = [
    ("1d-one-channel", (N_TOTAL,), 0, 1, 2**20),
    ("N2-axis1", (N_TOTAL // 2, 2), 1, 2, 2**19),
    ("2N-axis0", (2, N_TOTAL // 2), 0, 2, 2**19),
]


U32 = unit_roundoff(np.float32)


def blocked_rtol(m):
    """rtol of a float64 mean / variance / sum over m values per channel, taken the kernels'
    way: sums over blocks of at most 65536 values (docs/design.md §3), then one merge per block
    of at least 4096 values. Blocked summation is within gamma_{b + m/b'} of the exact sum of
    |terms| (Higham, Accuracy and Stability of Numerical Algorithms, 4.2); the factor 2 * 5
    is stat_rtol's (two sides, shifted sums). NumPy's pairwise float64 sums are within a smaller
    bound of their own, covered by the factor 2."""
    return 2.0 * 5.0 * gamma_n(65536 + m // 4096 + 3)


def _available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.maxsize < 2**40, reason="needs a 64-bit build"),
    pytest.mark.skipif((_available_bytes() or NEED_BYTES) < NEED_BYTES,
                       reason=f"needs {NEED_BYTES / 2**30:.1f} GiB of free memory"),
]


_RAMPS = {}


def block_values(b, K, c):
    """float64 values of block b of channel c: exact in float32 (half-integers below 2**21)."""
    if K not in _RAMPS:
        _RAMPS[K] = np.arange(K) - (K - 1) / 2
    return SCALE[c] * _RAMPS[K] + ((b - (N_BLOCKS - 1) // 2) + OFFSET[c])


def exact_moments(K, C):
    """Mean and biased variance of every channel, in closed form: the ramp's variance plus
    the variance of the block offsets -1024..1024."""
    h = (N_BLOCKS - 1) // 2
    mean = np.array(OFFSET[:C])
    var = np.array([SCALE[c] ** 2 * (K * K - 1) / 12 + h * (h + 1) / 3 for c in range(C)])
    return mean, var


def blocks(x, shape, K, C):
    """(c, b, view) for every block of every channel of x seen as ``shape``."""
    v = x.reshape(shape)
    for b in range(N_BLOCKS):
        sl = slice(b * K, (b + 1) * K)
        for c in range(C):
            if len(shape) == 1:
                yield c, b, v[sl]
            elif shape[1] == 2:     # (N, 2), channels last
                yield c, b, v[sl, c]
            else:                   # (2, N), channel first
                yield c, b, v[c, sl]


def flat_to_block(i, shape, K):
    """(c, b, j): channel, block and position in the block of flat index i."""
    if len(shape) == 1:
        return 0, i // K, i % K
    if shape[1] == 2:
        row, c = divmod(i, 2)
    else:
        c, row = divmod(i, shape[1])
    return c, row // K, row % K


@pytest.fixture(scope="module")
def buffer():
    t0 = time.perf_counter()
    x = np.empty(N_TOTAL, np.float32)
    x[:] = 0  # touch every page once, here, not in the timed steps
    print(f"\nallocated and touched {x.nbytes / 2**30:.2f} GiB in "
          f"{time.perf_counter() - t0:.1f} s")
    yield x
    del x


def _sample_positions(rng):
    n = N_TOTAL
    edges = [0, 1, 2**31 - 2, 2**31 - 1, 2**31, 2**31 + 1, n // 2 - 1, n // 2, n - 2, n - 1]
    return np.unique(np.concatenate([[e for e in edges if e < n], rng.integers(0, n, 2000)]))


@pytest.mark.parametrize("name, shape, axis, C, K", LAYOUTS, ids=[v[0] for v in LAYOUTS])
def test_more_than_2_31_elements_in_place(buffer, name, shape, axis, C, K):
    rng = np.random.default_rng(12345)
    timings = {}
    x = buffer.reshape(shape)
    m = N_TOTAL // C  # elements per channel

    t0 = time.perf_counter()
    for c, b, view in blocks(buffer, shape, K, C):
        view[...] = block_values(b, K, c)
    timings["fill"] = time.perf_counter() - t0
    want_mean, want_var = exact_moments(K, C)
    rtol = blocked_rtol(m)
    big = max(abs(OFFSET[c]) + SCALE[c] * K / 2 + N_BLOCKS for c in range(C))  # >= max |x|
    mean_atol = rtol * big
    # The variance's error is relative to max (x - mean)^2, plus the square of the mean's error.
    var_atol = rtol * (big + max(abs(o) for o in OFFSET[:C])) ** 2 + mean_atol ** 2

    # Statistics.
    t0 = time.perf_counter()
    mean, var = bnfast.moments(x, axis=axis)
    timings["moments"] = time.perf_counter() - t0
    np.testing.assert_allclose(mean, want_mean, rtol=0, atol=mean_atol)
    np.testing.assert_allclose(var, want_var, rtol=0, atol=var_atol)

    # Training forward in place, with running statistics.
    rm, rv = np.zeros(C), np.ones(C)
    t0 = time.perf_counter()
    y, mean, invstd = bnfast.batch_norm_forward(x, axis=axis, out=x, running_mean=rm,
                                                running_var=rv, momentum=0.25)
    timings["forward (in place)"] = time.perf_counter() - t0
    assert y is x
    np.testing.assert_allclose(mean, want_mean, rtol=0, atol=mean_atol)
    # invstd: half the variance's relative error, plus a few float64 roundings.
    np.testing.assert_allclose(invstd, 1 / np.sqrt(want_var + 1e-5),
                               rtol=0.5 * var_atol / want_var.min() + 8 * unit_roundoff())
    # Running statistics: a quarter of the statistics' error, plus three float64 roundings.
    np.testing.assert_allclose(rm, 0.25 * want_mean, rtol=3 * unit_roundoff(),
                               atol=0.25 * mean_atol)
    np.testing.assert_allclose(rv, 0.75 + 0.25 * want_var * m / (m - 1),
                               rtol=3 * unit_roundoff(), atol=0.25 * var_atol * m / (m - 1))

    # Every element of y (a wrong offset past 2**31 would read or write the wrong element).
    t0 = time.perf_counter()
    # The float32 elementwise pass is within 5 u32 |y| of y = (x - mean) * invstd (the
    # analysis above the loops in src/bn_elementwise_impl.h, with shift 0); a wrong offset past
    # 2**31 would put an element of another block there, off by O(1).
    worst = -np.inf
    for c, b, view in blocks(buffer, shape, K, C):
        want = (block_values(b, K, c) - mean[c]) * invstd[c]
        worst = max(worst, float(np.max(np.abs(view - want) - 5 * U32 * np.abs(want))))
    timings["check every y"] = time.perf_counter() - t0
    assert worst <= 1e-12, f"largest |y - exact| beyond 5 u32 |y|: {worst}"

    # Inference forward in place: z = 2 y + 1, at sampled positions (2**31 edges included).
    idx = _sample_positions(rng)
    y_sample = buffer[idx].astype(np.float64)
    t0 = time.perf_counter()
    z = bnfast.batch_norm_inference(x, np.zeros(C), np.ones(C), np.full(C, 2.0),
                                    np.ones(C), axis=axis, eps=0.0, out=x)
    timings["inference (in place)"] = time.perf_counter() - t0
    assert z is x
    # (y - 0) * 2 + 1 in float32: within 5 u32 (|z| + |shift|), shift = 1.
    z_want = 2 * y_sample + 1
    assert np.all(np.abs(buffer[idx] - z_want) <= 5 * U32 * (np.abs(z_want) + 1))

    # Backward in place with dy = x = z, mean 0 and invstd 1: xhat = z, so
    # dbeta = sum z, dgamma = sum z^2 and dx = z - dbeta / m - z * dgamma / m.
    t0 = time.perf_counter()
    sums = np.zeros((C, 2))
    for c, b, view in blocks(buffer, shape, K, C):
        v = view.astype(np.float64)
        sums[c] += v.sum(), (v * v).sum()
    timings["float64 sums (NumPy)"] = time.perf_counter() - t0
    z_sample = buffer[idx].astype(np.float64)
    t0 = time.perf_counter()
    dx, dgamma, dbeta = bnfast.batch_norm_backward(x, x, np.zeros(C), np.ones(C), axis=axis,
                                                   out=x)
    timings["backward (in place)"] = time.perf_counter() - t0
    assert dx is x
    # Both sides sum the same float32 values in float64: each within blocked_rtol / 2 of the
    # exact sum, relative to the sum of |terms| (|z| < 2 * 1.8 + 1 bounds sum |z| by 4.6 m).
    np.testing.assert_allclose(dbeta, sums[:, 0], rtol=0, atol=rtol * 4.6 * m)
    np.testing.assert_allclose(dgamma, sums[:, 1], rtol=rtol)
    ch = np.array([flat_to_block(int(i), shape, K)[0] for i in idx])
    g_term = z_sample - dbeta[ch] / m
    h_term = z_sample * dgamma[ch] / m
    want_dx = g_term - h_term
    # The float32 backward pass is within 5 u32 (|G k| + |H|) with k = 1 (bn_elementwise_impl.h).
    assert np.all(np.abs(buffer[idx] - want_dx) <= 5 * U32 * (np.abs(g_term) + np.abs(h_term))
                  + 1e-12)

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    print(f"{name}: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items())
          + f"; peak RSS {peak:.2f} GiB")
