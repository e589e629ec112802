"""Parity with PyTorch's batch norm (runs whenever torch is importable)."""

import numpy as np
import pytest

import bnfast
from _helpers import (
    backward_scales, channels_last_2d, elementwise_scale, make_channel_params, make_float,
    stat_scales, torch_rtol, unit_roundoff, values_per_channel)

torch = pytest.importorskip("torch")
F = torch.nn.functional

# Tolerances: torch_rtol (tests/_helpers.py), PyTorch's bound at its worst plus bnfast's.

# (numpy shape, numpy axis, permutation numpy -> torch NC... layout, memory format)
LAYOUTS = [
    pytest.param((32, 5), 1, None, id="NC"),
    pytest.param((6, 4, 19), 1, None, id="NCL"),
    pytest.param((4, 3, 5, 7), 1, None, id="NCHW"),
    pytest.param((2, 3, 3, 4, 5), 1, None, id="NCDHW"),
    pytest.param((4, 5, 7, 3), -1, "channels_last", id="NHWC-channels_last"),
    pytest.param((57,), 0, "1d", id="1d"),
]


def _to_torch(x, layout):
    """numpy array in bnfast's layout -> torch tensor in (N, C, ...) logical layout."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    if layout == "channels_last":
        t = t.permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last)
        assert t.is_contiguous(memory_format=torch.channels_last)
    elif layout == "1d":
        t = t.reshape(-1, 1)
    return t


def _from_torch(t, layout, shape):
    a = t.detach().numpy()
    if layout == "channels_last":
        a = a.transpose(0, 2, 3, 1)
    return a.reshape(shape)


def _close(got, expected, rtol, what, scale=0.0):
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64),
                               np.asarray(expected, dtype=np.float64), rtol=rtol,
                               atol=rtol * scale, err_msg=what)


def _invstd_rtol(rtol, x, axis, eps):
    """invstd = (var + eps)^-1/2: half of var's relative error (atol of stat_scales included)
    plus 3 roundings a side."""
    var = channels_last_2d(x, axis).var(axis=0)
    return 0.5 * rtol * float(np.max((var + stat_scales(x, axis)[1]) / (var + eps))) \
        + 6 * unit_roundoff(x.dtype)


def _backward_scales(dy, x, mean, invstd, gamma, axis):
    """backward_scales, plus what the two sides' different statistics add: an error of the
    mean is relative to max|x| and moves xhat by that times invstd."""
    dx_scale, dgamma_scale, dbeta_scale = backward_scales(dy, x, mean, invstd, gamma, axis)
    x2, dy2 = channels_last_2d(x, axis), channels_last_2d(dy, axis)
    g = np.ones_like(invstd) if gamma is None else np.abs(np.asarray(gamma, np.float64))
    shift = float(np.max(np.abs(x2).max(axis=0) * invstd))  # max |x| invstd
    xhat = float(np.abs((x2 - mean) * invstd).max())
    dx_scale += float(np.max(g * invstd)) * np.abs(dy2).max() * 2 * xhat * shift
    return dx_scale, dgamma_scale + dbeta_scale * shift, dbeta_scale


def _channels(shape, axis):
    return 1 if len(shape) == 1 else shape[axis]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape, axis, layout", LAYOUTS)
def test_forward_training_with_running_stats(rng, shape, axis, layout, dtype):
    channels = _channels(shape, axis)
    x = make_float(rng, shape, axis).astype(dtype)
    gamma, beta = (p.astype(dtype) for p in make_channel_params(rng, channels))
    rm = rng.standard_normal(channels).astype(dtype)
    rv = rng.uniform(0.5, 2.0, channels).astype(dtype)
    t_rm, t_rv = torch.from_numpy(rm.copy()), torch.from_numpy(rv.copy())
    xt = _to_torch(x, layout)
    t_y, t_mean, t_invstd = torch.ops.aten.native_batch_norm(
        xt, torch.from_numpy(gamma), torch.from_numpy(beta), t_rm, t_rv, True, 0.2, 1e-4)
    if layout == "channels_last":
        assert t_y.is_contiguous(memory_format=torch.channels_last)

    y, mean, invstd = bnfast.batch_norm_forward(x, gamma, beta, axis=axis, eps=1e-4,
                                                running_mean=rm, running_var=rv, momentum=0.2)
    assert y.dtype == np.dtype(dtype)
    n = values_per_channel(x, axis)
    rtol = torch_rtol(dtype, n)
    y_scale = elementwise_scale(x, axis, mean, invstd, gamma, beta)
    _close(y, _from_torch(t_y, layout, shape), rtol, "y", scale=y_scale)
    mean_scale, var_scale = stat_scales(x, axis)
    _close(mean, t_mean.numpy(), rtol, "mean", scale=mean_scale)
    _close(invstd, t_invstd.numpy(), _invstd_rtol(rtol, x, axis, 1e-4), "invstd")
    # the update: 4 roundings a side in dtype
    run_rtol = rtol + 8 * unit_roundoff(dtype)
    _close(rm, t_rm.numpy(), run_rtol, "running_mean", scale=mean_scale)
    _close(rv, t_rv.numpy(), run_rtol, "running_var", scale=2 * var_scale)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape, axis, layout", LAYOUTS)
def test_running_stats_after_several_steps(rng, shape, axis, layout, dtype):
    channels = _channels(shape, axis)
    rm, rv = np.zeros(channels, dtype=dtype), np.ones(channels, dtype=dtype)
    t_rm, t_rv = torch.zeros(channels, dtype=getattr(torch, dtype)), \
        torch.ones(channels, dtype=getattr(torch, dtype))
    mean_scale = var_scale = 0.0
    for step in range(6):
        x = make_float(rng, shape, axis).astype(dtype)
        m_scale, v_scale = stat_scales(x, axis)
        mean_scale, var_scale = max(mean_scale, m_scale), max(var_scale, 2 * v_scale)
        F.batch_norm(_to_torch(x, layout), t_rm, t_rv, training=True, momentum=0.1, eps=1e-5)
        bnfast.batch_norm_forward(x, axis=axis, running_mean=rm, running_var=rv, momentum=0.1)
        # Each step adds 0.1 * (a batch statistic's error) and 4 roundings a side; older errors
        # shrink by 0.9 a step, so the batch statistics' share stays below one step's bound.
        # A running mean can pass near 0: its error scale is the data's magnitude.
        rtol = torch_rtol(dtype, values_per_channel(x, axis)) \
            + (step + 1) * 8 * unit_roundoff(dtype)
        _close(rm, t_rm.numpy(), rtol, f"running_mean step {step}", scale=mean_scale)
        _close(rv, t_rv.numpy(), rtol, f"running_var step {step}", scale=var_scale)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape, axis, layout", LAYOUTS)
def test_inference(rng, shape, axis, layout, dtype):
    channels = _channels(shape, axis)
    x = make_float(rng, shape, axis).astype(dtype)
    gamma, beta = (p.astype(dtype) for p in make_channel_params(rng, channels))
    rm = rng.uniform(-3, 3, channels).astype(dtype)
    rv = rng.uniform(0.5, 4.0, channels).astype(dtype)
    t_y = F.batch_norm(_to_torch(x, layout), torch.from_numpy(rm), torch.from_numpy(rv),
                       torch.from_numpy(gamma), torch.from_numpy(beta), training=False, eps=1e-3)
    y = bnfast.batch_norm_inference(x, rm, rv, gamma, beta, axis=axis, eps=1e-3)
    assert y.dtype == np.dtype(dtype)
    scale = elementwise_scale(x, axis, rm, 1 / np.sqrt(rv.astype(np.float64) + 1e-3), gamma,
                              beta)
    _close(y, _from_torch(t_y, layout, shape), torch_rtol(dtype), "inference y", scale=scale)


@pytest.mark.parametrize("with_gamma", [True, False])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape, axis, layout", LAYOUTS)
def test_backward_autograd(rng, shape, axis, layout, dtype, with_gamma):
    channels = _channels(shape, axis)
    x = make_float(rng, shape, axis).astype(dtype)
    dy = (make_float(rng, shape, axis) * 0.5).astype(dtype)
    gamma, beta = (p.astype(dtype) for p in make_channel_params(rng, channels))
    xt = _to_torch(x, layout).requires_grad_(True)
    wt = torch.from_numpy(gamma).requires_grad_(True) if with_gamma else None
    bt = torch.from_numpy(beta).requires_grad_(True) if with_gamma else None
    yt = F.batch_norm(xt, None, None, wt, bt, training=True, eps=1e-5)
    yt.backward(_to_torch(dy, layout))

    g = gamma if with_gamma else None
    _, mean, invstd = bnfast.batch_norm_forward(x, g, beta if with_gamma else None, axis=axis)
    dx, dgamma, dbeta = bnfast.batch_norm_backward(dy, x, mean, invstd, g, axis=axis)
    assert dx.dtype == np.dtype(dtype)
    dx_scale, dgamma_scale, dbeta_scale = _backward_scales(dy, x, mean, invstd, g, axis)
    rtol = torch_rtol(dtype, values_per_channel(x, axis))
    _close(dx, _from_torch(xt.grad, layout, shape), rtol, "dx", scale=dx_scale)
    if with_gamma:
        _close(dgamma, wt.grad.numpy(), rtol, "dgamma", scale=dgamma_scale)
        _close(dbeta, bt.grad.numpy(), rtol, "dbeta", scale=dbeta_scale)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape, axis, layout", LAYOUTS)
def test_backward_native_batch_norm_backward(rng, shape, axis, layout, dtype):
    channels = _channels(shape, axis)
    x = make_float(rng, shape, axis).astype(dtype)
    dy = make_float(rng, shape, axis).astype(dtype)
    gamma = make_channel_params(rng, channels)[0].astype(dtype)
    xt, dyt = _to_torch(x, layout), _to_torch(dy, layout)
    _, t_mean, t_invstd = torch.ops.aten.native_batch_norm(
        xt, torch.from_numpy(gamma), None, None, None, True, 0.1, 1e-5)
    t_dx, t_dgamma, t_dbeta = torch.ops.aten.native_batch_norm_backward(
        dyt, xt, torch.from_numpy(gamma), None, None, t_mean, t_invstd, True, 1e-5,
        [True, True, True])
    _, mean, invstd = bnfast.batch_norm_forward(x, gamma, axis=axis)
    dx, dgamma, dbeta = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)
    dx_scale, dgamma_scale, dbeta_scale = _backward_scales(dy, x, mean, invstd, gamma, axis)
    rtol = torch_rtol(dtype, values_per_channel(x, axis))
    _close(dx, _from_torch(t_dx, layout, shape), rtol, "dx", scale=dx_scale)
    _close(dgamma, t_dgamma.numpy(), rtol, "dgamma", scale=dgamma_scale)
    _close(dbeta, t_dbeta.numpy(), rtol, "dbeta", scale=dbeta_scale)


@pytest.mark.parametrize("shape", [(1, 3), (1, 3, 1, 1)])
def test_single_value_per_channel_message_matches_torch(shape):
    x = np.arange(1.0, 1.0 + np.prod(shape)).reshape(shape)
    with pytest.raises(ValueError) as torch_error:
        F.batch_norm(torch.from_numpy(x), None, None, training=True)
    with pytest.raises(ValueError) as ours:
        bnfast.batch_norm_forward(x)
    prefix = "Expected more than 1 value per channel when training"
    assert str(torch_error.value).startswith(prefix)
    assert str(ours.value).startswith(prefix)
