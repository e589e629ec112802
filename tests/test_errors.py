"""Every row of the error table of docs/design.md §5: the exception type and an
argument-naming message."""

import re

import numpy as np
import pytest

import bnfast
from _helpers import assert_inference_close, assert_moments_close, make_float

AxisError = np.exceptions.AxisError
M1_MESSAGE = "^Expected more than 1 value per channel when training"


@pytest.fixture
def x(rng):
    return make_float(rng, (6, 3, 2), 1)


def _call(name, x, **kwargs):
    """Call one public function with valid defaults for its other arguments."""
    shape = np.shape(x)
    axis = kwargs.get("axis", 1)
    if len(shape) <= 1:
        channels = 1
    elif axis is not None and -len(shape) <= axis < len(shape):
        channels = shape[axis]
    else:  # the call must fail on axis; give per-channel arguments a plausible length
        channels = shape[1]
    ones, zeros = np.ones(channels), np.zeros(channels)
    if name == "moments":
        return bnfast.moments(x, **kwargs)
    if name == "forward":
        return bnfast.batch_norm_forward(x, **kwargs)
    if name == "inference":
        return bnfast.batch_norm_inference(x, zeros, ones, **kwargs)
    if name == "backward":
        dy = kwargs.pop("dy", x)
        return bnfast.batch_norm_backward(dy, x, zeros, ones, **kwargs)
    raise AssertionError(name)


ALL = ["moments", "forward", "inference", "backward"]
WITH_OUT = ["forward", "inference", "backward"]


# ---------------------------------------------------------------- m == 1 and m == 0

@pytest.mark.parametrize("shape, axis", [((1, 3), 1), ((1, 3, 1, 1), 1), ((1,), 0),
                                         ((1, 1, 1, 4), -1), ((3, 1), 0)])
def test_training_with_one_value_per_channel(shape, axis):
    x = np.arange(1, 1 + int(np.prod(shape)), dtype=np.float64).reshape(shape)
    with pytest.raises(ValueError, match=M1_MESSAGE):
        bnfast.batch_norm_forward(x, axis=axis)


def test_training_with_one_value_per_channel_list():
    with pytest.raises(ValueError, match=M1_MESSAGE):
        bnfast.batch_norm_forward([5.0])


@pytest.mark.parametrize("shape, axis", [((0, 3), 1), ((2, 3, 0, 4), 1), ((0,), 0), ((0, 4), -1)])
def test_training_with_empty_batch_raises(shape, axis):
    with pytest.raises(ValueError):
        bnfast.batch_norm_forward(np.empty(shape), axis=axis)


@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "int64"])
@pytest.mark.parametrize("shape, axis", [((0, 3), 1), ((2, 3, 0, 4), 1), ((0,), 0), ((0, 4), -1)])
def test_inference_with_empty_batch_gives_empty_output(shape, axis, dtype):
    channels = 1 if len(shape) == 1 else shape[axis]
    y = bnfast.batch_norm_inference(np.empty(shape, dtype=dtype), np.zeros(channels),
                                    np.ones(channels), axis=axis)
    assert y.shape == shape
    assert y.dtype == (np.dtype(dtype) if dtype != "int64" else np.float64)


def test_moments_of_empty_batch_warn_and_give_nan():
    with pytest.warns(RuntimeWarning):
        mean, var = bnfast.moments(np.empty((0, 3)))
    assert mean.dtype == var.dtype == np.float64
    assert mean.shape == var.shape == (3,)
    assert np.isnan(mean).all() and np.isnan(var).all()


@pytest.mark.parametrize("ddof", [1, 2])
def test_moments_ddof_at_least_m_warn_and_give_non_finite(rng, ddof):
    x = make_float(rng, (ddof, 3), 1)
    with pytest.warns(RuntimeWarning):
        mean, var = bnfast.moments(x, ddof=ddof)
    assert_moments_close(mean, None, x.mean(axis=0), None, x, 1)
    assert not np.isfinite(var).any()


def test_moments_with_one_value_per_channel_is_fine():
    mean, var = bnfast.moments(np.array([[1.5, -2.0, 3.25]]))
    np.testing.assert_array_equal(mean, [1.5, -2.0, 3.25])
    np.testing.assert_array_equal(var, [0.0, 0.0, 0.0])


# ---------------------------------------------------------------- per-channel arguments

def _assert_names(excinfo, name, channels=3):
    message = str(excinfo.value)
    assert re.search(rf"(?<![A-Za-z_]){name}(?![A-Za-z_])", message), message
    assert f"({channels},)" in message, f"expected shape ({channels},) not named: {message}"


BAD_LENGTHS = [np.ones(4), np.ones(2), np.ones((1, 3)), np.ones((3, 1)), np.float64(1.0),
               np.ones(0)]
BAD_LENGTH_IDS = ["len4", "len2", "(1,3)", "(3,1)", "scalar", "len0"]


@pytest.mark.parametrize("bad", BAD_LENGTHS, ids=BAD_LENGTH_IDS)
@pytest.mark.parametrize("name", ["gamma", "beta", "running_mean", "running_var"])
def test_forward_per_channel_wrong_shape(x, name, bad):
    kwargs = {name: np.array(bad, copy=True)}
    partner = {"running_mean": "running_var", "running_var": "running_mean"}.get(name)
    if partner:  # the running statistics come as a pair (tests/test_first_use.py)
        kwargs[partner] = np.ones(3)
    with pytest.raises(ValueError, match=name) as excinfo:
        bnfast.batch_norm_forward(x, **kwargs)
    _assert_names(excinfo, name)


@pytest.mark.parametrize("bad", BAD_LENGTHS, ids=BAD_LENGTH_IDS)
@pytest.mark.parametrize("name", ["gamma", "beta", "running_mean", "running_var"])
def test_inference_per_channel_wrong_shape(x, name, bad):
    kwargs = dict(running_mean=np.zeros(3), running_var=np.ones(3))
    kwargs[name] = np.array(bad, copy=True)
    with pytest.raises(ValueError, match=name) as excinfo:
        bnfast.batch_norm_inference(x, **kwargs)
    _assert_names(excinfo, name)


@pytest.mark.parametrize("bad", BAD_LENGTHS, ids=BAD_LENGTH_IDS)
@pytest.mark.parametrize("name", ["mean", "invstd", "gamma"])
def test_backward_per_channel_wrong_shape(x, name, bad):
    kwargs = dict(mean=np.zeros(3), invstd=np.ones(3), gamma=np.ones(3))
    kwargs[name] = np.array(bad, copy=True)
    with pytest.raises(ValueError, match=name) as excinfo:
        bnfast.batch_norm_backward(x, x, **kwargs)
    _assert_names(excinfo, name)


BAD_KINDS = [np.ones(3, dtype=np.complex128), np.array(["a", "b", "c"]),
             np.array([1.0, 2.0, 3.0], dtype=object), np.array([1, 2, 3], dtype="M8[s]")]
BAD_KIND_IDS = ["complex", "str", "object", "datetime"]


@pytest.mark.parametrize("bad", BAD_KINDS, ids=BAD_KIND_IDS)
@pytest.mark.parametrize("name", ["gamma", "beta", "running_mean", "running_var"])
def test_forward_per_channel_wrong_dtype_kind(x, name, bad):
    with pytest.raises(ValueError, match=name):
        bnfast.batch_norm_forward(x, **{name: bad.copy()})


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool"])
@pytest.mark.parametrize("name", ["running_mean", "running_var"])
def test_forward_running_statistics_must_be_float(x, name, dtype):
    with pytest.raises(ValueError, match=name):
        bnfast.batch_norm_forward(x, **{name: np.ones(3, dtype=dtype)})


@pytest.mark.parametrize("name", ["running_mean", "running_var"])
def test_forward_running_statistics_must_be_writeable(x, name):
    buffer = np.ones(3)
    buffer.flags.writeable = False
    with pytest.raises(ValueError, match=name):
        bnfast.batch_norm_forward(x, **{name: buffer})


def test_inference_accepts_read_only_running_statistics(x):
    rm, rv = np.full(3, 0.5), np.full(3, 2.0)
    rm.flags.writeable = False
    rv.flags.writeable = False
    y = bnfast.batch_norm_inference(x, rm, rv)
    assert_inference_close(y, (x - 0.5) / np.sqrt(2.0 + 1e-5), x, 1, rm, rv)


@pytest.mark.parametrize("bad", BAD_KINDS, ids=BAD_KIND_IDS)
@pytest.mark.parametrize("name", ["gamma", "beta", "running_mean", "running_var"])
def test_inference_per_channel_wrong_dtype_kind(x, name, bad):
    kwargs = dict(running_mean=np.zeros(3), running_var=np.ones(3))
    kwargs[name] = bad.copy()
    with pytest.raises(ValueError, match=name):
        bnfast.batch_norm_inference(x, **kwargs)


@pytest.mark.parametrize("bad", BAD_KINDS, ids=BAD_KIND_IDS)
@pytest.mark.parametrize("name", ["mean", "invstd", "gamma"])
def test_backward_per_channel_wrong_dtype_kind(x, name, bad):
    kwargs = dict(mean=np.zeros(3), invstd=np.ones(3), gamma=np.ones(3))
    kwargs[name] = bad.copy()
    with pytest.raises(ValueError, match=rf"(?<![A-Za-z_]){name}"):
        bnfast.batch_norm_backward(x, x, **kwargs)


def test_backward_dy_shape_must_match_x(x):
    with pytest.raises(ValueError, match="dy"):
        bnfast.batch_norm_backward(x[:-1], x, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match="dy"):
        bnfast.batch_norm_backward(x.reshape(6, 3, 2, 1), x, np.zeros(3), np.ones(3))


# ---------------------------------------------------------------- axis and 0-d

@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("axis", [3, -4, 10])
def test_axis_out_of_range(x, name, axis):
    with pytest.raises(AxisError):
        _call(name, x, axis=axis)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("axis", [2, -2, 5])
def test_axis_out_of_range_1d(rng, name, axis):
    with pytest.raises(AxisError):
        _call(name, make_float(rng, (8,), 0), axis=axis)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize("axis", [None, 0, -1, 1])
def test_axis_accepted_for_1d(rng, name, axis):
    x1 = make_float(rng, (8,), 0)
    result = _call(name, x1, axis=axis)
    first = result[0] if isinstance(result, tuple) else result
    assert first.shape == ((1,) if name == "moments" else (8,))


@pytest.mark.parametrize("name", ALL)
def test_zero_dimensional_input(name):
    with pytest.raises(ValueError):
        _call(name, np.float64(3.0))
    with pytest.raises(ValueError):
        _call(name, 3.0)


# ---------------------------------------------------------------- dtypes of x

BAD_X = {
    "complex": lambda x: x.astype(np.complex128),
    "complex64": lambda x: x.astype(np.complex64),
    "object": lambda x: x.astype(object),
    "str": lambda x: x.astype(str),
    "bytes": lambda x: x.astype("S8"),
    "datetime": lambda x: x.astype(np.int64).astype("M8[s]"),
    "timedelta": lambda x: x.astype(np.int64).astype("m8[s]"),
}


@pytest.mark.parametrize("kind", list(BAD_X))
@pytest.mark.parametrize("name", ALL)
def test_unsupported_dtype_of_x(x, name, kind):
    with pytest.raises(TypeError):
        _call(name, BAD_X[kind](x))


@pytest.mark.parametrize("kind", list(BAD_X))
def test_unsupported_dtype_of_dy(x, kind):
    with pytest.raises(TypeError):
        bnfast.batch_norm_backward(BAD_X[kind](x), x, np.zeros(3), np.ones(3))


def test_list_of_strings_rejected():
    with pytest.raises(TypeError):
        bnfast.moments([["a", "b"], ["c", "d"]])


# ---------------------------------------------------------------- eps, momentum, n_threads

@pytest.mark.parametrize("eps", [-1e-5, -1.0, float("nan")])
@pytest.mark.parametrize("name", ["forward", "inference"])
def test_bad_eps(x, name, eps):
    with pytest.raises(ValueError, match="eps"):
        _call(name, x, eps=eps)


@pytest.mark.parametrize("name", ["forward", "inference"])
def test_eps_zero_is_allowed(x, name):
    y = _call(name, x, eps=0.0)
    y = y[0] if isinstance(y, tuple) else y
    assert np.isfinite(y).all()


@pytest.mark.parametrize("momentum", [-0.1, 1.0000001, 2.0, float("nan"), None])
def test_bad_momentum(x, momentum):
    with pytest.raises(ValueError, match="momentum"):
        bnfast.batch_norm_forward(x, running_mean=np.zeros(3), running_var=np.ones(3),
                                  momentum=momentum)


@pytest.mark.parametrize("momentum", [0.0, 1.0, 0, 1])
def test_momentum_bounds_are_allowed(x, momentum):
    rm, rv = np.zeros(3), np.ones(3)
    bnfast.batch_norm_forward(x, running_mean=rm, running_var=rv, momentum=momentum)
    if momentum == 1:  # 0 * old + 1 * mean: the batch mean exactly
        assert_moments_close(rm, None, x.mean(axis=(0, 2)), None, x, 1)
    else:  # 1 * 0 + 0 * mean is exactly 0
        np.testing.assert_array_equal(rm, 0.0)


@pytest.mark.parametrize("n_threads", [0, -1, -8, 1.5])
@pytest.mark.parametrize("name", ALL)
def test_bad_n_threads(x, name, n_threads):
    with pytest.raises(ValueError, match="n_threads"):
        _call(name, x, n_threads=n_threads)


@pytest.mark.parametrize("n_threads", [None, 1, 2, np.int64(3), 64])
@pytest.mark.parametrize("name", ALL)
def test_good_n_threads(x, name, n_threads):
    result = _call(name, x, n_threads=n_threads)
    first = result[0] if isinstance(result, tuple) else result
    assert np.isfinite(first).all()


# ---------------------------------------------------------------- out=

def _bad_outs(x, kind):
    if kind == "shape":
        return np.empty(x.shape[:-1] + (x.shape[-1] + 1,))
    if kind == "shape-transposed":
        return np.empty(x.shape[::-1])
    if kind == "shape-flat":
        return np.empty(x.size)
    if kind == "dtype-float32":
        return np.empty(x.shape, dtype=np.float32)
    if kind == "dtype-int":
        return np.empty(x.shape, dtype=np.int64)
    if kind == "dtype-swapped":
        return np.empty(x.shape, dtype=">f8")
    if kind == "readonly":
        out = np.empty(x.shape)
        out.flags.writeable = False
        return out
    raise AssertionError(kind)


OUT_KINDS = ["shape", "shape-transposed", "shape-flat", "dtype-float32", "dtype-int",
             "dtype-swapped", "readonly"]


@pytest.mark.parametrize("kind", OUT_KINDS)
@pytest.mark.parametrize("name", WITH_OUT)
def test_bad_out(x, name, kind):
    with pytest.raises(ValueError, match="out"):
        _call(name, x, out=_bad_outs(x, kind))


@pytest.mark.parametrize("name", WITH_OUT)
def test_out_dtype_must_match_working_dtype(x, name):
    x32 = x.astype(np.float32)
    with pytest.raises(ValueError, match="out"):
        _call(name, x32, out=np.empty(x.shape, dtype=np.float64))
    x16 = x.astype(np.float16)
    with pytest.raises(ValueError, match="out"):
        _call(name, x16, out=np.empty(x.shape, dtype=np.float32))
    xi = np.round(x * 10).astype(np.int64)
    with pytest.raises(ValueError, match="out"):
        _call(name, xi, out=xi)


def test_failed_out_leaves_x_untouched(x):
    x0 = x.copy()
    with pytest.raises(ValueError):
        bnfast.batch_norm_forward(x, np.ones(4), out=x)
    np.testing.assert_array_equal(x, x0)
