"""bnfast.torch layers' options: the fused ReLU / residual add (against torch's unfused
BN + residual + relu), ghost batch norm and batch renormalization (against the float64
``bnfast.reference``), gradients (autograd.gradcheck), modes, state_dict and errors."""
import numpy as np
import pytest

from bnfast import reference

from _helpers import backward_scales, elementwise_scale, output_rtol, stat_rtol, torch_rtol

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnfast.torch")
from _torch_helpers import kernels_only  # noqa: E402,F401  (autouse: bnfast's kernels only)

# (id, bnfast class, torch class, shape, memory format)
LAYOUTS = [
    ("1d-NC", bt.BatchNorm1d, torch.nn.BatchNorm1d, (16, 5), torch.contiguous_format),
    ("1d-NCL", bt.BatchNorm1d, torch.nn.BatchNorm1d, (6, 4, 5), torch.contiguous_format),
    ("2d-NCHW", bt.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 5, 6), torch.contiguous_format),
    ("2d-channels_last", bt.BatchNorm2d, torch.nn.BatchNorm2d, (4, 3, 5, 6),
     torch.channels_last),
    ("3d-NCDHW", bt.BatchNorm3d, torch.nn.BatchNorm3d, (2, 3, 3, 4, 5),
     torch.contiguous_format),
]
LAYOUT_PARAMS = [pytest.param(*layout[1:], id=layout[0]) for layout in LAYOUTS]


def _np(t):
    return t.detach().to(torch.float64).numpy().copy()  # a copy: never a view of a buffer


def _tensor(a, dtype, fmt=torch.contiguous_format):
    return torch.from_numpy(np.asarray(a, np.float64)).to(dtype).contiguous(memory_format=fmt)


def _close(got, want, atol, what):
    np.testing.assert_allclose(_np(got), want, rtol=0, atol=atol, err_msg=what)


def _away_from_zero_residual(rng, bn_y):
    """A residual that puts bn(x) + residual at +-(0.5 .. 1.5): a margin of 0.5 around the
    ReLU's kink, far above any rounding here, so both sides take the same mask."""
    sign = rng.choice([-1.0, 1.0], bn_y.shape)
    return -bn_y + sign * rng.uniform(0.5, 1.5, bn_y.shape)


def _layer_pair(ours_cls, theirs_cls, C, dtype, rng, **ours_kw):
    ours = ours_cls(C, dtype=dtype, **ours_kw)
    theirs = theirs_cls(C, dtype=dtype)
    with torch.no_grad():
        ours.weight.copy_(_tensor(rng.uniform(0.5, 2.0, C) * rng.choice([-1, 1], C), dtype))
        ours.bias.copy_(_tensor(rng.uniform(-1.0, 1.0, C), dtype))
        ours.running_mean.copy_(_tensor(rng.uniform(-1.0, 1.0, C), dtype))
        ours.running_var.copy_(_tensor(rng.uniform(0.5, 2.0, C), dtype))
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


# ---- Fused ReLU and residual add against torch's unfused sequence -----------------------------

@pytest.mark.parametrize("ours_cls,theirs_cls,shape,fmt", LAYOUT_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("activation", ["relu", None], ids=["relu", "no-act"])
def test_fused_matches_unfused_torch(rng, ours_cls, theirs_cls, shape, fmt, dtype, training,
                                     activation):
    C = shape[1]
    ours, theirs = _layer_pair(ours_cls, theirs_cls, C, dtype, rng, activation=activation)
    ours.train(training)
    theirs.train(training)
    x64 = reference_x = rng.standard_normal(shape) * rng.uniform(0.5, 3, C).reshape(
        (1, C) + (1,) * (len(shape) - 2)) + 2.0
    gamma, beta = _np(ours.weight), _np(ours.bias)
    rm0, rv0 = _np(ours.running_mean), _np(ours.running_var)
    if training:
        bn_y, mean, invstd, want_rm, want_rv = reference.batch_norm_forward(
            reference_x, gamma, beta, running_mean=rm0, running_var=rv0)
    else:
        bn_y = reference.batch_norm_inference(reference_x, rm0, rv0, gamma, beta)
        mean, invstd = rm0, 1.0 / np.sqrt(rv0 + 1e-5)
    res64 = _away_from_zero_residual(rng, bn_y)
    x_o = _tensor(x64, dtype, fmt).requires_grad_(True)
    x_t = _tensor(x64, dtype, fmt).requires_grad_(True)
    r_o = _tensor(res64, dtype, fmt).requires_grad_(True)
    r_t = _tensor(res64, dtype, fmt).requires_grad_(True)
    y_o = ours(x_o, r_o)
    y_t = theirs(x_t) + r_t
    if activation == "relu":
        y_t = torch.relu(y_t)
    assert y_o.dtype == dtype and y_o.is_contiguous(memory_format=fmt)
    n = x64.size // C if training else 0
    rtol = torch_rtol(np.dtype(str(dtype).split(".")[1]), n)
    # y: bn(x) within rtol of its elementwise_scale on each side, plus the residual add
    # and its rounding (relative to max |bn(x)| + max |residual|); the ReLU is exact.
    y_scale = elementwise_scale(x64, 1, mean, invstd, gamma, beta) + np.abs(res64).max()
    _close(y_o, _np(y_t), rtol * y_scale, "y")
    dy = rng.standard_normal(shape)
    y_o.backward(_tensor(dy, dtype, fmt))
    y_t.backward(_tensor(dy, dtype, fmt))
    # The gradient reaching bn: dy masked by y > 0 (the same mask on both sides: margin 0.5).
    g = dy * (_np(y_t) > 0) if activation == "relu" else dy
    dx_scale, dgamma_scale, dbeta_scale = backward_scales(g, x64, mean, invstd, gamma, 1)
    if not training:  # fixed statistics: dx = g gamma invstd, no cancellation
        dx_scale = float(np.abs(g).max() * np.max(np.abs(gamma) * invstd))
    _close(x_o.grad, _np(x_t.grad), rtol * dx_scale, "dx")
    _close(r_o.grad, _np(r_t.grad), 0.0, "dresidual")  # g itself: exact on both sides
    _close(ours.weight.grad, _np(theirs.weight.grad), rtol * dgamma_scale, "dgamma")
    _close(ours.bias.grad, _np(theirs.bias.grad), rtol * dbeta_scale, "dbeta")
    # Running statistics: the same update as torch's (both within rtol of exact).
    rs = rtol * (np.abs(x64).max() ** 2 + np.abs(rv0).max())
    _close(ours.running_mean, _np(theirs.running_mean), rs, "running_mean")
    _close(ours.running_var, _np(theirs.running_var), rs, "running_var")
    assert int(ours.num_batches_tracked) == int(theirs.num_batches_tracked)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_relu_without_residual_forward(rng, training):
    ours, theirs = _layer_pair(bt.BatchNorm2d, torch.nn.BatchNorm2d, 3, torch.float64, rng,
                               activation="relu")
    ours.train(training)
    theirs.train(training)
    x = _tensor(rng.standard_normal((4, 3, 5, 5)) + 1.0, torch.float64)
    y = ours(x)
    want = torch.relu(theirs(x))
    assert (y >= 0).all()
    # relu is 1-Lipschitz: the difference of bn(x) bounds that of y; float64 bn vs torch's
    # float64 bn within torch_rtol of max |bn(x)| + the shift (< 10 here).
    rtol = torch_rtol(np.float64, x.numel() // 3 if training else 0)
    _close(y, _np(want), rtol * 10 * float(np.abs(_np(x)).max() + 1), "y")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last],
                         ids=["NCHW", "channels_last"])
def test_gradcheck_fused(seed, training, fmt):
    rng = np.random.default_rng(seed)
    layer = bt.BatchNorm2d(2, eps=1e-3, dtype=torch.float64, activation="relu").train(training)
    with torch.no_grad():
        layer.running_mean.copy_(torch.from_numpy(rng.uniform(-1, 1, 2)))
        layer.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2, 2)))
    rm, rv = layer.running_mean.clone(), layer.running_var.clone()
    x64 = rng.standard_normal((3, 2, 3, 2)) + 2.0
    w64, b64 = rng.uniform(0.5, 1.5, 2), rng.standard_normal(2)
    if training:
        bn_y = reference.batch_norm_forward(x64, w64, b64, eps=1e-3)[0]
    else:
        bn_y = reference.batch_norm_inference(x64, _np(rm), _np(rv), w64, b64, eps=1e-3)
    res64 = _away_from_zero_residual(rng, bn_y)
    x = _tensor(x64, torch.float64, fmt).requires_grad_(True)
    r = _tensor(res64, torch.float64, fmt).requires_grad_(True)
    w = torch.from_numpy(w64).requires_grad_(True)
    b = torch.from_numpy(b64).requires_grad_(True)

    def fn(x, w, b, r):
        return _call(layer, x, w, b, rm, rv, r)

    assert torch.autograd.gradcheck(fn, (x, w, b, r))


def _call(layer, x, w, b, rm, rv, r=None):
    """layer(x, r) with w, b as its parameters and fresh copies of rm, rv as its running
    statistics (training updates them in place), so gradcheck can call it repeatedly."""
    state = {"weight": w, "bias": b, "running_mean": rm.clone(), "running_var": rv.clone()}
    args = (x,) if r is None else (x, r)
    return torch.func.functional_call(layer, state, args)


# ---- Ghost batch norm and batch renormalization against the float64 reference ----------------

def _variant_case(rng, ours_cls, shape, fmt, dtype, **kw):
    C = shape[1]
    layer = ours_cls(C, dtype=dtype, **kw)
    gamma = rng.uniform(0.5, 2.0, C) * rng.choice([-1, 1], C)
    beta = rng.uniform(-1, 1, C)
    rm0, rv0 = rng.uniform(-1, 1, C), rng.uniform(0.5, 2.0, C)
    with torch.no_grad():
        layer.weight.copy_(_tensor(gamma, dtype))
        layer.bias.copy_(_tensor(beta, dtype))
        layer.running_mean.copy_(_tensor(rm0, dtype))
        layer.running_var.copy_(_tensor(rv0, dtype))
    # Parameters rounded to dtype: the reference takes the values the layer holds.
    gamma, beta, rm0, rv0 = (_np(t) for t in (layer.weight, layer.bias, layer.running_mean,
                                              layer.running_var))
    x64 = rng.standard_normal(shape) * rng.uniform(0.5, 3, C).reshape(
        (1, C) + (1,) * (len(shape) - 2)) + rng.uniform(-3, 3, C).reshape(
        (1, C) + (1,) * (len(shape) - 2))
    x64 = _np(_tensor(x64, dtype))
    return layer, gamma, beta, rm0, rv0, x64


@pytest.mark.parametrize("ours_cls,theirs_cls,shape,fmt", LAYOUT_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_ghost_matches_reference(rng, ours_cls, theirs_cls, shape, fmt, dtype):
    k = 2
    layer, gamma, beta, rm0, rv0, x64 = _variant_case(rng, ours_cls, shape, fmt, dtype,
                                                      virtual_batch_size=k)
    x = _tensor(x64, dtype, fmt).requires_grad_(True)
    y = layer(x)
    want_y, mean, invstd, want_rm, want_rv = reference.ghost_batch_norm_forward(
        x64, gamma, beta, k, running_mean=rm0, running_var=rv0)
    npdt = np.dtype(str(dtype).split(".")[1])
    n = x64.size // shape[1] // (shape[0] // k)  # values per channel in one group
    rtol = output_rtol(npdt, n)
    # Per group, y within output_rtol(dtype, n) of the elementwise scale (the widest group's).
    scale = max(elementwise_scale(x64[i:i + k], 1, mean[i // k], invstd[i // k], gamma, beta)
                for i in range(0, shape[0], k))
    _close(y, want_y, rtol * scale, "y")
    assert y.is_contiguous(memory_format=fmt)
    # Running statistics: float64 updates of the group averages, then stored in dtype.
    u = float(np.finfo(npdt).eps)
    _close(layer.running_mean, want_rm, (stat_rtol(n) + u) * np.abs(x64).max(), "rm")
    _close(layer.running_var, want_rv, (stat_rtol(n) + u) * (np.abs(x64).max() ** 2 + 2),
           "rv")
    dy = rng.standard_normal(shape)
    y.backward(_tensor(dy, dtype, fmt))
    want_dx, want_dg, want_db = reference.ghost_batch_norm_backward(dy, x64, mean, invstd,
                                                                     gamma, k)
    scales = [backward_scales(dy[i:i + k], x64[i:i + k], mean[i // k], invstd[i // k],
                              gamma, 1) for i in range(0, shape[0], k)]
    G = shape[0] // k
    _close(x.grad, want_dx, rtol * max(s[0] for s in scales), "dx")
    # dgamma, dbeta: G per-group sums, each within stat_rtol(n) of its scale, then G - 1
    # float64 additions; in dtype's final rounding.
    srtol = stat_rtol(n) + stat_rtol(G) + u
    _close(layer.weight.grad, want_dg, srtol * sum(s[1] for s in scales), "dgamma")
    _close(layer.bias.grad, want_db, srtol * sum(s[2] for s in scales), "dbeta")


@pytest.mark.parametrize("ours_cls,theirs_cls,shape,fmt", LAYOUT_PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_renorm_matches_reference(rng, ours_cls, theirs_cls, shape, fmt, dtype):
    layer, gamma, beta, rm0, rv0, x64 = _variant_case(rng, ours_cls, shape, fmt, dtype,
                                                      renorm=True, r_max=1.5, d_max=0.5,
                                                      momentum=0.3)
    x = _tensor(x64, dtype, fmt).requires_grad_(True)
    y = layer(x)
    want_y, mean, invstd, r, d, want_rm, want_rv = reference.batch_renorm_forward(
        x64, rm0, rv0, gamma, beta, r_max=1.5, d_max=0.5, momentum=0.3)
    npdt = np.dtype(str(dtype).split(".")[1])
    n = x64.size // shape[1]
    rtol = output_rtol(npdt, n)
    # y = xhat r gamma + (d gamma + beta): the elementwise scale with gamma * r, plus |d gamma|;
    # r and d carry the statistics' error (covered by output_rtol's stat_rtol(n)).
    scale = elementwise_scale(x64, 1, mean, invstd, gamma * r, np.abs(d * gamma) + np.abs(beta))
    _close(y, want_y, rtol * scale, "y")
    u = float(np.finfo(npdt).eps)
    _close(layer.running_mean, want_rm, (stat_rtol(n) + u) * np.abs(x64).max(), "rm")
    _close(layer.running_var, want_rv, (stat_rtol(n) + u) * (np.abs(x64).max() ** 2 + 2),
           "rv")
    dy = rng.standard_normal(shape)
    y.backward(_tensor(dy, dtype, fmt))
    want_dx, want_dg, want_db = reference.batch_renorm_backward(dy, x64, mean, invstd, r, d,
                                                                gamma)
    dx_scale, dg_scale, db_scale = backward_scales(dy, x64, mean, invstd, gamma * r, 1)
    _close(x.grad, want_dx, rtol * dx_scale, "dx")
    # dgamma = r sum(dy xhat) + d sum(dy): each sum within stat_rtol(n) of its scale.
    srtol = stat_rtol(n) + 2 * u
    _close(layer.weight.grad, want_dg,
           srtol * float(np.max(np.abs(r) * dg_scale + np.abs(d) * db_scale
                                + np.abs(want_dg))), "dgamma")
    _close(layer.bias.grad, want_db, srtol * db_scale, "dbeta")


@pytest.mark.parametrize("option", [{"virtual_batch_size": 2},
                                    {"renorm": True, "r_max": 1.5, "d_max": 0.5}],
                         ids=["ghost", "renorm"])
def test_gradcheck_variants(seed, option):
    rng = np.random.default_rng(seed)
    layer = bt.BatchNorm2d(2, eps=1e-3, dtype=torch.float64, **option)
    rm = torch.from_numpy(rng.uniform(-1, 1, 2))
    rv = torch.from_numpy(rng.uniform(0.5, 2, 2))
    if "renorm" in option:
        # The backward holds r and d constant (the paper's rule): gradcheck's finite
        # differences agree where both are clipped, so running statistics far from the
        # batch's: sigma_B / sigma < 1 / r_max and |mean_B - running_mean| / sigma > d_max.
        rm = torch.tensor([40.0, -40.0], dtype=torch.float64)
        rv = torch.tensor([400.0, 900.0], dtype=torch.float64)
    x = torch.from_numpy(rng.standard_normal((4, 2, 3, 2)) + 2.0).requires_grad_(True)
    w = torch.from_numpy(rng.uniform(0.5, 1.5, 2)).requires_grad_(True)
    b = torch.from_numpy(rng.standard_normal(2)).requires_grad_(True)

    def fn(x, w, b):
        return _call(layer, x, w, b, rm, rv)

    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("option", [{"virtual_batch_size": 2}, {"renorm": True}],
                         ids=["ghost", "renorm"])
def test_variants_eval_is_plain_batch_norm(rng, option):
    ours, theirs = _layer_pair(bt.BatchNorm2d, torch.nn.BatchNorm2d, 3, torch.float64, rng,
                               **option)
    ours.eval()
    theirs.eval()
    x = _tensor(rng.standard_normal((3, 3, 4, 4)), torch.float64)  # 2 does not divide 3
    y = ours(x)
    rtol = torch_rtol(np.float64)
    scale = elementwise_scale(_np(x), 1, _np(ours.running_mean),
                              1 / np.sqrt(_np(ours.running_var) + 1e-5), _np(ours.weight),
                              _np(ours.bias))
    _close(y, _np(theirs(x)), rtol * scale, "y")


def test_state_dict_keys_and_round_trip(rng):
    torch_keys = sorted(torch.nn.BatchNorm2d(3).state_dict())
    for kw in ({"activation": "relu"}, {"virtual_batch_size": 2}, {"renorm": True}):
        layer = bt.BatchNorm2d(3, **kw)
        layer(torch.from_numpy(rng.standard_normal((4, 3, 2, 2))).float())
        assert sorted(layer.state_dict()) == torch_keys
        other = torch.nn.BatchNorm2d(3)
        other.load_state_dict(layer.state_dict())
        back = bt.BatchNorm2d(3, **kw)
        back.load_state_dict(other.state_dict())
        for key, value in layer.state_dict().items():
            assert torch.equal(back.state_dict()[key], value), key
    assert "activation='relu'" in repr(bt.BatchNorm1d(3, activation="relu"))


# ---- Errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    ({"activation": "tanh"}, "activation"),
    ({"activation": "relu", "renorm": True}, "cannot be combined"),
    ({"activation": "relu", "virtual_batch_size": 2}, "cannot be combined"),
    ({"renorm": True, "virtual_batch_size": 2}, "at most one"),
    ({"renorm": True, "track_running_stats": False}, "track_running_stats"),
    ({"renorm": True, "r_max": 0.5}, "r_max"),
    ({"renorm": True, "d_max": -1.0}, "d_max"),
    ({"virtual_batch_size": 0}, "virtual_batch_size"),
])
def test_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        bt.BatchNorm2d(3, **kw)


def test_bad_forward_arguments_change_nothing(rng):
    x = torch.from_numpy(rng.standard_normal((4, 3, 2, 2))).float()
    cases = [
        (bt.BatchNorm2d(3, activation="relu"), (x, x[:2]), ValueError, "shape"),
        (bt.BatchNorm2d(3), (x, x.double()), ValueError, "dtype"),
        (bt.BatchNorm2d(3, virtual_batch_size=3), (x,), ValueError, "does not divide"),
        (bt.BatchNorm2d(3, virtual_batch_size=2), (x, x.clone()), ValueError, "residual"),
        (bt.BatchNorm2d(3, renorm=True), (x, x.clone()), ValueError, "residual"),
    ]
    for layer, args, error, match in cases:
        before = {k: v.clone() for k, v in layer.state_dict().items()}
        with pytest.raises(error, match=match):
            layer(*args)
        for key, value in layer.state_dict().items():
            assert torch.equal(value, before[key]), key


# ---- Half precision, and the PyTorch fallback ---------------------------------------------------

@pytest.mark.parametrize("dtype,unit", [(torch.float16, 2.0 ** -11), (torch.bfloat16, 2.0 ** -8)],
                         ids=["f16", "bf16"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fused_half_precision(rng, dtype, unit, training):
    """float16 / bfloat16 input with float32 parameters: the half type's unfused sequence
    (bn(x) rounded to it, the residual added in float32 and rounded, the ReLU)."""
    C, shape = 3, (4, 3, 5, 5)
    layer = bt.BatchNorm2d(C, activation="relu").train(training)
    gamma = rng.uniform(0.5, 2.0, C) * rng.choice([-1, 1], C)
    beta = rng.uniform(-1, 1, C)
    with torch.no_grad():
        layer.weight.copy_(_tensor(gamma, torch.float32))
        layer.bias.copy_(_tensor(beta, torch.float32))
        layer.running_mean.copy_(_tensor(rng.uniform(-1, 1, C), torch.float32))
        layer.running_var.copy_(_tensor(rng.uniform(0.5, 2, C), torch.float32))
    gamma, beta = _np(layer.weight), _np(layer.bias)
    rm0, rv0 = _np(layer.running_mean), _np(layer.running_var)
    x64 = _np(_tensor(rng.standard_normal(shape) + 1.0, dtype))  # the values x holds
    if training:
        bn_y, mean, invstd, want_rm, want_rv = reference.batch_norm_forward(
            x64, gamma, beta, running_mean=rm0, running_var=rv0)
    else:
        bn_y = reference.batch_norm_inference(x64, rm0, rv0, gamma, beta)
        mean, invstd = rm0, 1.0 / np.sqrt(rv0 + 1e-5)
    # Margin 0.5 around the kink, far above the half precision error of y (< 0.05 here).
    res64 = _np(_tensor(_away_from_zero_residual(rng, bn_y), dtype))
    want = np.maximum(bn_y + res64, 0.0)
    x = _tensor(x64, dtype).requires_grad_(True)
    r = _tensor(res64, dtype).requires_grad_(True)
    y = layer(x, r)
    assert y.dtype == dtype
    n = x64.size // C if training else 0
    u32 = float(np.finfo(np.float32).eps) / 2
    # The unfused sequence in the half type: bn(x) in float32 (output_rtol(float32, n) of its
    # scale) rounded to dtype (unit of |bn(x)|), the residual added in float32 (one float32
    # rounding) and the sum rounded to dtype (unit of the result).
    y_scale = elementwise_scale(x64, 1, mean, invstd, gamma, beta) + np.abs(res64).max()
    _close(y, want, (output_rtol(np.float32, n) + u32) * y_scale
           + unit * (np.abs(want).max() + np.abs(bn_y).max()), "y")
    dy = _np(_tensor(rng.standard_normal(shape), dtype))
    y.backward(_tensor(dy, dtype))
    g = dy * (want > 0)
    if training:
        want_dx, want_dg, want_db = reference.batch_norm_backward(g, x64, mean, invstd, gamma)
        dx_scale, dg_scale, db_scale = backward_scales(g, x64, mean, invstd, gamma, 1)
    else:
        want_dx = g * gamma.reshape(1, C, 1, 1) * invstd.reshape(1, C, 1, 1)
        xhat = (x64 - mean.reshape(1, C, 1, 1)) * invstd.reshape(1, C, 1, 1)
        want_dg, want_db = (g * xhat).sum(axis=(0, 2, 3)), g.sum(axis=(0, 2, 3))
        dx_scale = float(np.abs(want_dx).max())
        _, dg_scale, db_scale = backward_scales(g, x64, mean, invstd, gamma, 1)
    # dx in float32 (output_rtol(float32, n) of its scale), then rounded to dtype.
    _close(x.grad, want_dx, (output_rtol(np.float32, n) + unit) * dx_scale, "dx")
    _close(r.grad, g, 0.0, "dresidual")  # dy * mask: exact in dtype
    # float64 sums of float32 products (one rounding each), stored as float32.
    srtol = stat_rtol(n or x64.size // C) + 2 * u32
    _close(layer.weight.grad, want_dg, srtol * dg_scale, "dgamma")
    _close(layer.bias.grad, want_db, srtol * db_scale, "dbeta")
    if training:  # float64 updates stored as float32
        _close(layer.running_mean, want_rm, (stat_rtol(n) + u32) * np.abs(x64).max(), "rm")
        _close(layer.running_var, want_rv, (stat_rtol(n) + u32) * (np.abs(x64).max() ** 2 + 2),
               "rv")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fallback_is_the_same_math(rng, monkeypatch, training):
    """What non-CPU tensors run (torch's batch norm, + residual, relu), forced on the CPU by
    declaring the input unserved, against the fused kernels."""
    shape, C = (4, 3, 5, 5), 3
    fused, fallback = (bt.BatchNorm2d(C, dtype=torch.float64, activation="relu")
                       for _ in range(2))
    fused.train(training)
    fallback.train(training)
    with torch.no_grad():
        fused.running_mean.copy_(_tensor(rng.uniform(-1, 1, C), torch.float64))
        fused.weight.copy_(_tensor(rng.uniform(0.5, 2, C), torch.float64))
    fallback.load_state_dict(fused.state_dict())
    x64 = rng.standard_normal(shape) + 1.0
    gamma, beta = _np(fused.weight), _np(fused.bias)
    rm0, rv0 = _np(fused.running_mean), _np(fused.running_var)
    if training:
        bn_y, mean, invstd, _, _ = reference.batch_norm_forward(x64, gamma, beta)
    else:
        bn_y = reference.batch_norm_inference(x64, rm0, rv0, gamma, beta)
        mean, invstd = rm0, 1.0 / np.sqrt(rv0 + 1e-5)
    res64 = _away_from_zero_residual(rng, bn_y)
    xs = [_tensor(x64, torch.float64).requires_grad_(True) for _ in range(2)]
    rs = [_tensor(res64, torch.float64).requires_grad_(True) for _ in range(2)]
    y_fused = fused(xs[0], rs[0])
    monkeypatch.setattr(bt._policy, "served", lambda *args: False)  # the kernels decline
    y_fallback = fallback(xs[1], rs[1])
    assert y_fallback.grad_fn.name() == "ReluBackward0"  # really torch's operations
    n = x64.size // C if training else 0
    rtol = torch_rtol(np.float64, n)
    y_scale = elementwise_scale(x64, 1, mean, invstd, gamma, beta) + np.abs(res64).max()
    _close(y_fused, _np(y_fallback), rtol * y_scale, "y")
    dy = rng.standard_normal(shape)
    y_fused.backward(_tensor(dy, torch.float64))
    y_fallback.backward(_tensor(dy, torch.float64))
    g = dy * (bn_y + res64 > 0)
    dx_scale, dg_scale, db_scale = backward_scales(g, x64, mean, invstd, gamma, 1)
    _close(xs[0].grad, _np(xs[1].grad), rtol * dx_scale, "dx")
    _close(rs[0].grad, _np(rs[1].grad), 0.0, "dresidual")
    _close(fused.weight.grad, _np(fallback.weight.grad), rtol * dg_scale, "dgamma")
    _close(fused.bias.grad, _np(fallback.bias.grad), rtol * db_scale, "dbeta")
    _close(fused.running_mean, _np(fallback.running_mean), rtol * np.abs(x64).max(), "rm")


def test_variants_refuse_unserved_input(rng, monkeypatch):
    monkeypatch.setattr(bt._policy, "served", lambda *args: False)  # the kernels decline
    x = _tensor(rng.standard_normal((4, 3, 2, 2)), torch.float32)
    for kw in ({"virtual_batch_size": 2}, {"renorm": True}):
        with pytest.raises(NotImplementedError, match="CPU kernels only"):
            bt.BatchNorm2d(3, **kw)(x)


def test_convert_keeps_plain_layers(rng):
    model = bt.convert(torch.nn.Sequential(torch.nn.BatchNorm2d(3)))
    layer = model[0]
    assert layer.activation is None and layer.virtual_batch_size is None and not layer.renorm


@pytest.mark.parametrize("kw", [{"activation": "relu"}, {"virtual_batch_size": 2},
                                {"renorm": True}], ids=["relu", "ghost", "renorm"])
def test_bits_do_not_depend_on_threads(rng, kw):
    x64 = rng.standard_normal((8, 3, 6, 6)) + 1.0
    res64 = rng.standard_normal(x64.shape)
    dy = _tensor(rng.standard_normal(x64.shape), torch.float32)
    results = []
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            layer = bt.BatchNorm2d(3, **kw)
            x = _tensor(x64, torch.float32).requires_grad_(True)
            args = (x,)
            if "activation" in kw:
                args = (x, _tensor(res64, torch.float32).requires_grad_(True))
            y = layer(*args)
            y.backward(dy)
            results.append([y.detach().clone(), x.grad, layer.weight.grad, layer.bias.grad,
                            layer.running_mean.clone(), layer.running_var.clone()]
                           + [a.grad for a in args[1:]])
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert a.numpy().tobytes() == b.numpy().tobytes()


def test_layer_pickled_without_options_still_runs(rng):
    layer = bt.BatchNorm1d(3)
    for name in ("activation", "virtual_batch_size", "renorm", "r_max", "d_max"):
        delattr(layer, name)  # as a layer saved before the options existed
    x = _tensor(rng.standard_normal((5, 3)), torch.float64)
    ref = torch.nn.BatchNorm1d(3, dtype=torch.float64)
    # torch's float64 layer and bnfast's: torch_rtol of the elementwise scale.
    xn = _np(x)
    scale = elementwise_scale(xn, 1, xn.mean(0), 1 / np.sqrt(xn.var(0) + 1e-5))
    _close(layer.double()(x), _np(ref(x)), torch_rtol(np.float64, 5) * scale, "y")
    assert "activation" not in repr(layer)
