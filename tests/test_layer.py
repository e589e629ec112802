"""bnfast.BatchNorm: the layer for NumPy training loops (PyTorch semantics)."""

import numpy as np
import pytest

import bnfast
from bnfast import reference
from _helpers import make_float

F64 = np.float64


def _close(got, want, rtol, what=""):
    """Relative to the reference's scale: elements near 0 get the same absolute slack."""
    want = np.asarray(want, F64)
    scale = float(np.abs(want).max()) if want.size else 0.0
    np.testing.assert_allclose(np.asarray(got, F64), want, rtol=rtol, atol=rtol * scale,
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
        _close(y, y_ref, 1e-11, f"y step {step}")
        dx, dx_ref = bn.backward(dy), ref.backward(dy)
        _close(dx, dx_ref, 1e-10, f"dx step {step}")
        if affine:
            _close(bn.dgamma, ref.dgamma, 1e-10, f"dgamma step {step}")
            _close(bn.dbeta, ref.dbeta, 1e-12, f"dbeta step {step}")
            bn.weight -= lr * bn.dgamma
            bn.bias -= lr * bn.dbeta
            ref.weight = ref.weight - lr * ref.dgamma
            ref.bias = ref.bias - lr * ref.dbeta
        else:
            assert bn.dgamma is None and bn.dbeta is None and bn.weight is None
        if track:
            _close(bn.running_mean, ref.running_mean, 1e-12, f"running_mean step {step}")
            _close(bn.running_var, ref.running_var, 1e-12, f"running_var step {step}")
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
    means, uvars = [], []
    for n in (7, 12, 30, 9):
        x = make_float(rng, (n, 5), 1)
        bn(x)
        means.append(x.mean(axis=0))
        uvars.append(x.var(axis=0, ddof=1))
    np.testing.assert_allclose(bn.running_mean, np.mean(means, axis=0), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, np.mean(uvars, axis=0), rtol=1e-12)
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
    _close(dx, num_dx, 1e-6, "dx")
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
        _close(grad, num, 1e-6, name)


def test_training_backward_finite_differences(rng):
    """Training-mode dx / dgamma against central differences of sum(y * r), float64."""
    bn = bnfast.BatchNorm(2, axis=-1, dtype=F64)
    bn.weight[:] = [1.5, -0.7]
    x = make_float(rng, (4, 3, 2), -1)
    r = rng.standard_normal(x.shape)
    bn(x)
    dx = bn.backward(r)
    h = 1e-6
    num = np.empty_like(x)
    for idx in np.ndindex(*x.shape):
        old = x[idx]
        x[idx] = old + h
        up = float(np.sum(bn(x) * r))
        x[idx] = old - h
        num[idx] = (up - float(np.sum(bn(x) * r))) / (2 * h)
        x[idx] = old
    _close(dx, num, 1e-6, "dx")


def test_track_running_stats_false_uses_batch_statistics_in_eval(rng):
    bn = bnfast.BatchNorm(4, track_running_stats=False)
    x = make_float(rng, (10, 4), 1).astype(np.float32)
    y_train = bn(x)
    y_eval = bn.eval()(x)
    np.testing.assert_array_equal(y_train, y_eval)
    y_ref = reference.batch_norm_forward(x, axis=1)[0]
    _close(y_eval, y_ref, 2e-6)
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
    np.testing.assert_allclose(dx, np.broadcast_to(bn.weight / np.sqrt(
        bn.running_var.astype(F64) + bn.eps), x32.shape), rtol=1e-7)
    # ... and with dy narrower than x (float32 dy, float64 x)
    x64 = make_float(rng, (8, 3), 1)
    bn(x64)
    dy32 = rng.standard_normal(x64.shape).astype(np.float32)
    dx = bn.backward(dy32)
    assert dx.dtype == np.float64
    np.testing.assert_allclose(dx, dy32 * (bn.weight / np.sqrt(
        bn.running_var.astype(F64) + bn.eps)), rtol=1e-7)
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
        y = bn(x)
        dx = bn.backward(dy)
        _close(y, _numpy_view(yt, memory_format), 1e-5, f"y step {step}")
        _close(dx, _numpy_view(xt.grad, memory_format), 1e-5, f"dx step {step}")
        if affine:
            _close(bn.dgamma, tbn.weight.grad.numpy(), 1e-5, f"dgamma step {step}")
            _close(bn.dbeta, tbn.bias.grad.numpy(), 1e-5, f"dbeta step {step}")
            with torch.no_grad():
                tbn.weight -= lr * tbn.weight.grad
                tbn.bias -= lr * tbn.bias.grad
            tbn.zero_grad()
            bn.weight -= lr * bn.dgamma
            bn.bias -= lr * bn.dbeta
            _close(bn.weight, tbn.weight.detach().numpy(), 1e-5, f"weight step {step}")
        if track:
            _close(bn.running_mean, tbn.running_mean.numpy(), 1e-5, f"running_mean {step}")
            _close(bn.running_var, tbn.running_var.numpy(), 1e-5, f"running_var {step}")
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
    _close(bn(x), tbn(torch.from_numpy(x)).detach().numpy(), 1e-5, "torch -> bnfast")

    back = torch.nn.BatchNorm2d(C, momentum=None).eval()
    trained = _trained(rng, C=C, momentum=None)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in trained.state_dict().items()})
    assert int(back.num_batches_tracked) == trained.num_batches_tracked
    x4 = make_float(rng, (3, C, 2, 2), 1).astype(np.float32)
    _close(trained.eval()(x4), back(torch.from_numpy(x4)).detach().numpy(), 1e-5,
           "bnfast -> torch")
    # the keys PyTorch produces are exactly ours, in the same order
    assert list(trained.state_dict()) == list(back.state_dict())
