"""bnfast.BatchNorm: the layer for NumPy training loops (PyTorch semantics)."""

import numpy as np
import pytest

import bnfast
from bnfast import reference
from _helpers import (
    backward_scales, bn_loss_error, bn_third_derivative, central_difference_tol,
    elementwise_scale, make_float,
    output_rtol, stat_rtol, stat_scales, torch_rtol, unit_roundoff, values_per_channel)

F64 = np.float64


def _close_eval(bn, x, want, what=""):
    """An eval-mode float32 layer's output vs PyTorch's: torch_rtol of the elementwise pass's
    terms (running statistics given)."""
    invstd = 1 / np.sqrt(bn.running_var.astype(F64) + bn.eps)
    scale = elementwise_scale(x, bn.axis, bn.running_mean, invstd, bn.weight, bn.bias)
    np.testing.assert_allclose(bn(x), want, rtol=0, atol=torch_rtol(np.float32) * scale,
                               err_msg=what)


def _snapshot(bn):
    return {k: np.array(getattr(bn, k), copy=True) if getattr(bn, k) is not None else None
            for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked",
                      "dgamma", "dbeta")}


def _assert_same_state(bn, snap):
    for k, v in snap.items():
        cur = getattr(bn, k)
        if v is None:
            assert cur is None, k
        else:
            np.testing.assert_array_equal(np.asarray(cur), v, err_msg=k)


# -- a float64 NumPy model of the layer (the oracle of the tests without torch) ----------------

class _RefBN:
    """Float64 twin of BatchNorm built on bnfast.reference, with PyTorch's bookkeeping."""

    def __init__(self, C, axis, eps, momentum, affine, track):
        self.axis, self.eps, self.momentum, self.affine, self.track = axis, eps, momentum, \
            affine, track
        self.weight = np.ones(C) if affine else None
        self.bias = np.zeros(C) if affine else None
        self.running_mean = np.zeros(C) if track else None
        self.running_var = np.ones(C) if track else None
        self.n = 0 if track else None
        self.training = True

    def forward(self, x):
        self.x = np.asarray(x, F64)
        if self.training or not self.track:
            factor = 0.0
            if self.training and self.track:
                self.n += 1
                factor = 1.0 / self.n if self.momentum is None else self.momentum
            y, self.mean, self.invstd, rm, rv = reference.batch_norm_forward(
                self.x, self.weight, self.bias, axis=self.axis, eps=self.eps,
                running_mean=self.running_mean, running_var=self.running_var, momentum=factor)
            if self.training and self.track:
                self.running_mean, self.running_var = rm, rv
            self.eval_mode = False
            return y
        self.mean = self.running_mean.copy()
        self.invstd = 1 / np.sqrt(self.running_var + self.eps)
        self.eval_mode = True
        return reference.batch_norm_inference(self.x, self.running_mean, self.running_var,
                                              self.weight, self.bias, axis=self.axis,
                                              eps=self.eps)

    def backward(self, dy):
        dx, dg, db = reference.batch_norm_backward(dy, self.x, self.mean, self.invstd,
                                                   self.weight, axis=self.axis)
        if self.eval_mode:
            g = np.ones_like(self.invstd) if self.weight is None else self.weight
            shape = [1] * self.x.ndim
            shape[self.axis] = -1
            dx = np.asarray(dy, F64) * (g * self.invstd).reshape(shape)
        self.dgamma, self.dbeta = dg, db
        return dx


CONFIGS = [
    pytest.param(0.1, True, True, id="momentum0.1"),
    pytest.param(None, True, True, id="cumulative"),
    pytest.param(0.3, False, True, id="no-affine"),
    pytest.param(0.1, True, False, id="no-running-stats"),
]


@pytest.mark.parametrize("momentum, affine, track", CONFIGS)
@pytest.mark.parametrize("shape, axis", [((40, 6), 1), ((5, 4, 6, 3), -1), ((3, 4, 5, 6), 1)],
                         ids=["NC", "NHWC", "NCHW"])
def test_training_loop_matches_float64_model(rng, shape, axis, momentum, affine, track):
    """A float64 layer over a multi-step loop (train, SGD step, eval, train again) equals the
    float64 NumPy model to rounding: outputs, gradients, running statistics, counters."""
    C = shape[axis]
    bn = bnfast.BatchNorm(C, axis=axis, momentum=momentum, affine=affine,
                          track_running_stats=track, dtype=F64, eps=1e-3)
    ref = _RefBN(C, axis, 1e-3, momentum, affine, track)
    lr = 0.05
    for step, training in enumerate([True] * 4 + [False] * 2 + [True] * 2):
        bn.train(training)
        ref.training = training
        x = make_float(rng, shape, axis)
        dy = rng.standard_normal(shape)
        y, y_ref = bn(x), ref.forward(x)
        # One step's bounds (tests/_helpers.py): the reference is given the layer's state
        # below after every step, so that rounding does not accumulate over the loop.
        n = values_per_channel(x, axis) if not ref.eval_mode else 0
        y_scale = elementwise_scale(x, axis, ref.mean, ref.invstd, ref.weight, ref.bias)
        np.testing.assert_allclose(y, y_ref, rtol=0, atol=output_rtol(F64, n) * y_scale,
                                   err_msg=f"y step {step}")
        dx, dx_ref = bn.backward(dy), ref.backward(dy)
        dx_scale, dgamma_scale, dbeta_scale = backward_scales(dy, x, ref.mean, ref.invstd,
                                                              ref.weight, axis)
        n_sums = values_per_channel(x, axis)
        np.testing.assert_allclose(dx, dx_ref, rtol=0, atol=output_rtol(F64, n) * dx_scale,
                                   err_msg=f"dx step {step}")
        if affine:
            np.testing.assert_allclose(bn.dgamma, ref.dgamma, rtol=stat_rtol(n_sums),
                                       atol=stat_rtol(n_sums) * dgamma_scale,
                                       err_msg=f"dgamma step {step}")
            np.testing.assert_allclose(bn.dbeta, ref.dbeta, rtol=stat_rtol(n_sums),
                                       atol=stat_rtol(n_sums) * dbeta_scale,
                                       err_msg=f"dbeta step {step}")
            bn.weight -= lr * bn.dgamma
            bn.bias -= lr * bn.dbeta
            ref.weight, ref.bias = bn.weight.copy(), bn.bias.copy()
        else:
            assert bn.dgamma is None and bn.dbeta is None and bn.weight is None
        if track:
            # the batch statistics' error, 4 roundings of the update (unbiasing included)
            rtol = stat_rtol(n_sums) + 4 * unit_roundoff()
            mean_scale, var_scale = stat_scales(x, axis)
            np.testing.assert_allclose(bn.running_mean, ref.running_mean, rtol=rtol,
                                       atol=rtol * mean_scale, err_msg=f"running_mean {step}")
            np.testing.assert_allclose(bn.running_var, ref.running_var, rtol=rtol,
                                       atol=rtol * 2 * var_scale, err_msg=f"running_var {step}")
            ref.running_mean, ref.running_var = bn.running_mean.copy(), bn.running_var.copy()
            assert bn.num_batches_tracked == ref.n
        else:
            assert bn.running_mean is None and bn.running_var is None
            assert bn.num_batches_tracked is None
    if track:
        assert bn.num_batches_tracked == 6


def test_cumulative_momentum_is_the_average_of_batch_statistics(rng):
    """momentum=None: running stats are the plain average over the batches seen
    (PyTorch's 1/num_batches_tracked rule), running_var of the unbiased batch variances."""
    bn = bnfast.BatchNorm(5, momentum=None, dtype=F64)
    means, uvars, scales = [], [], []
    for n in (7, 12, 30, 9):
        x = make_float(rng, (n, 5), 1)
        bn(x)
        means.append(x.mean(axis=0))
        uvars.append(x.var(axis=0, ddof=1))
        scales.append(stat_scales(x, 1))
    # each batch statistic within stat_rtol(n) of its scale (n <= 30; unbiasing doubles the
    # variance's at most), then 4 averaging steps of a few roundings each on the layer's side
    # and a sum of 4 on NumPy's
    rtol = stat_rtol(30) + 2 * 4 * 4 * unit_roundoff()
    mean_scale = max(m for m, _ in scales)
    var_scale = 2 * max(v for _, v in scales)
    np.testing.assert_allclose(bn.running_mean, np.mean(means, axis=0), rtol=rtol,
                               atol=rtol * mean_scale)
    np.testing.assert_allclose(bn.running_var, np.mean(uvars, axis=0), rtol=rtol,
                               atol=rtol * var_scale)
    assert bn.num_batches_tracked == 4


def test_eval_backward_is_the_affine_gradient_finite_differences(rng):
    """In eval mode y is affine in x: check dx, dgamma, dbeta against central differences of
    L = sum(y * r) (independent of the formulas in the layer)."""
    bn = bnfast.BatchNorm(3, axis=1, dtype=F64)
    for _ in range(3):
        bn(make_float(rng, (6, 3, 4), 1))
    bn.weight[:] = rng.uniform(0.5, 2, 3)
    bn.bias[:] = rng.standard_normal(3)
    bn.eval()
    x = make_float(rng, (5, 3, 4), 1)
    r = rng.standard_normal(x.shape)
    bn(x)
    dx = bn.backward(r)
    h = 1e-6
    # y is affine in x, weight and bias: no truncation error, only the rounding of the loss
    invstd = 1 / np.sqrt(bn.running_var + bn.eps)
    value_error = bn_loss_error(r, elementwise_scale(x, 1, bn.running_mean, invstd, bn.weight,
                                                     bn.bias), 0)
    tol = central_difference_tol(h, value_error)

    def loss():
        return float(np.sum(bn(x) * r))

    num_dx = np.empty_like(x)
    for idx in np.ndindex(*x.shape):
        old = x[idx]
        x[idx] = old + h
        up = loss()
        x[idx] = old - h
        num_dx[idx] = (up - loss()) / (2 * h)
        x[idx] = old
    np.testing.assert_allclose(dx, num_dx, rtol=output_rtol(F64), atol=tol, err_msg="dx")
    for name, grad in (("weight", bn.dgamma), ("bias", bn.dbeta)):
        p = getattr(bn, name)
        num = np.empty(3)
        for c in range(3):
            old = p[c]
            p[c] = old + h
            up = loss()
            p[c] = old - h
            num[c] = (up - loss()) / (2 * h)
            p[c] = old
        np.testing.assert_allclose(grad, num, rtol=output_rtol(F64, 20), atol=tol, err_msg=name)


@pytest.mark.parametrize("xdt, dydt, dxdt", [
    (np.float32, np.float32, np.float32), (np.float16, np.float16, np.float16),
    (np.float32, np.float64, np.float64), (np.int32, np.float32, np.float64)])
def test_eval_backward_dtypes_and_values(rng, xdt, dydt, dxdt):
    """Eval mode: dx = dy * weight * invstd of the running statistics in the combined dtype of
    x and dy, dgamma = sum(dy * xhat), dbeta = sum(dy), against float64 NumPy."""
    bn = bnfast.BatchNorm(4, axis=-1)
    bn(make_float(rng, (50, 4), 1) * 2 + 1)
    bn.weight[:] = rng.uniform(0.5, 2, 4)
    bn.eval()
    x = (rng.standard_normal((6, 5, 4)) * 3).astype(xdt)
    dy = rng.standard_normal((6, 5, 4)).astype(dydt)
    bn(x)
    dx = bn.backward(dy)
    assert dx.dtype == dxdt
    invstd = 1 / np.sqrt(bn.running_var.astype(F64) + bn.eps)
    g = dy.astype(F64)
    xhat = (x.astype(F64) - bn.running_mean) * invstd
    ref_dx = g * bn.weight.astype(F64) * invstd
    # dx: one elementwise pass with given statistics; scale |dy| * weight * invstd
    np.testing.assert_allclose(dx, ref_dx, rtol=0,
                               atol=output_rtol(dxdt) * np.max(np.abs(ref_dx)), err_msg="dx")
    n = values_per_channel(x, -1)
    for got, ref, scale, name in (
            (bn.dgamma, (g * xhat).sum(axis=(0, 1)), (np.abs(g * xhat)).sum(axis=(0, 1)), "dgamma"),
            (bn.dbeta, g.sum(axis=(0, 1)), np.abs(g).sum(axis=(0, 1)), "dbeta")):
        # sums of n products of float64 terms, then the rounding to the layer's float32
        tol = stat_rtol(n) * scale + unit_roundoff(np.float32) * np.abs(ref)
        assert np.all(np.abs(got.astype(F64) - ref) <= tol), name


def test_training_backward_finite_differences(rng):
    """Training-mode dx / dgamma against central differences of sum(y * r), float64."""
    bn = bnfast.BatchNorm(2, axis=-1, dtype=F64)
    bn.weight[:] = [1.5, -0.7]
    x = make_float(rng, (4, 3, 2), -1)
    r = rng.standard_normal(x.shape)
    _, mean, invstd = bnfast.batch_norm_forward(x, bn.weight, bn.bias, axis=-1, eps=bn.eps)
    bn(x)
    dx = bn.backward(r)
    # the central difference's rounding and truncation bounds (tests/_helpers.py)
    n = values_per_channel(x, -1)
    xhat_max = float(np.abs((x - mean) * invstd).max())
    value_error = bn_loss_error(r, elementwise_scale(x, -1, mean, invstd, bn.weight, bn.bias), n)
    tol = central_difference_tol(h := 1e-6, value_error,
                                 bn_third_derivative(r, bn.weight, invstd, xhat_max, n))
    num = np.empty_like(x)
    for idx in np.ndindex(*x.shape):
        old = x[idx]
        x[idx] = old + h
        up = float(np.sum(bn(x) * r))
        x[idx] = old - h
        num[idx] = (up - float(np.sum(bn(x) * r))) / (2 * h)
        x[idx] = old
    np.testing.assert_allclose(dx, num, rtol=output_rtol(F64, n), atol=tol, err_msg="dx")


def test_track_running_stats_false_uses_batch_statistics_in_eval(rng):
    bn = bnfast.BatchNorm(4, track_running_stats=False)
    x = make_float(rng, (10, 4), 1).astype(np.float32)
    y_train = bn(x)
    y_eval = bn.eval()(x)
    np.testing.assert_array_equal(y_train, y_eval)
    y_ref, mean, invstd, _, _ = reference.batch_norm_forward(x, axis=1)
    np.testing.assert_allclose(y_eval, y_ref, rtol=0, atol=output_rtol(np.float32, 10)
                               * elementwise_scale(x, 1, mean, invstd))
    assert bn.running_mean is None and bn.running_var is None
    assert bn.num_batches_tracked is None
    assert sorted(bn.state_dict()) == ["bias", "weight"]


def test_dtypes_and_modes(rng):
    bn = bnfast.BatchNorm(3)
    assert bn.weight.dtype == np.float32 and bn.running_var.dtype == np.float32
    assert bn.training is True
    assert bn.eval() is bn and bn.training is False
    assert bn.train() is bn and bn.training is True
    x32 = make_float(rng, (8, 3), 1).astype(np.float32)
    x_before = x32.copy()
    y = bn(x32)
    assert y.dtype == np.float32
    dx = bn.backward(np.ones_like(y))
    assert dx.dtype == np.float32
    assert bn.dgamma.dtype == np.float32 and bn.dbeta.dtype == np.float32
    np.testing.assert_array_equal(x32, x_before)  # the input is never modified
    bn64 = bnfast.BatchNorm(3, dtype=np.float64)
    bn64(x32)
    assert bn64.running_mean.dtype == np.float64
    bn64.backward(np.ones_like(x32))
    assert bn64.dgamma.dtype == np.float64
    # eval backward with dy of a wider dtype than x: dx has the combined dtype
    bn.eval()
    bn(x32)
    dx = bn.backward(np.ones(x32.shape))
    assert dx.dtype == np.float64
    # dx = dy * weight * invstd: the coefficient may be formed in the layer's float32 (+ eps,
    # sqrt, divide: 3 roundings) and rounded once more; the reference's in float64 (4 u64)
    coef_rtol = 4 * unit_roundoff(np.float32) + 4 * unit_roundoff()
    np.testing.assert_allclose(dx, np.broadcast_to(bn.weight / np.sqrt(
        bn.running_var.astype(F64) + bn.eps), x32.shape), rtol=coef_rtol)
    # ... and with dy narrower than x (float32 dy, float64 x)
    x64 = make_float(rng, (8, 3), 1)
    bn(x64)
    dy32 = rng.standard_normal(x64.shape).astype(np.float32)
    dx = bn.backward(dy32)
    assert dx.dtype == np.float64
    np.testing.assert_allclose(dx, dy32 * (bn.weight / np.sqrt(
        bn.running_var.astype(F64) + bn.eps)), rtol=coef_rtol + 2 * unit_roundoff())
    assert "BatchNorm(3" in repr(bn)


def test_errors_change_nothing(rng):
    bn = bnfast.BatchNorm(3)
    with pytest.raises(RuntimeError, match="forward"):
        bn.backward(np.ones((4, 3)))
    bn(make_float(rng, (6, 3), 1))
    snap = _snapshot(bn)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        bn(make_float(rng, (1, 3), 1))
    with pytest.raises(ValueError, match="3 channels"):
        bn(make_float(rng, (6, 4), 1))
    with pytest.raises(ValueError, match="dy"):
        bn.backward(np.ones((5, 3)))
    _assert_same_state(bn, snap)
    assert bn.num_batches_tracked == 1


@pytest.mark.parametrize("kwargs, exc", [
    (dict(num_features=0), ValueError),
    (dict(num_features=2.5), TypeError),
    (dict(num_features=True), TypeError),
    (dict(num_features=3, eps=-1.0), ValueError),
    (dict(num_features=3, momentum=1.5), ValueError),
    (dict(num_features=3, momentum="fast"), ValueError),
    (dict(num_features=3, dtype=np.int32), ValueError),
    (dict(num_features=3, affine="yes"), ValueError),
    (dict(num_features=3, axis=1.0), TypeError),
    (dict(num_features=3, n_threads=0), ValueError),
])
def test_constructor_errors(kwargs, exc):
    with pytest.raises(exc):
        bnfast.BatchNorm(**kwargs)


def _trained(rng, C=4, **kwargs):
    bn = bnfast.BatchNorm(C, **kwargs)
    for _ in range(3):
        x = make_float(rng, (16, C), 1).astype(np.float32)
        bn(x)
        bn.backward(rng.standard_normal(x.shape).astype(np.float32))
        if bn.affine:
            bn.weight -= 0.1 * bn.dgamma
            bn.bias -= 0.1 * bn.dbeta
    return bn


def test_state_dict_round_trip(rng):
    bn = _trained(rng)
    state = bn.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var",
                           "num_batches_tracked"]
    for k in ("weight", "bias", "running_mean", "running_var"):
        assert state[k].dtype == np.float32 and state[k].shape == (4,)
    assert state["num_batches_tracked"].dtype == np.int64
    assert state["num_batches_tracked"].shape == () and int(state["num_batches_tracked"]) == 3
    state["weight"][:] = 123.0  # a snapshot: the layer does not change
    assert not np.any(bn.weight == 123.0)
    state = bn.state_dict()
    other = bnfast.BatchNorm(4)
    weight_ref = other.weight
    result = other.load_state_dict(state)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert other.weight is weight_ref  # copied into the existing arrays, like PyTorch
    assert other.num_batches_tracked == 3
    x = make_float(rng, (5, 4), 1).astype(np.float32)
    np.testing.assert_array_equal(bn.eval()(x), other.eval()(x))


@pytest.mark.parametrize("mutate, exc", [
    (lambda d: d.pop("running_var"), KeyError),
    (lambda d: d.update(extra=np.zeros(4)), KeyError),
    (lambda d: d.update(weight=np.ones(5)), ValueError),
    (lambda d: d.update(running_mean=np.ones((4, 1))), ValueError),
    (lambda d: d.update(bias=np.array(["a"] * 4)), ValueError),
    (lambda d: d.update(num_batches_tracked=np.array(-1)), ValueError),
    (lambda d: d.update(num_batches_tracked=np.array(2.5)), ValueError),
    (lambda d: d.update(num_batches_tracked=np.array([3])), ValueError),
])
def test_load_state_dict_is_atomic(rng, mutate, exc):
    """A bad state dict raises and leaves the layer exactly as it was, even when the good
    keys come before the bad one."""
    source = _trained(rng)
    bn = _trained(rng)
    state = source.state_dict()
    mutate(state)
    snap = _snapshot(bn)
    with pytest.raises(exc):
        bn.load_state_dict(state)
    _assert_same_state(bn, snap)


def test_load_state_dict_non_strict(rng):
    bn = _trained(rng)
    state = _trained(rng).state_dict()
    del state["running_var"]
    state["extra"] = np.zeros(4)
    rv = bn.running_var.copy()
    result = bn.load_state_dict(state, strict=False)
    assert result.missing_keys == ["running_var"] and result.unexpected_keys == ["extra"]
    np.testing.assert_array_equal(bn.running_mean, state["running_mean"])
    np.testing.assert_array_equal(bn.running_var, rv)


def test_linear_model_trains(rng):
    """End to end: Linear -> BatchNorm -> ReLU -> Linear on a regression task; the loss falls."""
    n, d, h = 256, 8, 16
    X = rng.standard_normal((n, d)) * 3 + 2
    t = np.tanh(2 * (X - 2) / 3 @ (rng.standard_normal(d) / np.sqrt(d)))[:, None]
    W1, b1 = rng.standard_normal((d, h)) / np.sqrt(d), np.zeros(h)
    W2, b2 = rng.standard_normal((h, 1)) / np.sqrt(h), np.zeros(1)
    bn = bnfast.BatchNorm(h, dtype=F64)
    losses = []
    for _ in range(150):
        z = X @ W1 + b1
        a = bn(z)
        r = np.maximum(a, 0)
        out = r @ W2 + b2
        err = out - t
        losses.append(float(np.mean(err ** 2)))
        g = 2 * err / n
        dW2, db2 = r.T @ g, g.sum(0)
        dz = bn.backward((g @ W2.T) * (a > 0))
        dW1, db1 = X.T @ dz, dz.sum(0)
        for p, gp in ((W1, dW1), (b1, db1), (W2, dW2), (b2, db2), (bn.weight, bn.dgamma),
                      (bn.bias, bn.dbeta)):
            p -= 0.1 * gp
    # (40 seeds: final / initial <= 0.15, final / var(t) <= 0.19)
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    assert losses[-1] < 0.4 * t.var(), (losses[-1], t.var())


# -- PyTorch parity -----------------------------------------------------------------------------

# (numpy shape, axis, torch module, memory format or None)
TORCH_LAYOUTS = [
    pytest.param((24, 5), 1, "BatchNorm1d", None, id="1d-NC"),
    pytest.param((6, 4, 9), 1, "BatchNorm1d", None, id="1d-NCL"),
    pytest.param((4, 3, 5, 6), 1, "BatchNorm2d", None, id="2d-NCHW"),
    pytest.param((4, 5, 6, 3), -1, "BatchNorm2d", "channels_last", id="2d-NHWC"),
    pytest.param((2, 3, 4, 3, 5), 1, "BatchNorm3d", None, id="3d-NCDHW"),
    pytest.param((2, 4, 3, 5, 3), -1, "BatchNorm3d", "channels_last_3d", id="3d-NDHWC"),
]


def _torch_view(torch, a, memory_format):
    """numpy array in bnfast's layout -> torch tensor in (N, C, ...) logical order."""
    t = torch.from_numpy(np.ascontiguousarray(a))
    if memory_format is not None:
        t = t.movedim(-1, 1)
        assert t.is_contiguous(memory_format=getattr(torch, memory_format))
    return t


def _numpy_view(t, memory_format):
    a = t.detach().numpy()
    return np.moveaxis(a, 1, -1) if memory_format is not None else a


@pytest.mark.parametrize("momentum, affine, track", CONFIGS)
@pytest.mark.parametrize("shape, axis, module, memory_format", TORCH_LAYOUTS)
def test_matches_torch_training_loop(rng, shape, axis, module, memory_format, momentum, affine,
                                     track):
    """float32, over a loop of train steps with SGD updates, eval steps and train again:
    outputs, input and parameter gradients, running statistics and num_batches_tracked agree
    with torch.nn.BatchNorm{1,2,3}d to 1e-5 relative (channels-last included)."""
    torch = pytest.importorskip("torch")
    C = shape[axis]
    bn = bnfast.BatchNorm(C, axis=axis, momentum=momentum, affine=affine,
                          track_running_stats=track)
    tbn = getattr(torch.nn, module)(C, momentum=momentum, affine=affine,
                                    track_running_stats=track)
    lr = 0.1
    for step, training in enumerate([True] * 4 + [False] * 2 + [True] * 2):
        bn.train(training)
        tbn.train(training)
        x = make_float(rng, shape, axis).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        xt = _torch_view(torch, x, memory_format).requires_grad_(True)
        yt = tbn(xt)
        yt.backward(_torch_view(torch, dy, memory_format))
        batch_stats = training or not track
        if batch_stats:
            _, mean, invstd, _, _ = reference.batch_norm_forward(x, axis=axis, eps=bn.eps)
        else:
            mean = bn.running_mean.astype(F64)
            invstd = 1 / np.sqrt(bn.running_var.astype(F64) + bn.eps)
        y = bn(x)
        dx = bn.backward(dy)
        # One step's bounds (torch_rtol, tests/_helpers.py); torch is given bnfast's state
        # after every step, so that rounding does not accumulate over the loop.
        n = values_per_channel(x, axis) if batch_stats else 0
        rtol = torch_rtol(np.float32, n)
        y_scale = elementwise_scale(x, axis, mean, invstd, bn.weight, bn.bias)
        np.testing.assert_allclose(y, _numpy_view(yt, memory_format), rtol=0,
                                   atol=rtol * y_scale, err_msg=f"y step {step}")
        scales = backward_scales(dy, x, mean, invstd, bn.weight, axis)
        np.testing.assert_allclose(dx, _numpy_view(xt.grad, memory_format), rtol=0,
                                   atol=rtol * scales[0], err_msg=f"dx step {step}")
        sum_rtol = torch_rtol(np.float32, values_per_channel(x, axis))
        if affine:
            for got, want, scale, name in ((bn.dgamma, tbn.weight.grad, scales[1], "dgamma"),
                                           (bn.dbeta, tbn.bias.grad, scales[2], "dbeta")):
                np.testing.assert_allclose(got, want.numpy(), rtol=sum_rtol,
                                           atol=sum_rtol * scale, err_msg=f"{name} step {step}")
            with torch.no_grad():
                tbn.weight -= lr * tbn.weight.grad
                tbn.bias -= lr * tbn.bias.grad
            tbn.zero_grad()
            bn.weight -= lr * bn.dgamma
            bn.bias -= lr * bn.dbeta
            # the gradients' difference times lr, and one float32 rounding each side
            np.testing.assert_allclose(
                bn.weight, tbn.weight.detach().numpy(), rtol=2 * unit_roundoff(np.float32),
                atol=lr * sum_rtol * (scales[1] + np.abs(bn.dgamma).max()),
                err_msg=f"weight step {step}")
            with torch.no_grad():
                tbn.weight.copy_(torch.from_numpy(bn.weight))
                tbn.bias.copy_(torch.from_numpy(bn.bias))
        if track:
            # the batch statistics (both sides' bounds), 4 float32 roundings of the update
            run_rtol = sum_rtol + 2 * 4 * unit_roundoff(np.float32)
            mean_scale, var_scale = stat_scales(x, axis)
            np.testing.assert_allclose(bn.running_mean, tbn.running_mean.numpy(), rtol=run_rtol,
                                       atol=run_rtol * mean_scale, err_msg=f"rm step {step}")
            np.testing.assert_allclose(bn.running_var, tbn.running_var.numpy(), rtol=run_rtol,
                                       atol=run_rtol * 2 * var_scale, err_msg=f"rv step {step}")
            with torch.no_grad():
                tbn.running_mean.copy_(torch.from_numpy(bn.running_mean))
                tbn.running_var.copy_(torch.from_numpy(bn.running_var))
            assert bn.num_batches_tracked == int(tbn.num_batches_tracked)


def test_state_dict_moves_both_ways_with_torch(rng):
    torch = pytest.importorskip("torch")
    C = 6
    tbn = torch.nn.BatchNorm2d(C, momentum=None)
    for _ in range(3):
        x = torch.from_numpy(make_float(rng, (4, C, 3, 3), 1).astype(np.float32))
        loss = (tbn(x) * torch.randn(x.shape)).sum()
        loss.backward()
        with torch.no_grad():
            tbn.weight -= 0.1 * tbn.weight.grad
            tbn.bias -= 0.1 * tbn.bias.grad
    tbn.eval()
    bn = bnfast.BatchNorm(C, momentum=None).eval()
    bn.load_state_dict(tbn.state_dict())  # torch tensors, weight/bias from Parameters
    assert bn.num_batches_tracked == 3
    x = make_float(rng, (2, C, 4, 4), 1).astype(np.float32)
    _close_eval(bn, x, tbn(torch.from_numpy(x)).detach().numpy(), "torch -> bnfast")

    back = torch.nn.BatchNorm2d(C, momentum=None).eval()
    trained = _trained(rng, C=C, momentum=None)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in trained.state_dict().items()})
    assert int(back.num_batches_tracked) == trained.num_batches_tracked
    x4 = make_float(rng, (3, C, 2, 2), 1).astype(np.float32)
    _close_eval(trained.eval(), x4, back(torch.from_numpy(x4)).detach().numpy(),
                "bnfast -> torch")
    # the keys PyTorch produces are exactly ours, in the same order
    assert list(trained.state_dict()) == list(back.state_dict())
