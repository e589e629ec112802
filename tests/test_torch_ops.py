"""The torch.ops.bnfast operators: torch.library.opcheck over layouts and dtypes, the same
bits as the eager path, the hand-off to aten inside them, fake strides, vmap rules and the
double backward of the backward operator."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnfast.torch")
from _torch_helpers import kernels_only  # noqa: E402,F401  (autouse: bnfast's kernels only)

ops = torch.ops.bnfast
FAST_CHECKS = ("test_schema", "test_autograd_registration", "test_faketensor")

# (id, shape, memory format)
LAYOUTS = [("NC", (8, 3), "contiguous_format"), ("NCL", (4, 3, 5), "contiguous_format"),
           ("NCHW", (4, 3, 5, 2), "contiguous_format"),
           ("channels_last", (4, 3, 5, 2), "channels_last"),
           ("NCDHW", (2, 3, 2, 3, 2), "contiguous_format"),
           ("channels_last_3d", (2, 3, 2, 3, 2), "channels_last_3d")]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def _inputs(rng, shape, fmt, dtype, grad=True):
    """x (offset per-channel data), weight, bias, running_mean, running_var: parameters in
    float32 for half-precision input, as PyTorch allows, else in x's dtype."""
    C = shape[1]
    pdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    bshape = (1, C) + (1,) * (len(shape) - 2)
    x = rng.standard_normal(shape) * rng.uniform(0.5, 2, C).reshape(bshape) \
        + rng.uniform(-3, 3, C).reshape(bshape)
    x = torch.from_numpy(x).to(dtype).contiguous(memory_format=getattr(torch, fmt))
    w, b = (torch.from_numpy(v).to(pdtype) for v in (rng.uniform(0.5, 2, C),
                                                      rng.standard_normal(C)))
    rm = torch.from_numpy(rng.uniform(-1, 1, C)).to(pdtype)
    rv = torch.from_numpy(rng.uniform(0.5, 2, C)).to(pdtype)
    if grad:
        x, w, b = (t.requires_grad_() for t in (x, w, b))
    return x, w, b, rm, rv


def _checks(layout, dtype):
    # The full set (with an AOT compile per call) where it matters most; the cheap ones
    # everywhere else.
    full = dtype == torch.float32 and layout in ("NCHW", "channels_last")
    return "ALL" if full else FAST_CHECKS


def _opcheck(op, args, utils):
    kw = {} if utils == "ALL" else {"test_utils": utils}
    result = torch.library.opcheck(op, args, **kw)
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout, shape, fmt", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_opcheck_plain_operators(rng, layout, shape, fmt, dtype):
    x, w, b, rm, rv = _inputs(rng, shape, fmt, dtype)
    utils = _checks(layout, dtype)
    _opcheck(ops.batch_norm_train.default, (x, w, b, rm, rv, None, 0.1, 1e-5, False), utils)
    _opcheck(ops.batch_norm_infer.default, (x, rm, rv, w, b, None, 1e-5, False), utils)
    with torch.no_grad():
        _, mean, invstd, _, _ = ops.batch_norm_train(x, w, b, rm, rv, None, 0.1, 1e-5, False)
    dy = torch.randn_like(x)
    for training in (True, False):
        _opcheck(ops.batch_norm_backward.default,
                 (dy, x, w, mean, invstd, None, None, None, training, 0, 1e-5,
                  [True, True, True, False]), utils)


@pytest.mark.parametrize("layout, shape, fmt", [LAYOUTS[0], LAYOUTS[3]], ids=["NC", "NHWC"])
def test_opcheck_without_parameters_or_statistics(rng, layout, shape, fmt):
    x, _, _, _, _ = _inputs(rng, shape, fmt, torch.float64)
    _opcheck(ops.batch_norm_train.default, (x, None, None, None, None, None, 0.1, 1e-5, False),
             FAST_CHECKS)
    with torch.no_grad():
        _, mean, invstd, rm, rv = ops.batch_norm_train(x, None, None, None, None, None, 0.1,
                                                       1e-5, False)
    assert rm.numel() == 0 and rv.numel() == 0  # no running statistics: empty placeholders
    _opcheck(ops.batch_norm_backward.default,
             (torch.randn_like(x), x, None, mean, invstd, None, None, None, True, 0, 1e-5,
              [True, False, False, False]), FAST_CHECKS)


@pytest.mark.parametrize("fmt", ["contiguous_format", "channels_last"])
def test_opcheck_option_operators(rng, fmt):
    x, w, b, rm, rv = _inputs(rng, (4, 3, 5, 2), fmt, torch.float64)
    res = torch.randn_like(x).requires_grad_()
    for relu in (False, True):
        _opcheck(ops.batch_norm_train.default, (x, w, b, rm, rv, res, 0.1, 1e-5, relu),
                 FAST_CHECKS)
        _opcheck(ops.batch_norm_infer.default, (x, rm, rv, w, b, res, 1e-5, relu),
                 FAST_CHECKS)
    _opcheck(ops.ghost_batch_norm_train.default, (x, w, b, rm, rv, 2, 0.1, 1e-5), FAST_CHECKS)
    _opcheck(ops.batch_renorm_train.default, (x, w, b, rm, rv, 1.5, 0.5, 0.1, 1e-5),
             FAST_CHECKS)
    with torch.no_grad():
        y, mean, invstd, _, _ = ops.batch_norm_train(x, w, b, rm, rv, res, 0.1, 1e-5, True)
        _, gm, gi, _, _ = ops.ghost_batch_norm_train(x, w, b, rm, rv, 2, 0.1, 1e-5)
        _, rmean, rinv, r, d, _, _ = ops.batch_renorm_train(x, w, b, rm, rv, 1.5, 0.5, 0.1,
                                                            1e-5)
    dy = torch.randn_like(x)
    mask = [True, True, True, True]
    for args in ((dy, x, w, mean, invstd, y, None, None, True, 0, 1e-5, mask),
                 (dy, x, w, gm, gi, None, None, None, True, 2, 1e-5, mask[:3] + [False]),
                 (dy, x, w, rmean, rinv, None, r, d, True, 0, 1e-5, mask[:3] + [False])):
        _opcheck(ops.batch_norm_backward.default, args, FAST_CHECKS)


def test_opcheck_store_running_stats(rng):
    rm, rv = torch.zeros(3), torch.ones(3)
    new = torch.from_numpy(rng.standard_normal((2, 3))).float()
    _opcheck(ops.store_running_stats.default, (rm, rv, new[0], new[1]), "ALL")
    ops.store_running_stats(rm, rv, new[0], new[1])  # opcheck works on copies
    assert torch.equal(rm, new[0]) and torch.equal(rv, new[1])


def _eager_step(layer, x, dy):
    x = x.detach().clone().requires_grad_()
    y = layer(x)
    y.backward(dy)
    return y.detach(), x.grad, layer.weight.grad, layer.bias.grad


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout, shape, fmt", LAYOUTS, ids=[c[0] for c in LAYOUTS])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_operators_give_the_eager_paths_bits(rng, layout, shape, fmt, dtype, training):
    """The operators and the eager path run the same kernels on the same arrays: equal bits
    for y, the running statistics and every gradient."""
    x, w, b, rm, rv = _inputs(rng, shape, fmt, dtype, grad=False)
    dy = torch.randn(shape, dtype=torch.float64).to(dtype).contiguous(
        memory_format=getattr(torch, fmt))
    cls = {2: bt.BatchNorm1d, 3: bt.BatchNorm1d, 4: bt.BatchNorm2d, 5: bt.BatchNorm3d}
    layer = cls[len(shape)](shape[1], dtype=w.dtype).train(training)
    with torch.no_grad():
        for p, v in ((layer.weight, w), (layer.bias, b), (layer.running_mean, rm),
                     (layer.running_var, rv)):
            p.copy_(v)
    y, dx, dw, db = _eager_step(layer, x, dy)
    xo, wo, bo = (t.clone().requires_grad_() for t in (x, w, b))
    rmo, rvo = rm.clone(), rv.clone()
    if training:
        yo, _, _, new_rm, new_rv = ops.batch_norm_train(xo, wo, bo, rmo, rvo, None, 0.1, 1e-5,
                                                        False)
        assert torch.equal(new_rm, layer.running_mean) and torch.equal(new_rv,
                                                                       layer.running_var)
        assert torch.equal(rmo, rm) and torch.equal(rvo, rv)  # the inputs are not modified
    else:
        yo = ops.batch_norm_infer(xo, rmo, rvo, wo, bo, None, 1e-5, False)
    yo.backward(dy)
    assert yo.dtype == dtype and yo.stride() == y.stride()
    for name, got, want in (("y", yo, y), ("dx", xo.grad, dx), ("dweight", wo.grad, dw),
                            ("dbias", bo.grad, db)):
        assert torch.equal(got, want), name


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fmt", ["contiguous_format", "channels_last"])
def test_handoff_inside_the_operators_is_aten(rng, training, fmt):
    """With the hand-off on, a small call inside the operators is aten's batch norm: its
    bits, forward and (in training mode) backward, with the operator in the graph. The
    eval-mode backward stays on the kernels (it needs no statistics)."""
    bt.set_torch_handoff(True)  # the kernels_only fixture restores it
    x, w, b, rm, rv = _inputs(rng, (4, 3, 5, 2), fmt, torch.float32)
    assert bt._policy.torch_is_faster(x, training)
    dy = torch.randn_like(x)
    xo, wo, bo = (t.detach().clone().requires_grad_() for t in (x, w, b))
    rm2, rv2 = rm.clone(), rv.clone()
    if training:
        yo, mean, invstd, new_rm, new_rv = ops.batch_norm_train(xo, wo, bo, rm, rv, None, 0.1,
                                                                1e-5, False)
        assert mean.dtype == torch.float64  # the operator's contract, whoever computes
    else:
        yo = ops.batch_norm_infer(xo, rm, rv, wo, bo, None, 1e-5, False)
    yo.backward(dy)
    xa, wa, ba = (t.detach().clone().requires_grad_() for t in (x, w, b))
    ya = torch.ops.aten.native_batch_norm(xa, wa, ba, rm2, rv2, training, 0.1, 1e-5)[0]
    ya.backward(dy)
    assert torch.equal(yo, ya)
    if training:
        assert torch.equal(new_rm, rm2) and torch.equal(new_rv, rv2)
        for name, got, want in (("dx", xo.grad, xa.grad), ("dw", wo.grad, wa.grad),
                                ("db", bo.grad, ba.grad)):
            assert torch.equal(got, want), name
        return
    # Eval mode: dx = dy * weight * invstd, dw = sum(dy * xhat), db = sum(dy), each side
    # within a few float32 roundings of the exact value: 4 ulps of the product's magnitude for
    # dx, and two float32 sums of 40 terms (sum_tol) for dw and db.
    from _helpers import sum_tol, unit_roundoff

    invstd = 1 / torch.sqrt(rv.double() + 1e-5)
    xhat = (x.detach().double() - rm.double().view(1, 3, 1, 1)) * invstd.view(1, 3, 1, 1)
    scale = (dy.double() * (w.detach().double() * invstd).view(1, 3, 1, 1)).abs().max()
    u = unit_roundoff(np.float32)
    torch.testing.assert_close(xo.grad, xa.grad, rtol=0, atol=float(8 * u * scale))
    dims = (0, 2, 3)
    for got, want, terms in ((wo.grad, wa.grad, dy.double() * xhat),
                             (bo.grad, ba.grad, dy.double())):
        tol = sum_tol(40, float(terms.abs().sum(dims).max()), np.float32) + 2 * u * float(
            terms.sum(dims).abs().max())
        torch.testing.assert_close(got, want, rtol=0, atol=tol)


@pytest.mark.parametrize("layout, shape, fmt", LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_fake_outputs_have_the_real_strides(rng, layout, shape, fmt):
    from torch._subclasses.fake_tensor import FakeTensorMode

    x, w, b, rm, rv = _inputs(rng, shape, fmt, torch.float32, grad=False)
    real = ops.batch_norm_train(x, w, b, rm, rv, None, 0.1, 1e-5, False)
    with FakeTensorMode() as mode:
        fx, fw, fb, frm, frv = (mode.from_tensor(t) for t in (x, w, b, rm, rv))
        fake = ops.batch_norm_train(fx, fw, fb, frm, frv, None, 0.1, 1e-5, False)
    for r, f in zip(real, fake):
        assert (f.shape, f.stride(), f.dtype) == (r.shape, r.stride(), r.dtype)
    assert real[0].stride() == x.stride()  # channels_last in, channels_last out


def _stack(fn, *batched):
    return [torch.stack(outs) for outs in zip(*(fn(*args) for args in zip(*batched)))]


def test_vmap_rules_match_a_loop(rng):
    """vmap over a batch of problems is the loop over them: the vmapped dimension joins the
    channels, whose statistics are independent."""
    B, shape = 3, (6, 2, 4)
    xs = torch.from_numpy(rng.standard_normal((B,) + shape) * 2 + 1)
    ws = torch.from_numpy(rng.uniform(0.5, 2, (B, 2)))
    b = torch.from_numpy(rng.standard_normal(2))
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    dys = torch.from_numpy(rng.standard_normal((B,) + shape))

    def train(x, w):
        return ops.batch_norm_train(x, w, b, rm, rv, None, 0.1, 1e-5, False)

    got = torch.func.vmap(train, in_dims=(0, 0))(xs, ws)
    want = _stack(train, xs, ws)
    for g, t in zip(got, want):
        torch.testing.assert_close(g, t, rtol=0, atol=0)

    def ghost(x, w):
        return ops.ghost_batch_norm_train(x, w, b, rm, rv, 2, 0.1, 1e-5)[:3]

    for g, t in zip(torch.func.vmap(ghost)(xs, ws), _stack(ghost, xs, ws)):
        torch.testing.assert_close(g, t, rtol=0, atol=0)

    def renorm(x):
        return ops.batch_renorm_train(x, None, b, rm, rv, 1.5, 0.5, 0.1, 1e-5)[:5]

    for g, t in zip(torch.func.vmap(renorm)(xs), _stack(lambda x: renorm(x), xs)):
        torch.testing.assert_close(g, t, rtol=0, atol=0)

    def infer(x, w):
        return (ops.batch_norm_infer(x, rm, rv, w, b, None, 1e-5, False),)

    torch.testing.assert_close(torch.func.vmap(infer)(xs, ws)[0], _stack(infer, xs, ws)[0],
                               rtol=0, atol=0)
    _, means, invstds, _, _ = got

    def backward(dy, x, w, mean, invstd):
        return ops.batch_norm_backward(dy, x, w, mean, invstd, None, None, None, True, 0, 1e-5,
                                       [True, True, True, False])[:3]

    args = (dys, xs, ws, means, invstds)
    for g, t in zip(torch.func.vmap(backward)(*args), _stack(backward, *args)):
        torch.testing.assert_close(g, t, rtol=0, atol=0)


def test_vmap_refuses_unbatched_running_statistics(rng):
    x = torch.from_numpy(rng.standard_normal((3, 6, 2)))
    rm, rv = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)

    def step(x):
        y, _, _, new_rm, new_rv = ops.batch_norm_train(x, None, None, rm, rv, None, 0.1, 1e-5,
                                                       False)
        ops.store_running_stats(rm, rv, new_rm, new_rv)
        return y

    with pytest.raises(RuntimeError, match="were not batched"):
        torch.func.vmap(step)(x)
    assert torch.equal(rm, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradgradcheck_through_the_operators(rng, training):
    """The backward operator's own derivative (the formula's vector-Jacobian product) against
    finite differences, in float64."""
    x, w, b, rm, rv = _inputs(rng, (5, 2, 3), "contiguous_format", torch.float64)

    def fn(x, w, b):
        if training:
            return ops.batch_norm_train(x, w, b, None, None, None, 0.1, 1e-5, False)[0]
        return ops.batch_norm_infer(x, rm, rv, w, b, None, 1e-5, False)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_meta_tensors_give_shapes_only():
    x = torch.empty(4, 3, 5, 2, device="meta").contiguous(memory_format=torch.channels_last)
    w = torch.empty(3, device="meta")
    y, mean, invstd, rm, rv = ops.batch_norm_train(x, w, w, w, w, None, 0.1, 1e-5, False)
    assert y.device.type == "meta" and y.stride() == x.stride()
    assert mean.shape == (3,) and rm.shape == (3,)
    g = ops.batch_norm_backward(y, x, w, mean, invstd, None, None, None, True, 0, 1e-5,
                                [True, False, True, False])
    assert g[0].shape == x.shape and g[1].numel() == 0 and g[2].shape == (3,)
    assert np.prod(g[3].shape) == 0
