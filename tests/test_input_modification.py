"""No function modifies its inputs (unless passed as out=, or running stats in training)."""

import copy

import numpy as np
import pytest

import bnfast
from _helpers import make_channel_params, make_float

FORMS = ["C", "F", "strided", "byteswapped", "float32", "float16", "int", "list", "read-only"]


def _form(a, form):
    a = np.asarray(a, dtype=np.float64)
    if form == "C":
        return a.copy()
    if form == "F":
        return np.asfortranarray(a)
    if form == "strided":
        big = np.repeat(a, 2, axis=-1)
        return big[..., ::-2][..., ::-1]
    if form == "byteswapped":
        return a.astype(a.dtype.newbyteorder(">" if np.little_endian else "<"))
    if form in ("float32", "float16"):
        return a.astype(form)
    if form == "int":
        return np.round(a * 7).astype(np.int64)
    if form == "list":
        return a.tolist()
    if form == "read-only":
        a = a.copy()
        a.flags.writeable = False
        return a
    raise AssertionError(form)


def _snapshot(args):
    """Deep copies, plus each array's strides and writeable flag (a copy keeps neither)."""
    return {name: (copy.deepcopy(value), getattr(value, "strides", None),
                   getattr(getattr(value, "flags", None), "writeable", None))
            for name, value in args.items()}


def _assert_unchanged(args, before):
    for name in args:
        now, (then, strides, writeable) = args[name], before[name]
        if isinstance(now, np.ndarray):
            assert now.dtype == then.dtype and now.shape == then.shape, name
            assert now.tobytes() == then.tobytes(), f"{name} was modified"
            assert now.strides == strides, name
            assert now.flags.writeable == writeable, name
        else:
            assert now == then, f"{name} was modified"


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("shape, axis", [((12, 4), 1), ((3, 4, 5, 2), 1), ((3, 5, 2, 4), -1),
                                         ((21,), 0)], ids=["NC", "NCHW", "NHWC", "1d"])
def test_no_function_modifies_its_inputs(rng, shape, axis, form):
    channels = 1 if len(shape) == 1 else shape[axis]
    x = _form(make_float(rng, shape, axis), form)
    dy = _form(make_float(rng, shape, axis), form)
    gamma, beta = make_channel_params(rng, channels)
    gamma, beta = _form(gamma, form), _form(beta, form)
    # Running statistics must have a float kind (contract), so "int" keeps them float64.
    stats_form = "C" if form == "int" else form
    rm = _form(rng.standard_normal(channels), stats_form)
    rv = _form(rng.uniform(0.5, 2.0, channels), stats_form)

    args = dict(x=x)
    before = _snapshot(args)
    bnfast.moments(args["x"], axis=axis)
    bnfast.moments(args["x"], axis=axis, ddof=1)
    _assert_unchanged(args, before)

    args = dict(x=x, gamma=gamma, beta=beta)
    before = _snapshot(args)
    _, mean, invstd = bnfast.batch_norm_forward(args["x"], args["gamma"], args["beta"], axis=axis)
    _assert_unchanged(args, before)

    args = dict(x=x, rm=rm, rv=rv, gamma=gamma, beta=beta)
    before = _snapshot(args)
    bnfast.batch_norm_inference(args["x"], args["rm"], args["rv"], args["gamma"], args["beta"],
                                axis=axis)
    _assert_unchanged(args, before)

    mean, invstd = _form(mean, form), _form(invstd, form)
    args = dict(dy=dy, x=x, mean=mean, invstd=invstd, gamma=gamma)
    before = _snapshot(args)
    bnfast.batch_norm_backward(args["dy"], args["x"], args["mean"], args["invstd"], args["gamma"],
                               axis=axis)
    _assert_unchanged(args, before)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_training_modifies_only_the_running_statistics(rng, dtype):
    x = make_float(rng, (30, 4, 3), 1).astype(dtype)
    gamma, beta = make_channel_params(rng, 4)
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    args = dict(x=x, gamma=gamma, beta=beta)
    before = _snapshot(args)
    rm0, rv0 = rm.copy(), rv.copy()
    bnfast.batch_norm_forward(x, gamma, beta, running_mean=rm, running_var=rv)
    _assert_unchanged(args, before)
    assert not np.array_equal(rm, rm0) and not np.array_equal(rv, rv0)


def test_outputs_are_fresh_arrays(rng):
    x = make_float(rng, (10, 3), 1)
    gamma, beta = make_channel_params(rng, 3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta)
    inputs = [x, gamma, beta, rm, rv]
    for out in (y, mean, invstd, bnfast.batch_norm_inference(x, rm, rv, gamma, beta),
                *bnfast.moments(x), *bnfast.batch_norm_backward(x, x, mean, invstd, gamma)):
        for arr in inputs + [mean, invstd]:
            if out is not arr:
                assert not np.shares_memory(out, arr)
