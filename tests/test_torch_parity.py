"""Parity with PyTorch's batch norm (runs whenever torch is importable)."""

import numpy as np
import pytest

import bnfast
from _helpers import backward_scales, make_channel_params, make_float

torch = pytest.importorskip("torch")
F = torch.nn.functional

# rtol of outputs vs PyTorch: PyTorch is not the oracle, so allow a few of its own ulps.
RTOL = {"float64": 1e-10, "float32": 1e-5}

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


def _close(got, expected, dtype, what, scale=None):
    rtol = RTOL[dtype]
    expected = np.asarray(expected, dtype=np.float64)
    scale = np.abs(expected).max() if scale is None else scale
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), expected, rtol=rtol,
                               atol=rtol * scale, err_msg=what)


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
    _close(y, _from_torch(t_y, layout, shape), dtype, "y")
    _close(mean, t_mean.numpy(), dtype, "mean", scale=np.abs(x).max())
    _close(invstd, t_invstd.numpy(), dtype, "invstd")
    _close(rm, t_rm.numpy(), dtype, "running_mean", scale=np.abs(x).max())
    _close(rv, t_rv.numpy(), dtype, "running_var")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("shape, axis, layout", LAYOUTS)
def test_running_stats_after_several_steps(rng, shape, axis, layout, dtype):
    channels = _channels(shape, axis)
    rm, rv = np.zeros(channels, dtype=dtype), np.ones(channels, dtype=dtype)
    t_rm, t_rv = torch.zeros(channels, dtype=getattr(torch, dtype)), \
        torch.ones(channels, dtype=getattr(torch, dtype))
    biggest = 0.0
    for step in range(6):
        x = make_float(rng, shape, axis).astype(dtype)
        biggest = max(biggest, float(np.abs(x).max()))
        F.batch_norm(_to_torch(x, layout), t_rm, t_rv, training=True, momentum=0.1, eps=1e-5)
        bnfast.batch_norm_forward(x, axis=axis, running_mean=rm, running_var=rv, momentum=0.1)
        # A running mean can pass near 0: its error scale is the data's magnitude.
        _close(rm, t_rm.numpy(), dtype, f"running_mean step {step}", scale=biggest)
        _close(rv, t_rv.numpy(), dtype, f"running_var step {step}")


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
    _close(y, _from_torch(t_y, layout, shape), dtype, "inference y")


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
    dx_scale, dgamma_scale, dbeta_scale = backward_scales(dy, x, mean, invstd, g, axis)
    _close(dx, _from_torch(xt.grad, layout, shape), dtype, "dx", scale=dx_scale)
    if with_gamma:
        _close(dgamma, wt.grad.numpy(), dtype, "dgamma", scale=dgamma_scale)
        _close(dbeta, bt.grad.numpy(), dtype, "dbeta", scale=dbeta_scale)


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
    dx_scale, dgamma_scale, dbeta_scale = backward_scales(dy, x, mean, invstd, gamma, axis)
    _close(dx, _from_torch(t_dx, layout, shape), dtype, "dx", scale=dx_scale)
    _close(dgamma, t_dgamma.numpy(), dtype, "dgamma", scale=dgamma_scale)
    _close(dbeta, t_dbeta.numpy(), dtype, "dbeta", scale=dbeta_scale)


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
