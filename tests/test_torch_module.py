"""bnfast.torch: parity of the layers and the functional with PyTorch's and with the float64
NumPy reference (``bnfast.reference``), autograd, fallbacks, conversion and serialization."""
import io
import pickle

import numpy as np
import pytest

from bnfast import reference
from _helpers import run_python

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnfast.torch")
from _torch_helpers import kernels_only  # noqa: E402,F401  (autouse: bnfast's kernels only)
F = torch.nn.functional


# (id, bnfast class, torch class, logical shape, memory format)
LAYOUTS = [
    ("1d-NC", bt.BatchNorm1d, torch.nn.BatchNorm1d, (16, 5), "contiguous_format"),
    ("1d-NCL", bt.BatchNorm1d, torch.nn.BatchNorm1d, (6, 4, 9), "contiguous_format"),
    ("2d-NCHW", bt.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 5, 6), "contiguous_format"),
    ("2d-channels_last", bt.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 5, 6), "channels_last"),
    ("3d-NCDHW", bt.BatchNorm3d, torch.nn.BatchNorm3d, (2, 3, 3, 4, 5), "contiguous_format"),
    ("3d-channels_last", bt.BatchNorm3d, torch.nn.BatchNorm3d, (2, 3, 3, 4, 5),
     "channels_last_3d"),
]
VARIANTS = [
    pytest.param({}, id="default"),
    pytest.param({"momentum": None}, id="momentum-None"),
    pytest.param({"affine": False}, id="affine-False"),
    pytest.param({"track_running_stats": False}, id="track-False"),
    pytest.param({"bias": False}, id="bias-False"),
    pytest.param({"eps": 1e-3, "momentum": 0.3}, id="eps-momentum"),
]


def _eps(dtype):
    return float(torch.finfo(dtype).eps)


def _make_x(gen, shape, dtype, fmt="contiguous_format", offset=5.0):
    """Offset per-channel normal data: offsets in [-offset, offset], spreads in [0.5, 3]."""
    C = shape[1]
    bshape = (1, C) + (1,) * (len(shape) - 2)
    loc = (torch.rand(C, generator=gen, dtype=torch.float64) * 2 - 1) * offset
    spread = torch.rand(C, generator=gen, dtype=torch.float64) * 2.5 + 0.5
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * spread.view(bshape) \
        + loc.view(bshape)
    return x.to(dtype).contiguous(memory_format=getattr(torch, fmt))


def _np(t):
    return np.ascontiguousarray(t.detach().to(torch.float64).numpy())


def _assert_close(got, want, atol, what):
    got = _np(got) if isinstance(got, torch.Tensor) else np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    err = np.abs(got - want)
    bad = ~(err <= atol)  # atol: a scalar or per channel; NaN fails
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} differ by more than "
                           f"atol, worst {np.nanmax(err / np.maximum(atol, 1e-300)):.3g} x "
                           "atol")


class ReferenceLayer:
    """The module logic of torch's _BatchNorm over ``bnfast.reference`` in float64."""

    def __init__(self, module):
        self.momentum = module.momentum
        self.eps = module.eps
        self.track = module.track_running_stats
        self.weight = None if module.weight is None else _np(module.weight)
        self.bias = None if module.bias is None else _np(module.bias)
        self.running_mean = _np(module.running_mean) if self.track else None
        self.running_var = _np(module.running_var) if self.track else None
        self.num_batches = 0
        self.x_max = 0.0  # the largest |x| and x**2 seen: the scales of the statistics' errors
        self.x2_max = 0.0

    def step(self, x, dy, training):
        """(y, dx, dweight, dbias) in float64 for float64 arrays x, dy of shape (N, C, ...)."""
        m = x.size // x.shape[1]
        self.x_max = max(self.x_max, float(np.abs(x).max()))
        self.x2_max = max(self.x2_max, float((x * x).max()))
        if training and self.track:
            self.num_batches += 1
        if training or not self.track:
            factor = (1.0 / self.num_batches if self.momentum is None and self.track
                      else self.momentum or 0.0)
            y, mean, invstd, rm, rv = reference.batch_norm_forward(
                x, self.weight, self.bias, axis=1, eps=self.eps,
                running_mean=self.running_mean if training else None,
                running_var=self.running_var if training else None, momentum=factor)
            if training and self.track:
                self.running_mean, self.running_var = rm, rv
            dx, dw, db = reference.batch_norm_backward(dy, x, mean, invstd, self.weight, axis=1)
            scale_sums = (np.abs(dy), np.abs(dy * ((x - _bc(mean, x)) * _bc(invstd, x))))
        else:
            y = reference.batch_norm_inference(x, self.running_mean, self.running_var,
                                               self.weight, self.bias, axis=1, eps=self.eps)
            invstd = 1.0 / np.sqrt(self.running_var + self.eps)
            gamma = np.ones_like(invstd) if self.weight is None else self.weight
            xhat = (x - _bc(self.running_mean, x)) * _bc(invstd, x)
            dx = dy * _bc(gamma * invstd, x)
            axes = (0,) + tuple(range(2, x.ndim))
            dw, db = (dy * xhat).sum(axis=axes), dy.sum(axis=axes)
            scale_sums = (np.abs(dy), np.abs(dy * xhat))
            m = 0  # no batch terms in dx
        # Scales of the rounding errors (see test_layer_parity's tolerances).
        gamma = np.ones(x.shape[1]) if self.weight is None else self.weight
        a = np.abs(gamma * invstd)
        axes = (0,) + tuple(range(2, x.ndim))
        y_scale = (np.abs(x) * _bc(a, x)).max() + (0 if self.bias is None
                                                   else np.abs(self.bias).max())
        dx_scale = a.max() * (np.abs(dy).max() + (np.abs(db).max() / m if m else 0)
                              + (np.abs((x - x.mean(axis=axes, keepdims=True))).max()
                                 * invstd.max() * np.abs(dw).max() / m if m else 0))
        return y, dx, dw, db, dict(y=y_scale, dx=dx_scale, dbeta=scale_sums[0].sum(axis=axes),
                                   dgamma=scale_sums[1].sum(axis=axes), m=x.size // x.shape[1])


def _bc(v, x):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def _run_layer(module, x, dy):
    x = x.clone().requires_grad_(True)
    for p in module.parameters():
        p.grad = None
    y = module(x)
    y.backward(dy)
    grads = [None if p is None else p.grad for p in (module.weight, module.bias)]
    return y, x.grad, grads[0], grads[1]


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("name, ours, theirs, shape, fmt", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_layer_parity(seed, name, ours, theirs, shape, fmt, variant, dtype):
    """Three training steps, then an eval step, with random data and upstream gradients:
    y, input and parameter gradients, running statistics and num_batches_tracked."""
    gen = torch.Generator().manual_seed(seed % 2**63)
    tdtype = getattr(torch, dtype)
    C = shape[1]
    torch_layer = theirs(C, dtype=tdtype, **variant)
    if torch_layer.weight is not None:
        with torch.no_grad():
            torch_layer.weight.uniform_(0.5, 2.0, generator=gen)
            if torch_layer.bias is not None:
                torch_layer.bias.normal_(generator=gen)
    layer = ours(C, dtype=tdtype, **variant)
    layer.load_state_dict(torch_layer.state_dict())
    ref = ReferenceLayer(layer)
    # Tolerances, in units of the dtype's epsilon times the scale of what is compared:
    # y = x * (gamma * invstd) + shift rounds at |x * gamma * invstd| (y_scale); dx rounds at
    # gamma * invstd * (|dy| + |sum dy| / m + |xhat| |sum dy xhat| / m) (dx_scale); the
    # sums dgamma, dbeta round at the sums of magnitudes; bnfast accumulates in float64, so
    # its float32 results are a few ulps of those scales (16 leaves room). float64 sums over
    # m values in another order differ by up to m ulps of the sum of magnitudes.
    # Running statistics: one rounding per step in the buffer's dtype, 3 steps.
    eps = _eps(tdtype)
    # PyTorch's float32 kernels are not the oracle: they are checked only to 1e-4 of the
    # same scales (their float32 statistics lose digits on offset data; see docs/torch.md).
    torch_ulps = 16 if dtype == "float64" else 1e-4 / eps
    for step, training in enumerate([True, True, True, False]):
        layer.train(training)
        torch_layer.train(training)
        x = _make_x(gen, shape, tdtype, fmt)
        dy = torch.randn(shape, generator=gen, dtype=torch.float64).to(tdtype)
        want = ref.step(_np(x), _np(dy), training)
        scales = want[4]
        sum_ulps = max(16, scales["m"] if dtype == "float64" else 16)
        for impl, mod, ulps in (("bnfast", layer, 16), ("torch", torch_layer, torch_ulps)):
            y, dx, dw, db = _run_layer(mod, x, dy)
            where = f"{impl} step {step} ({'train' if training else 'eval'})"
            assert y.dtype == dx.dtype == tdtype
            assert y.is_contiguous(memory_format=getattr(torch, fmt)), where
            _assert_close(y, want[0], ulps * eps * scales["y"], f"y, {where}")
            _assert_close(dx, want[1], ulps * eps * scales["dx"], f"dx, {where}")
            if mod.weight is not None:
                _assert_close(dw, want[2], max(ulps, sum_ulps) * eps * scales["dgamma"],
                              f"dweight, {where}")
            else:
                assert dw is None
            if mod.bias is not None:
                _assert_close(db, want[3], max(ulps, sum_ulps) * eps * scales["dbeta"],
                              f"dbias, {where}")
            else:
                assert db is None
            if mod.track_running_stats:
                assert int(mod.num_batches_tracked) == ref.num_batches
                # The buffer's rounding (ulps of its values), plus the statistics' own error:
                # float64 sums over m values, m float64 ulps of max |x| (mean) or of
                # max x**2 (variance, whatever the algorithm's cancellation).
                stat_ulps = scales["m"] * _eps(torch.float64)
                for buf, value, stat_scale in (
                        ("running_mean", ref.running_mean, ref.x_max),
                        ("running_var", ref.running_var, ref.x2_max)):
                    _assert_close(getattr(mod, buf), value,
                                  ulps * eps * np.abs(value).max() + stat_ulps * stat_scale,
                                  f"{buf}, {where}")
            else:
                assert mod.running_mean is None and mod.num_batches_tracked is None
    assert list(layer.state_dict()) == list(torch_layer.state_dict())


def test_float32_accuracy_on_offset_data_against_the_float64_reference(seed):
    """Data far from zero (1e4 + N(0, 1)): bnfast's float32 statistics stay at float32
    rounding (float64 accumulators); the running variance is checked to 1e-5 relative."""
    gen = torch.Generator().manual_seed(seed % 2**63)
    x64 = torch.randn(64, 8, 7, 7, generator=gen, dtype=torch.float64) + 1e4
    x = x64.float().contiguous(memory_format=torch.channels_last)
    rm, rv = torch.zeros(8), torch.ones(8)
    y = bt.batch_norm(x, rm, rv, training=True, momentum=1.0)
    _, _, _, want_rm, want_rv = reference.batch_norm_forward(_np(x), axis=1, momentum=1.0,
                                                             running_mean=np.zeros(8),
                                                             running_var=np.ones(8))
    # float32 buffers: half an ulp of rounding each (2^-24 relative), the statistics
    # themselves exact to float64 rounding.
    _assert_close(rv, want_rv, 2 * _eps(torch.float32) * np.abs(want_rv).max(), "running_var")
    _assert_close(rm, want_rm, 2 * _eps(torch.float32) * np.abs(want_rm).max(), "running_mean")
    want_y, _, invstd, _, _ = reference.batch_norm_forward(_np(x), axis=1)
    # y = x * invstd + shift rounds at |x * invstd| (~1e4 here): 4 float32 ulps of that.
    y_scale = float(np.abs(_np(x)).max() * invstd.max())
    _assert_close(y, want_y, 4 * _eps(torch.float32) * y_scale, "y")


# ---- The functional and autograd ---------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", ["contiguous_format", "channels_last"])
def test_gradcheck_float64(seed, training, fmt):
    gen = torch.Generator().manual_seed(seed % 2**63)
    x = _make_x(gen, (3, 2, 3, 2), torch.float64, fmt, offset=2.0).requires_grad_(True)
    w = (torch.rand(2, generator=gen, dtype=torch.float64) + 0.5).requires_grad_(True)
    b = torch.randn(2, generator=gen, dtype=torch.float64).requires_grad_(True)
    rm = torch.randn(2, generator=gen, dtype=torch.float64)
    rv = torch.rand(2, generator=gen, dtype=torch.float64) + 0.5

    def fn(x, w, b):
        # Fresh buffers each call: in training they are updated in place.
        return bt.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-3)

    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("needs", [(True, False, False), (False, True, False),
                                   (False, False, True), (False, True, True),
                                   (True, True, True), (False, False, False)])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_requires_grad_on_any_subset(seed, needs, training):
    gen = torch.Generator().manual_seed(seed % 2**63)
    x0 = _make_x(gen, (8, 3, 4), torch.float64)
    w0 = torch.rand(3, generator=gen, dtype=torch.float64) + 0.5
    b0 = torch.randn(3, generator=gen, dtype=torch.float64)
    dy = torch.randn(8, 3, 4, generator=gen, dtype=torch.float64)
    results = []
    for fn in (bt.batch_norm, F.batch_norm):
        x, w, b = (t.clone().requires_grad_(n) for t, n in zip((x0, w0, b0), needs))
        y = fn(x, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64),
               w, b, training, 0.1, 1e-5)
        assert y.requires_grad == any(needs)
        if any(needs):
            y.backward(dy)
        results.append([t.grad for t in (x, w, b)])
    for ours, theirs, need in zip(*results, needs):
        assert (ours is None) == (not need)
        if need:
            # float64 both ways: sums over 32 values, ~32 ulps of their magnitudes.
            _assert_close(ours, _np(theirs), 1e-12 * float(theirs.abs().max() + 1), "grad")


def test_input_modified_in_place_before_backward_is_detected():
    x = torch.randn(6, 3, requires_grad=True)
    h = x * 2
    y = bt.batch_norm(h, None, None, training=True)
    h.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("params_dtype", ["float32", "same"])
def test_half_precision_is_computed_in_float32(seed, dtype, params_dtype):
    """float16/bfloat16: the bits of the float32 computation on the same values rounded
    once (the kernels widen half values as they load them; channels-last input, whose plan
    does not depend on the element size)."""
    gen = torch.Generator().manual_seed(seed % 2**63)
    tdtype = getattr(torch, dtype)
    pdtype = torch.float32 if params_dtype == "float32" else tdtype
    x = _make_x(gen, (4, 3, 5, 6), tdtype, "channels_last")
    w = (torch.rand(3, generator=gen) + 0.5).to(pdtype).requires_grad_(True)
    b = torch.randn(3, generator=gen).to(pdtype).requires_grad_(True)
    dy = torch.randn(x.shape, generator=gen).to(tdtype)
    rm, rv = torch.zeros(3, dtype=pdtype), torch.ones(3, dtype=pdtype)
    xg = x.clone().requires_grad_(True)
    y = bt.batch_norm(xg, rm, rv, w, b, True, 0.1, 1e-5)
    y.backward(dy)
    assert y.dtype == xg.grad.dtype == tdtype
    assert y.is_contiguous(memory_format=torch.channels_last)
    assert rm.dtype == pdtype and w.grad.dtype == pdtype
    x32 = x.float().requires_grad_(True)
    w32 = w.detach().float().requires_grad_(True)
    b32 = b.detach().float().requires_grad_(True)
    rm32, rv32 = torch.zeros(3), torch.ones(3)
    y32 = bt.batch_norm(x32, rm32, rv32, w32, b32, True, 0.1, 1e-5)
    y32.backward(dy.float())
    assert torch.equal(y, y32.to(tdtype))
    assert torch.equal(xg.grad, x32.grad.to(tdtype))
    assert torch.equal(w.grad, w32.grad.to(pdtype))
    assert torch.equal(rm, rm32.to(pdtype)) and torch.equal(rv, rv32.to(pdtype))


def test_strided_input_is_made_contiguous(seed):
    gen = torch.Generator().manual_seed(seed % 2**63)
    base = _make_x(gen, (4, 3, 6, 5), torch.float64)
    x = base.transpose(2, 3)  # neither contiguous nor channels-last
    y = bt.batch_norm(x, None, None, training=True)
    want = reference.batch_norm_forward(_np(x), axis=1)[0]
    # float64: a few ulps of |x * invstd| (offsets <= 5, spreads >= 0.5: <= 16).
    _assert_close(y, want, 64 * _eps(torch.float64) * 16, "y")


def test_running_statistics_updated_in_place():
    x = torch.randn(10, 3) + 2
    rm, rv = torch.zeros(3), torch.ones(3)
    ptrs = rm.data_ptr(), rv.data_ptr()
    bt.batch_norm(x, rm, rv, training=True, momentum=0.5)
    assert (rm.data_ptr(), rv.data_ptr()) == ptrs
    torch.testing.assert_close(rm, 0.5 * x.mean(0), rtol=1e-6, atol=1e-6)


def test_layer_cumulative_average_with_momentum_none(seed):
    """momentum=None: running statistics are the plain average over the batches seen."""
    gen = torch.Generator().manual_seed(seed % 2**63)
    layer = bt.BatchNorm1d(3, momentum=None, dtype=torch.float64)
    batches = [_make_x(gen, (7, 3), torch.float64) for _ in range(4)]
    for x in batches:
        layer(x)
    means = np.mean([_np(x).mean(0) for x in batches], axis=0)
    variances = np.mean([_np(x).var(0, ddof=1) for x in batches], axis=0)
    # float64, 4 batches of 7 values: a few ulps of the values (<= 10 here).
    _assert_close(layer.running_mean, means, 1e-13, "running_mean")
    _assert_close(layer.running_var, variances, 1e-13 * np.abs(variances).max(), "running_var")
    assert int(layer.num_batches_tracked) == 4


# ---- Errors and fallbacks: as PyTorch --------------------------------------------------------

def _same_error(call_ours, call_theirs):
    with pytest.raises(Exception) as theirs:
        call_theirs()
    with pytest.raises(type(theirs.value)) as ours:
        call_ours()
    assert str(ours.value) == str(theirs.value)


@pytest.mark.parametrize("ours, theirs, bad_shape", [
    (bt.BatchNorm1d, torch.nn.BatchNorm1d, (2, 3, 4, 5)),
    (bt.BatchNorm2d, torch.nn.BatchNorm2d, (2, 3, 4)),
    (bt.BatchNorm3d, torch.nn.BatchNorm3d, (2, 3, 4, 5)),
])
def test_layer_input_dimension_errors(ours, theirs, bad_shape):
    x = torch.randn(bad_shape)
    _same_error(lambda: ours(3)(x), lambda: theirs(3)(x))


@pytest.mark.parametrize("eps, training", [(0.0, True), (-1e-5, True), (-1e-5, False)])
def test_eps_errors(eps, training):
    x = torch.randn(4, 3, 5)
    ours, theirs = bt.BatchNorm1d(3, eps=eps), torch.nn.BatchNorm1d(3, eps=eps)
    ours.train(training)
    theirs.train(training)
    with pytest.raises(ValueError, match="eps"):
        theirs(x)
    _same_error(lambda: ours(x), lambda: theirs(x))
    _same_error(lambda: bt.batch_norm(x, torch.zeros(3), torch.ones(3), training=training,
                                      eps=eps),
                lambda: F.batch_norm(x, torch.zeros(3), torch.ones(3), training=training,
                                     eps=eps))


def test_eps_zero_in_eval_mode_is_allowed():
    x = torch.randn(4, 3)
    y = bt.batch_norm(x, torch.zeros(3), torch.full((3,), 2.0), training=False, eps=0.0)
    torch.testing.assert_close(y, x / 2 ** 0.5)


@pytest.mark.parametrize("call", [
    pytest.param(lambda f: f(torch.randn(1, 3), None, None, training=True), id="one-value"),
    pytest.param(lambda f: f(torch.randn(1, 3, 1), torch.zeros(3), torch.ones(3),
                             training=True), id="one-value-3d"),
    pytest.param(lambda f: f(torch.randn(5), torch.zeros(1), torch.ones(1), training=True),
                 id="1-D"),
    pytest.param(lambda f: f(torch.randn(5, 3), None, None, training=False), id="eval-None"),
    pytest.param(lambda f: f(torch.randn(5, 3), torch.zeros(3), None, training=True),
                 id="one-buffer"),
    pytest.param(lambda f: f(torch.randn(5, 3), torch.zeros(4), torch.ones(4),
                             training=True), id="wrong-C"),
    pytest.param(lambda f: f(torch.randn(5, 3, dtype=torch.float64), torch.zeros(3),
                             torch.ones(3), training=True), id="mixed-dtype"),
    pytest.param(lambda f: f(torch.randint(0, 5, (5, 3)), torch.zeros(3), torch.ones(3),
                             training=True), id="integer"),
    pytest.param(lambda f: f(torch.randn(5, 3), torch.zeros(3), torch.ones(3),
                             training=True, momentum=None), id="momentum-None"),
])
def test_functional_errors_are_torchs(call):
    _same_error(lambda: call(bt.batch_norm), lambda: call(F.batch_norm))


def test_functional_falls_back_to_torch_for_what_bnfast_does_not_compute(seed):
    gen = torch.Generator().manual_seed(seed % 2**63)
    x = _make_x(gen, (6, 3, 4), torch.float64)
    for kwargs in ({"momentum": 2.0}, {"momentum": -0.5}):  # beyond bnfast's [0, 1]
        rm1, rv1 = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        rm2, rv2 = rm1.clone(), rv1.clone()
        y1 = bt.batch_norm(x, rm1, rv1, training=True, **kwargs)
        y2 = F.batch_norm(x, rm2, rv2, training=True, **kwargs)
        assert torch.equal(y1, y2) and torch.equal(rm1, rm2) and torch.equal(rv1, rv2)


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4, 4), (2, 3, 0)])
def test_empty_batch_as_torch(shape):
    results = []
    for cls in (bt, torch.nn):
        layer = {2: cls.BatchNorm1d, 3: cls.BatchNorm1d, 4: cls.BatchNorm2d}[len(shape)](3)
        x = torch.randn(shape, requires_grad=True)
        y = layer(x)
        y.sum().backward()
        results.append((y.shape, x.grad.shape, layer.running_mean.clone(),
                        layer.running_var.clone(), int(layer.num_batches_tracked),
                        layer.weight.grad.clone(), layer.bias.grad.clone()))
    for ours, theirs in zip(*results):
        assert ours == theirs if not isinstance(ours, torch.Tensor) else torch.equal(ours, theirs)


def test_no_grad_and_inference_mode(seed):
    gen = torch.Generator().manual_seed(seed % 2**63)
    x = _make_x(gen, (4, 3, 5, 5), torch.float32, "channels_last")
    layer = bt.BatchNorm2d(3).eval()
    with torch.no_grad():
        y1 = layer(x)
    with torch.inference_mode():
        y2 = layer(x)
    assert torch.equal(y1, y2) and not y1.requires_grad


# ---- Conversion and serialization ------------------------------------------------------------

def _model(dtype=torch.float32):
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 5),
                            torch.nn.BatchNorm1d(5, affine=False)),
        torch.nn.BatchNorm1d(5, momentum=None, bias=False)).to(dtype)


def test_convert_keeps_parameters_buffers_and_mode():
    model = _model(torch.float64)
    model[1].weight.requires_grad_(False)
    model[2][2].eval()
    before = {name: t for name, t in list(model.named_parameters())
              + list(model.named_buffers())}
    converted = bt.convert(model)
    assert converted is model
    assert type(model[1]) is bt.BatchNorm2d and type(model[2][2]) is bt.BatchNorm1d
    assert type(model[3]) is bt.BatchNorm1d
    after = dict(list(model.named_parameters()) + list(model.named_buffers()))
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)  # the same tensors
    assert not model[1].weight.requires_grad
    assert model[1].training and not model[2][2].training
    assert model[3].momentum is None and model[3].bias is None
    assert model[1].weight.dtype == torch.float64
    layer = torch.nn.BatchNorm3d(2)
    assert type(bt.convert(layer)) is bt.BatchNorm3d


def test_convert_leaves_subclasses_alone_and_swaps_sync_batchnorm():
    class MyNorm(torch.nn.BatchNorm2d):
        pass

    model = torch.nn.Sequential(MyNorm(3), torch.nn.SyncBatchNorm(3, process_group="pg"))
    bt.convert(model)
    assert type(model[0]) is MyNorm
    assert type(model[1]) is bt.SyncBatchNorm and model[1].process_group == "pg"


def test_convert_sync_batchnorm():
    model = _model()
    weight = model[1].weight
    out = bt.convert_sync_batchnorm(model, process_group=None)
    assert all(type(m) is bt.SyncBatchNorm for m in (out[1], out[2][2], out[3]))
    assert out[1].weight is weight
    assert bt.SyncBatchNorm.convert_sync_batchnorm(torch.nn.BatchNorm1d(3)).num_features == 3


def test_converted_model_trains_like_torch(seed):
    """A training step of the whole model, bnfast's layers vs torch's, in float64."""
    gen = torch.Generator().manual_seed(seed % 2**63)
    torch_model = _model(torch.float64)
    ours = bt.convert(pickle.loads(pickle.dumps(torch_model)))
    x = torch.randn(8, 3, 8, 8, generator=gen, dtype=torch.float64)
    grads = []
    for model in (ours, torch_model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
        grads.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    for k in grads[1]:
        # float64 through two SGD steps of a small model: ~1e-15 relative per operation.
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-9, atol=1e-9, msg=k)


def test_sync_batchnorm_without_process_group_is_batch_norm(seed):
    gen = torch.Generator().manual_seed(seed % 2**63)
    x = _make_x(gen, (6, 3, 4, 4), torch.float64)
    ours, theirs = bt.SyncBatchNorm(3).double(), torch.nn.BatchNorm2d(3).double()
    y1, y2 = ours(x), theirs(x)
    torch.testing.assert_close(y1, y2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-12, atol=1e-12)


def test_state_dict_and_pickle_round_trips(seed):
    gen = torch.Generator().manual_seed(seed % 2**63)
    layer = bt.BatchNorm2d(3, momentum=None)
    for _ in range(2):
        layer(_make_x(gen, (4, 3, 5, 5), torch.float32))
    state = layer.state_dict()
    assert list(state) == ["weight", "bias", "running_mean", "running_var",
                           "num_batches_tracked"]
    theirs = torch.nn.BatchNorm2d(3, momentum=None)
    theirs.load_state_dict(state)
    back = bt.BatchNorm2d(3, momentum=None)
    back.load_state_dict(theirs.state_dict())
    for k, v in state.items():
        assert torch.equal(back.state_dict()[k], v)
    clone = pickle.loads(pickle.dumps(layer))
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    x = _make_x(gen, (4, 3, 5, 5), torch.float32)
    for other in (clone, loaded):
        assert type(other) is bt.BatchNorm2d
        for k, v in state.items():
            assert torch.equal(other.state_dict()[k], v)
        other.eval()
        layer.eval()
        assert torch.equal(other(x), layer(x))


def test_import_bnfast_does_not_import_torch():
    code = "import sys, bnfast; bnfast.BatchNorm; assert 'torch' not in sys.modules, 'torch'"
    done = run_python(code)
    assert done.returncode == 0, done.stderr


def test_results_do_not_depend_on_the_thread_count(seed):
    """bnfast.torch runs the kernels on torch.get_num_threads() threads; the bits stay."""
    gen = torch.Generator().manual_seed(seed % 2**63)
    x = _make_x(gen, (16, 32, 9, 9), torch.float32, "channels_last")
    dy = torch.randn(x.shape, generator=gen)
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            layer = bt.BatchNorm2d(32)
            xg = x.clone().requires_grad_(True)
            layer(xg).backward(dy)
            results.append([xg.grad, layer.weight.grad, layer.bias.grad, layer.running_var])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls, shape", [(bt.BatchNorm2d, (4, 3, 5, 5)),
                                        (bt.SyncBatchNorm, (4, 3, 5))])
def test_non_cpu_tensors_run_torchs_forward(cls, shape):
    """The meta device stands in for an accelerator: torch's own forward runs (bnfast would
    need the data), giving torch's result metadata."""
    layer = cls(3, device="meta")
    y = layer(torch.empty(shape, device="meta"))
    assert y.device.type == "meta" and y.shape == shape
