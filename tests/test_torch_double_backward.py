"""Second and higher-order gradients through bnfast.torch: against PyTorch's own batch norm
double backward, by finite differences (gradgradcheck), the gradient-penalty step of a small
converted network, and the raise where no formula exists (SyncBatchNorm)."""
import copy

import numpy as np
import pytest

from _helpers import gamma_n, run_python

torch = pytest.importorskip("torch")
bt = pytest.importorskip("bnfast.torch")
from _torch_helpers import kernels_only  # noqa: E402,F401  (autouse: bnfast's kernels only)
F = torch.nn.functional

# (id, shape, memory format)
SHAPES = [
    ("NC", (12, 3), torch.contiguous_format),
    ("NCL", (4, 3, 5), torch.contiguous_format),
    ("NCHW", (3, 2, 3, 4), torch.contiguous_format),
    ("channels_last", (3, 2, 3, 4), torch.channels_last),
]
SHAPE_PARAMS = [pytest.param(shape, fmt, id=name) for name, shape, fmt in SHAPES]


def _t(rng, shape, fmt=torch.contiguous_format, scale=1.0, offset=0.0):
    a = rng.standard_normal(shape) * scale + offset
    return torch.from_numpy(a).contiguous(memory_format=fmt)


def second_order_tol(m, *factors):
    """Bound on |bnfast - PyTorch| for one entry of a second-order product of batch norm,
    both in float64: it is a sum of at most 16 m terms (the double backward has under 16 term
    kinds, each summed over the m values of a channel), each a product of the given factors'
    maxima (|w|, invstd^2, |dy|, |v|, max(1, |xhat|)^3 at most), computed with fewer than
    16 m roundings on either side (Higham, Lemma 3.1, eq. 4.4): 2 gamma_{16m} 16 m prod."""
    magnitude = 16.0 * m
    for f in factors:
        magnitude *= float(f)
    return 2.0 * gamma_n(16 * m) * magnitude


def _composite_batch_norm(x, running_mean, running_var, weight, bias, training, momentum,
                          eps):
    """Batch norm as elementary float64 operations, differentiated by autograd alone: the
    independent reference for every order."""
    dims = [0] + list(range(2, x.dim()))
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    if training:
        mean = x.mean(dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dims, keepdim=True)
    else:
        mean, var = running_mean.reshape(shape), running_var.reshape(shape)
    y = (x - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.reshape(shape)
    return y if bias is None else y + bias.reshape(shape)


def _double_backward(fn, x, w, b, dy, v_x, v_w, v_b):
    """The vector-Jacobian product of (dx, dw, db) with (v_x, v_w, v_b), with respect to
    (x, w, dy): what a gradient penalty or a Hessian-vector product asks of batch norm."""
    y = fn(x, w, b)
    gx, gw, gb = torch.autograd.grad(y, (x, w, b), dy, create_graph=True)
    loss = (gx * v_x).sum() + (gw * v_w).sum() + (gb * v_b).sum()
    return torch.autograd.grad(loss, (x, w, dy), allow_unused=True)


@pytest.mark.parametrize("shape,fmt", SHAPE_PARAMS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_double_backward_matches_pytorch(rng, shape, fmt, training):
    C = shape[1]
    m = int(np.prod(shape)) // C
    x0 = _t(rng, shape, fmt, scale=rng.uniform(0.5, 2.0), offset=rng.uniform(-3, 3))
    w0 = torch.from_numpy(rng.uniform(0.5, 2.0, C) * rng.choice([-1, 1], C))
    b0 = torch.from_numpy(rng.standard_normal(C))
    dy0 = _t(rng, shape, fmt)
    v = [_t(rng, shape, fmt), torch.from_numpy(rng.standard_normal(C)),
         torch.from_numpy(rng.standard_normal(C))]
    rm0 = torch.from_numpy(rng.uniform(-1, 1, C))
    rv0 = torch.from_numpy(rng.uniform(0.5, 2, C))
    results = []
    for bn in (bt.batch_norm, F.batch_norm, _composite_batch_norm):
        def fn(x, w, b, bn=bn):
            return bn(x, rm0.clone(), rv0.clone(), w, b, training, 0.1, 1e-5)
        x, w, b, dy = (t.clone().requires_grad_() for t in (x0, w0, b0, dy0))
        results.append(_double_backward(fn, x, w, b, dy, *v))
    dims = [0] + list(range(2, len(shape)))
    if training:
        var = x0.var(dims, unbiased=False)
        invstd = 1 / torch.sqrt(var + 1e-5)
        xhat = (x0 - x0.mean(dims, keepdim=True)) / torch.sqrt(
            x0.var(dims, unbiased=False, keepdim=True) + 1e-5)
    else:
        invstd = 1 / torch.sqrt(rv0 + 1e-5)
        shape_c = [1, C] + [1] * (len(shape) - 2)
        xhat = (x0 - rm0.reshape(shape_c)) * invstd.reshape(shape_c)
    tol = second_order_tol(m, w0.abs().max(), invstd.max() ** 2, dy0.abs().max(),
                           max(float(t.abs().max()) for t in v),
                           max(1.0, float(xhat.abs().max())) ** 3)
    for name, ours, theirs, composite in zip(("x", "weight", "dy"), *results):
        if composite is not None and theirs is not None:  # the two references agree
            np.testing.assert_allclose(composite.numpy(), theirs.numpy(), rtol=0, atol=tol)
        assert (ours is None) == (theirs is None) or float(
            (ours if ours is not None else theirs).abs().max()) == 0.0, name
        if ours is not None and theirs is not None:
            np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=tol,
                                       err_msg=f"d/d{name} of the gradient")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=["f32", "f16", "bf16"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_double_backward_in_lower_precision(rng, dtype, training):
    """float32 and half input: the second order is computed in float64 from the input's
    values and rounded once to its dtype; against the float64 composite of the same values,
    the difference is that rounding plus the float64 bound."""
    shape, C = (6, 3, 2, 2), 3
    m = 6 * 2 * 2
    x0, dy0, vx = (_t(rng, shape, offset=o).to(dtype) for o in (1.0, 0.0, 0.0))
    w0 = torch.from_numpy(rng.uniform(0.5, 2, C)).to(dtype)
    b0 = torch.from_numpy(rng.standard_normal(C)).to(dtype)
    vw, vb = (torch.from_numpy(rng.standard_normal(C)).to(dtype) for _ in range(2))
    rm, rv = torch.zeros(C, dtype=dtype), torch.ones(C, dtype=dtype)
    got = []
    for bn, cast in ((bt.batch_norm, dtype), (_composite_batch_norm, torch.float64)):
        def fn(x, w, b, bn=bn, cast=cast):
            return bn(x, rm.to(cast), rv.to(cast), w, b, training, 0.1, 1e-5)
        x, w, b, dy = (t.to(cast).clone().requires_grad_() for t in (x0, w0, b0, dy0))
        got.append(_double_backward(fn, x, w, b, dy, vx.to(cast), vw.to(cast), vb.to(cast)))
    u = float(torch.finfo(dtype).eps) / 2
    dims = [0, 2, 3]
    x64 = x0.double()
    invstd = 1 / torch.sqrt(x64.var(dims, unbiased=False) + 1e-5) if training else \
        torch.full((C,), 1 / (1 + 1e-5) ** 0.5, dtype=torch.float64)
    xhat_max = float(((x64 - x64.mean(dims, keepdim=True)) * invstd.reshape(1, C, 1, 1))
                     .abs().max()) if training else float((x64.abs().max()) * invstd.max())
    tol64 = second_order_tol(m, w0.double().abs().max(), invstd.max() ** 2,
                             dy0.double().abs().max(),
                             max(float(t.double().abs().max()) for t in (vx, vw, vb)),
                             max(1.0, xhat_max) ** 3)
    for name, ours, want in zip(("x", "weight", "dy"), *got):
        if want is None:
            assert ours is None or float(ours.abs().max()) == 0.0, name
            continue
        assert ours.dtype == dtype, name
        np.testing.assert_allclose(ours.double().numpy(), want.numpy(), rtol=u,
                                   atol=tol64, err_msg=f"d/d{name} of the gradient")


@pytest.mark.parametrize("shape,fmt", SHAPE_PARAMS)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_gradgradcheck(rng, shape, fmt, training, affine):
    C = shape[1]
    x = _t(rng, shape, fmt, offset=1.0).requires_grad_()
    rm, rv = torch.from_numpy(rng.uniform(-1, 1, C)), torch.from_numpy(rng.uniform(0.5, 2, C))
    inputs = [x]
    if affine:
        inputs += [torch.from_numpy(rng.uniform(0.5, 2, C)).requires_grad_(),
                   torch.from_numpy(rng.standard_normal(C)).requires_grad_()]

    def fn(x, w=None, b=None):
        return bt.batch_norm(x, rm.clone(), rv.clone(), w, b, training, 0.1, 1e-5)

    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_third_order_matches_the_composite(rng, training):
    """The gradient of the second-order product: the backward's derivative is itself
    recorded, so every order is right. (PyTorch's own batch norm is not the reference
    here: in training mode its third order disagrees with both this composite and finite
    differences, by up to 8x on this case, in torch 2.13.)"""
    x0 = _t(rng, (5, 3, 2, 2), offset=2.0)
    w0 = torch.from_numpy(rng.uniform(0.5, 2.0, 3))
    got = []
    for bn in (bt.batch_norm, _composite_batch_norm):
        x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
        rm, rv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
        y = bn(x, rm, rv, w, None, training, 0.1, 1e-5)
        (gx,) = torch.autograd.grad(y.pow(3).sum(), x, create_graph=True)
        (hx,) = torch.autograd.grad(gx.pow(2).sum(), x, create_graph=True)
        got.append(torch.autograd.grad(hx.sin().sum(), (x, w), allow_unused=True))
    for ours, theirs in zip(*got):
        if theirs is None or float(theirs.abs().max()) == 0.0:
            assert ours is None or float(ours.abs().max()) == 0.0
            continue
        # Products of up to 6 factors of order 1 (y^3, its derivatives) over 20 values per
        # channel, float64 both ways: 2 gamma_{16 m} 16 m with the factors' bound 10^3.
        tol = second_order_tol(20, 1e3) * float(theirs.abs().max())
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=0, atol=tol)


def _small_net(seed):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
        torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 1)).double()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradient_penalty_step_matches_pytorch(seed, training):
    """The issue's case: g = dL/dx with create_graph, then the gradients of (|g| - 1)^2 for
    every parameter. Before, bnfast returned wrong conv gradients and None for the BN and
    Linear parameters without an error."""
    theirs = _small_net(seed % 2**31)
    if not training:
        theirs(torch.randn(16, 3, 8, 8, dtype=torch.float64))  # running statistics
        theirs.eval()
    ours = bt.convert(copy.deepcopy(theirs))
    assert isinstance(ours[1], bt.BatchNorm2d)
    x0 = torch.randn(8, 3, 8, 8, dtype=torch.float64) + 1.0
    grads = []
    for net in (ours, theirs):
        x = x0.clone().requires_grad_()
        (g,) = torch.autograd.grad(net(x).sum(), x, create_graph=True)
        penalty = (g.norm() - 1) ** 2
        grads.append(torch.autograd.grad(penalty, list(net.parameters()), allow_unused=True))
    # One scale for all: the conv bias's gradient is zero in exact arithmetic (batch norm
    # removes the mean), rounding noise on both sides, of the size of the others' rounding.
    scale = max(float(g.abs().max()) for g in grads[1] if g is not None)
    for (name, _), ours_g, theirs_g in zip(theirs.named_parameters(), *grads):
        assert (ours_g is None) == (theirs_g is None), name
        if theirs_g is None:
            continue
        # float64 through conv (27-term sums), BN (288 values per channel) and the linear
        # layer (144 terms): every gradient entry is within 2 gamma_{16 * 288} 16 * 288 of
        # the gradients' magnitude (second_order_tol) times the conditioning of BN's
        # backward on standardized data, below 10^3 here; a wrong formula errs by O(1).
        tol = second_order_tol(288, 1e3) * scale
        np.testing.assert_allclose(ours_g.numpy(), theirs_g.numpy(), rtol=0, atol=tol,
                                   err_msg=name)


@pytest.mark.parametrize("options,training", [
    ({"activation": "relu"}, True), ({"activation": "relu"}, False),
    ({"virtual_batch_size": 3}, True), ({"virtual_batch_size": 3}, False),
    ({"renorm": True}, False),  # in training r and d are constants: test_renorm_... below
], ids=["relu-train", "relu-eval", "ghost-train", "ghost-eval", "renorm-eval"])
def test_layer_options_gradgradcheck(rng, options, training):
    layer = bt.BatchNorm2d(2, dtype=torch.float64, **options)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(rng.uniform(0.5, 2, 2)))
        layer.bias.copy_(torch.from_numpy(rng.standard_normal(2)))
        layer.running_mean.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, 2)))
        layer.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2, 2)))
    layer.train(training)
    x = _t(rng, (6, 2, 2, 3)).requires_grad_()
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    residual = None
    if "activation" in options:
        # keep bn(x) + residual away from the ReLU's kink, farther than the finite
        # differences' step (1e-6): +-(0.5 .. 1.5) around it
        with torch.no_grad():
            y = layer(x.detach())
        layer.load_state_dict(state)
        sign = torch.from_numpy(rng.choice([-1.0, 1.0], (6, 2, 2, 3)))
        target = sign * torch.from_numpy(rng.uniform(0.5, 1.5, (6, 2, 2, 3)))
        residual = (target - y).requires_grad_()

    def fn(x, w, b, *res):
        layer.load_state_dict(state)  # every evaluation from the same running statistics
        return _with_params(layer, x, w, b, *res)

    inputs = [x, layer.weight.detach().clone().requires_grad_(),
              layer.bias.detach().clone().requires_grad_()]
    if residual is not None:
        inputs.append(residual)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_renorm_second_order_matches_the_composite(rng):
    """Batch renormalization holds r and d constant in the backward (they are not the
    derivative of the forward, so gradcheck does not apply); its second order is that of
    the composite with r and d detached."""
    shape, C = (6, 2, 3, 2), 2
    layer = bt.BatchNorm2d(C, dtype=torch.float64, renorm=True, r_max=1.5, d_max=0.5)
    with torch.no_grad():
        layer.running_mean.copy_(torch.from_numpy(rng.uniform(-0.5, 0.5, C)))
        layer.running_var.copy_(torch.from_numpy(rng.uniform(0.5, 2, C)))
    rm, rv = layer.running_mean.clone(), layer.running_var.clone()
    state = {k: v.clone() for k, v in layer.state_dict().items()}

    def ours(x, w, b):
        layer.load_state_dict(state)
        return _with_params(layer, x, w, b)

    def composite(x, w, b):
        dims, cs = [0, 2, 3], [1, C, 1, 1]
        mean = x.mean(dims, keepdim=True)
        sigma_b = torch.sqrt(((x - mean) ** 2).mean(dims, keepdim=True) + layer.eps)
        sigma = torch.sqrt(rv + layer.eps).reshape(cs)
        r = (sigma_b / sigma).clamp(1 / 1.5, 1.5).detach()
        d = ((mean - rm.reshape(cs)) / sigma).clamp(-0.5, 0.5).detach()
        return ((x - mean) / sigma_b * r + d) * w.reshape(cs) + b.reshape(cs)

    x0 = _t(rng, shape, scale=rng.uniform(0.3, 3), offset=rng.uniform(-2, 2))
    w0 = torch.from_numpy(rng.uniform(0.5, 2, C))
    b0 = torch.from_numpy(rng.standard_normal(C))
    dy0 = _t(rng, shape)
    v = [_t(rng, shape), torch.from_numpy(rng.standard_normal(C)),
         torch.from_numpy(rng.standard_normal(C))]
    results = []
    for fn in (ours, composite):
        x, w, b, dy = (t.clone().requires_grad_() for t in (x0, w0, b0, dy0))
        results.append(_double_backward(fn, x, w, b, dy, *v))
    m = 6 * 3 * 2
    invstd = 1 / torch.sqrt(x0.var([0, 2, 3], unbiased=False) + layer.eps)
    xhat = (x0 - x0.mean([0, 2, 3], keepdim=True)) * invstd.reshape(1, C, 1, 1)
    # r <= 1.5, |d| <= 0.5 scale w and shift xhat: factors of 1.5 and (|xhat| + 0.5)
    tol = second_order_tol(m, 1.5 * w0.abs().max(), invstd.max() ** 2, dy0.abs().max(),
                           max(float(t.abs().max()) for t in v),
                           (float(xhat.abs().max()) + 1.5) ** 3)
    for name, got, want in zip(("x", "weight", "dy"), *results):
        assert (got is None) == (want is None), name
        if want is not None:
            np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=tol,
                                       err_msg=f"d/d{name} of the gradient")


def _with_params(layer, x, w, b, *res):
    """The layer's forward with w and b standing for its weight and bias."""
    return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x, *res))


_SYNC_DOUBLE_BACKWARD = """
import socket, torch, torch.distributed as dist
import bnfast.torch as bt
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
x = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
w = torch.ones(3, dtype=torch.float64, requires_grad=True)
y = bt._SyncBatchNormFunction.apply(x, w, None, None, None, 1e-5, 0.1, dist.group.WORLD)
(g,) = torch.autograd.grad((y ** 3).sum(), x, create_graph=True)  # first order: fine
try:
    g.sum().backward()
except RuntimeError as exc:
    print("raised:", exc)
dist.destroy_process_group()
"""


def test_sync_batch_norm_double_backward_raises():
    """The collective backward has no derivative here: asking for one raises, never a wrong
    or missing gradient (a one-rank gloo group, in a fresh process)."""
    done = run_python(_SYNC_DOUBLE_BACKWARD)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "raised: SyncBatchNorm: double backward" in done.stdout, done.stdout
