"""float16 and bfloat16: loaded and stored by the kernels themselves (widened to float32 in
registers, results rounded once). The conversions against NumPy's and ml_dtypes' on every
float16 value, accuracy against the float64 reference, the fused epilogues against the
unfused half-precision sequence bit for bit, the x86-64-v3 and baseline loops against each
other, thread counts, dtypes, and bfloat16 without ml_dtypes imported by bnfast."""
import numpy as np
import pytest

import bnfast
from bnfast import _kernels
from bnfast import reference as ref
from bnfast._dtypes import BFLOAT16_BITS
from _helpers import (
    assert_backward_close,
    assert_bits_equal,
    assert_forward_close,
    assert_inference_close,
    assert_moments_close,
    float32_forward_bound,
    make_channel_params,
    make_float,
    run_python,
    unit_roundoff,
)

try:
    import ml_dtypes
except ImportError:  # the bfloat16 cases need it; float16 ones do not
    ml_dtypes = None

HALVES = [pytest.param(np.dtype(np.float16), id="f16"),
          pytest.param("bfloat16", id="bf16",
                       marks=pytest.mark.skipif(ml_dtypes is None, reason="needs ml_dtypes"))]

LAYOUTS = [
    pytest.param((32, 16, 9, 9), 1, id="NCHW"),
    pytest.param((8, 9, 9, 24), -1, id="NHWC"),
    pytest.param((300, 37), 1, id="NC"),
    pytest.param((64, 3), 1, id="NC-few-channels"),
    pytest.param((5000,), 0, id="1d"),
    pytest.param((4, 70, 9, 9), 1, id="NCHW-many-channels"),
    pytest.param((6, 3, 700), 1, id="NCL-long-runs"),
]


def _dtype(name):
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def _all_float16():
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)


def _both_loops():
    """The x86-64-v3 loops and the baseline ones where this build has both (else once)."""
    loops = [False]
    if _kernels.use_baseline_half_loops(True) != _kernels.use_baseline_half_loops(False):
        loops.append(True)
    return loops


@pytest.fixture
def baseline_loops():
    """Run the test body's kernels with the baseline loops, then restore the CPU's choice."""
    _kernels.use_baseline_half_loops(True)
    yield
    _kernels.use_baseline_half_loops(False)


# ---- Conversions: every float16 value, and roundings against NumPy / ml_dtypes -------------

def _float32_pass(x32, mean, scale, shift):
    """The float32 loops' arithmetic (bn_loops.h, bn_f32_norm_coefs) in NumPy: with a nonzero
    scale, y = ((x - z_h) - z_l) * scale + 0 around the zero crossing z = mean - shift / scale
    (float64, split into two float32s); with scale 0, (x - mean) * 0 + shift."""
    if scale == 0:
        z, b = mean, np.float32(shift)
    else:
        z, b = mean - shift / scale, np.float32(0.0)
    z_h = np.float32(z)
    z_l = np.float32(z - np.float64(z_h))
    with np.errstate(over="ignore", invalid="ignore"):
        return ((x32 - z_h) - z_l) * np.float32(scale) + b


@pytest.mark.parametrize("baseline", _both_loops(), ids=lambda b: "baseline" if b else "cpu")
@pytest.mark.parametrize("shape", [(1 << 16,), (1 << 12, 16)], ids=["runs", "tiles"])
@pytest.mark.parametrize("mean, scale, shift", [(0.0, 1.0, 0.0), (0.5, 3.0, 0.0),
                                                (-1.25, 0.75, 0.375), (2.0 ** -20, 4096.0, 1.5),
                                                (0.3, 0.0, -0.7)])
def test_every_float16_value_is_widened_and_rounded_like_numpy(shape, mean, scale, shift,
                                                                baseline):
    """y on all 65,536 float16 values: the kernel's float32 arithmetic is NumPy's float32
    arithmetic on the widened values (the same operations, _float32_pass), and the rounding
    to float16 is NumPy's (ties to even, overflow to inf, subnormals): the same bits, NaN
    aside (NaN in, NaN out)."""
    x = _all_float16().reshape(shape)
    C = 1 if len(shape) == 1 else shape[1]
    try:
        _kernels.use_baseline_half_loops(baseline)
        y = bnfast.batch_norm_inference(x, np.full(C, mean), np.ones(C), np.full(C, scale),
                                        np.full(C, shift), axis=-1 if C > 1 else 0, eps=0.0)
    finally:
        _kernels.use_baseline_half_loops(False)
    with np.errstate(over="ignore", invalid="ignore"):
        want = _float32_pass(x.astype(np.float32), mean, scale, shift).astype(np.float16)
    nan = np.isnan(want)
    assert np.array_equal(np.isnan(y), nan)
    assert_bits_equal(np.where(nan, 0, y).astype(np.float16),
                      np.where(nan, 0, want).astype(np.float16), "y")


def _bfloat16_inference(x, C, baseline):
    try:
        _kernels.use_baseline_half_loops(baseline)
        return bnfast.batch_norm_inference(x, np.full(C, 0.75), np.ones(C), np.full(C, 1.5),
                                           np.full(C, -0.25), axis=-1 if C > 1 else 0, eps=0.0)
    finally:
        _kernels.use_baseline_half_loops(False)


# One channel's run (sixteen values a vector pair), rows of 8 channels (eight a vector), and
# rows of 24 and 40 (sixteen, then eight and a scalar tail).
BF16_SHAPES = [pytest.param((1 << 16,), id="run"), pytest.param((1 << 13, 8), id="rows-8"),
               pytest.param((2731, 24), id="rows-24"), pytest.param((1638, 40), id="rows-40")]


@pytest.mark.skipif(ml_dtypes is None, reason="needs ml_dtypes")
@pytest.mark.parametrize("shape", BF16_SHAPES)
@pytest.mark.parametrize("baseline", _both_loops(), ids=lambda b: "baseline" if b else "cpu")
def test_bfloat16_is_widened_and_rounded_like_ml_dtypes(rng, baseline, shape):
    """bfloat16 over its whole exponent range, through the same float32 arithmetic as the
    kernel's (_float32_pass), rounded by ml_dtypes (to nearest, ties to even); a NaN comes out
    as the quiet NaN of its sign, 0x7fc0."""
    bits = rng.integers(0, 1 << 16, int(np.prod(shape))).astype(np.uint16)
    x = bits.view(ml_dtypes.bfloat16).reshape(shape)
    C = 1 if len(shape) == 1 else shape[1]
    y = _bfloat16_inference(x, C, baseline)
    assert y.dtype == x.dtype
    with np.errstate(over="ignore", invalid="ignore"):
        want = _float32_pass(x.astype(np.float32), 0.75, 1.5, -0.25).astype(ml_dtypes.bfloat16)
    y32, w32 = y.astype(np.float32), want.astype(np.float32)
    assert np.array_equal(np.isnan(y32), np.isnan(w32))
    ok = ~np.isnan(w32)
    assert_bits_equal(y32[ok], w32[ok], "y")
    nan_bits = y.view(np.uint16)[~ok]
    assert nan_bits.size > 0 and np.all(nan_bits & 0x7FFF == 0x7FC0)


@pytest.mark.skipif(ml_dtypes is None or len(_both_loops()) < 2,
                    reason="needs ml_dtypes and both loops")
@pytest.mark.parametrize("shape", BF16_SHAPES)
def test_bfloat16_loops_give_the_same_bits_nan_included(rng, shape):
    """The x86-64-v3 loops (sixteen values a step, the NaN case only where there is one) and
    the baseline ones agree on every bit, the sign of each NaN included."""
    bits = rng.integers(0, 1 << 16, int(np.prod(shape))).astype(np.uint16)
    x = bits.view(ml_dtypes.bfloat16).reshape(shape)
    C = 1 if len(shape) == 1 else shape[1]
    assert_bits_equal(_bfloat16_inference(x, C, False).view(np.uint16),
                      _bfloat16_inference(x, C, True).view(np.uint16), "y")


# ---- Accuracy against the float64 reference of the same half values ---------------------

@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_training_forward_and_backward_match_the_reference(rng, dtype, shape, axis):
    dtype = _dtype(dtype)
    x = make_float(rng, shape, axis).astype(dtype)
    dy = make_float(rng, shape, axis, offset=(0.0, 0.5)).astype(dtype)
    C = 1 if len(shape) == 1 else shape[axis]
    gamma, beta = (v.astype(np.float32) for v in make_channel_params(rng, C))
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    got = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, running_mean=rm,
                                    running_var=rv)
    x64 = x.astype(np.float64)
    want = ref.batch_norm_forward(x64, gamma, beta, axis=axis)
    assert got[0].dtype == dtype and got[1].dtype == np.float64
    assert rm.dtype == np.float32  # running statistics stay float32, updated in place
    assert_forward_close(got, want, x64, axis, gamma, beta, dtype=dtype)
    mean, invstd = got[1], got[2]
    bwd = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    assert bwd[0].dtype == dtype
    want_b = ref.batch_norm_backward(dy.astype(np.float64), x64, mean, invstd, gamma, axis=axis)
    assert_backward_close(bwd, want_b, dy.astype(np.float64), x64, mean, invstd, gamma, axis,
                          dtype=dtype)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("shape, axis", LAYOUTS)
def test_inference_is_within_one_rounding_of_the_reference(rng, dtype, shape, axis):
    """Given statistics, y is the float32 pass (within 4 float32 roundings of |y| plus
    2^-51 (|mean scale| + |shift|) around the zero crossing, bn_elementwise_impl.h;
    float32_forward_bound) rounded once to the half type: within half an ulp of the half at
    y's magnitude plus that, under one ulp also where gamma x_hat and beta cancel."""
    dtype = _dtype(dtype)
    x = make_float(rng, shape, axis).astype(dtype)
    C = 1 if len(shape) == 1 else shape[axis]
    gamma, beta = make_channel_params(rng, C)
    rm, rv = rng.uniform(-3, 3, C), rng.uniform(0.5, 4, C)
    y = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis)
    x64 = x.astype(np.float64)
    want = ref.batch_norm_inference(x64, rm, rv, gamma, beta, axis=axis)
    assert_inference_close(y, want, x64, axis, rm, rv, gamma, beta, dtype=dtype)
    u = unit_roundoff(dtype)
    err = np.abs(y.astype(np.float64) - want)
    # half an ulp of the half (u |y|, or half the subnormal spacing), plus the float32 pass
    sub = float(2.0 ** -25 if dtype == np.float16 else 2.0 ** -134)
    f32 = float32_forward_bound(want, rm, gamma / np.sqrt(rv + 1e-5), beta, axis)
    bound = u * np.abs(want) * (1 + 2 * u) + f32 * (1 + u)
    assert np.all(err <= bound + sub), float(np.max(err - bound))
    # the half type's spacing at want: 2^(exponent - mantissa bits), subnormals' at least
    bits = 10 if dtype == np.float16 else 7
    with np.errstate(divide="ignore"):
        spacing = np.exp2(np.floor(np.log2(np.abs(want))) - bits)
    ulps = err / np.maximum(spacing, 2 * sub)
    assert ulps.max() <= 1.0, ulps.max()


# ---- Fused epilogues, variants and bits ------------------------------------------------------

@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape, axis", LAYOUTS[:4] + [
    # rows of 600 bytes: the tile sums walk them one row at a time (tile_by4)
    pytest.param((40, 300), 1, id="NC-wide-rows")])
def test_fused_relu_residual_is_the_unfused_half_sequence(rng, dtype, training, shape, axis):
    """relu(bn(x) + r) in one pass gives the bits of y = bn(x) in the half type, then y + r
    in the half type's arithmetic (NumPy / ml_dtypes: float32 sum, rounded), then the ReLU;
    and the backward's masked dy and residual gradient are those of that sequence."""
    dtype = _dtype(dtype)
    x = make_float(rng, shape, axis).astype(dtype)
    r = make_float(rng, shape, axis, offset=(0.0, 1.0)).astype(dtype)
    dy = make_float(rng, shape, axis, offset=(0.0, 0.5)).astype(dtype)
    C = 1 if len(shape) == 1 else shape[axis]
    gamma, beta = make_channel_params(rng, C)
    rm, rv = rng.uniform(-1, 1, C), rng.uniform(0.5, 2, C)
    if training:
        plain, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis)
        fused = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, residual=r,
                                          activation="relu")[0]
    else:
        plain = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis)
        fused = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis, residual=r,
                                            activation="relu")
    summed = (plain + r).astype(dtype)
    want = np.where(summed.astype(np.float32) > 0, summed, np.zeros((), dtype))
    assert_bits_equal(fused, want, "relu(bn(x) + r)")
    if training:
        dx, _, _, dres = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis,
                                                    activation="relu", y=fused,
                                                    return_dresidual=True)
        masked = np.where(fused.astype(np.float32) > 0, dy, np.zeros((), dtype))
        assert_bits_equal(dres, masked, "the residual's gradient")
        assert_bits_equal(dx, bnfast.batch_norm_backward(masked, x, mean, invstd, gamma,
                                                         axis=axis)[0], "dx")


@pytest.mark.parametrize("dtype", HALVES)
def test_renorm_and_ghost_take_half_input(rng, dtype):
    dtype = _dtype(dtype)
    shape, C = (8, 6, 5, 5), 6
    x = make_float(rng, shape, 1).astype(dtype)
    x64 = x.astype(np.float64)
    gamma, beta = make_channel_params(rng, C)
    y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, virtual_batch_size=4)
    assert y.dtype == dtype and mean.shape == (2, C)
    for i in range(2):  # each virtual batch is its own batch norm, in the half type
        part = bnfast.batch_norm_forward(x[4 * i:4 * i + 4], gamma, beta)
        assert_bits_equal(y[4 * i:4 * i + 4], part[0], f"virtual batch {i}")
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    yr, mr, ir, r, d = bnfast.batch_renorm_forward(x, rm, rv, gamma, beta, r_max=1.0,
                                                   d_max=0.0)
    assert yr.dtype == dtype
    want = ref.batch_norm_forward(x64, gamma, beta)  # r_max=1, d_max=0: plain batch norm
    assert_forward_close((yr, mr, ir), want, x64, 1, gamma, beta, dtype=dtype)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("shape, axis", [((16, 8, 64, 64), 1), ((8, 32, 32, 64), -1),
                                         ((65536, 3), 1), ((4, 2, 256, 256), 1)],
                         ids=["NCHW", "NHWC", "NC-few", "NCHW-tiny-C"])
def test_bits_do_not_depend_on_threads_or_loops(rng, dtype, shape, axis):
    """The same bits on 1, 2 or 3 threads, and from the x86-64-v3 and baseline loops."""
    dtype = _dtype(dtype)
    x = make_float(rng, shape, axis).astype(dtype)
    dy = make_float(rng, shape, axis).astype(dtype)
    C = shape[axis]
    gamma, beta = make_channel_params(rng, C)

    def run(n_threads):
        y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis,
                                                    n_threads=n_threads)
        dx = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis,
                                        n_threads=n_threads)
        inf = bnfast.batch_norm_inference(x, mean, invstd, gamma, beta, axis=axis,
                                          n_threads=n_threads)
        return (y, mean, invstd, inf) + tuple(dx)

    base = run(1)
    results = [run(2), run(3)]
    if len(_both_loops()) == 2:
        try:
            _kernels.use_baseline_half_loops(True)
            results.append(run(2))
        finally:
            _kernels.use_baseline_half_loops(False)
    for other in results:
        for a, b in zip(base, other):
            assert_bits_equal(a, b)


# ---- Kinds of arrays ---------------------------------------------------------------------

def test_half_arrays_take_the_kernels_fast_path(rng):
    """Plain float16 arrays reach the kernels as they are (no conversion on the way)."""
    x = rng.standard_normal((64, 8, 6, 6)).astype(np.float16)
    got = _kernels.forward_train(x, None, None, 1, 1e-5, None, None, 0.1, None, None)
    assert got is not None and got[0].dtype == np.float16


@pytest.mark.skipif(ml_dtypes is None, reason="needs ml_dtypes")
def test_bfloat16_bits_dtype_is_bfloat16(rng):
    """bnfast.torch's view of bfloat16 tensors (BFLOAT16_BITS) computes what ml_dtypes'
    arrays do, bit for bit, and returns that dtype."""
    x = rng.standard_normal((32, 7, 5)).astype(ml_dtypes.bfloat16)
    y = bnfast.batch_norm_forward(x)[0]
    raw = x.view(np.uint16).view(BFLOAT16_BITS)
    yr, mean, invstd = bnfast.batch_norm_forward(raw)
    assert yr.dtype == BFLOAT16_BITS
    assert_bits_equal(yr.view(np.uint16), y.view(np.uint16), "y")
    dy = raw.copy()
    dx = bnfast.batch_norm_backward(dy, raw, mean, invstd)[0]
    assert dx.dtype == BFLOAT16_BITS


@pytest.mark.skipif(ml_dtypes is None, reason="needs ml_dtypes")
@pytest.mark.parametrize("order", ["bnfast-first", "ml_dtypes-first"])
def test_bfloat16_without_bnfast_importing_ml_dtypes(order):
    imports = ("import bnfast, ml_dtypes" if order == "bnfast-first"
               else "import ml_dtypes, bnfast")
    code = (f"import sys, numpy as np; {imports}\n"
            "x = np.linspace(-3, 5, 40).reshape(8, 5).astype(ml_dtypes.bfloat16)\n"
            "y = bnfast.batch_norm_forward(x)[0]\n"
            "print(y.dtype, float(np.abs(y.astype(np.float64).mean(axis=0)).max()) < 0.05)")
    done = run_python(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bfloat16", "True"]
    done = run_python("import sys, bnfast; print('ml_dtypes' in sys.modules)")
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize("dtype", HALVES)
def test_moments_of_half_input_are_float64(rng, dtype):
    dtype = _dtype(dtype)
    x = make_float(rng, (200, 9), 1).astype(dtype)
    mean, var = bnfast.moments(x, axis=1)
    assert mean.dtype == var.dtype == np.float64
    x64 = x.astype(np.float64)
    rmean, rvar = ref.moments(x64, axis=1)
    assert_moments_close(mean, var, rmean, rvar, x64, 1)
