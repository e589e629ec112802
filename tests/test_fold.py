"""bnfast.fold_batch_norm: Linear / Conv followed by an eval-mode BN == one folded layer."""

import numpy as np
import pytest

import bnfast
from _helpers import gamma_n, make_float

F64 = np.float64


def _bn_params(rng, C):
    running_mean = rng.standard_normal(C) * 2
    running_var = rng.uniform(0.2, 3.0, C)
    gamma = rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C)
    beta = rng.standard_normal(C)
    return running_mean, running_var, gamma, beta


def _conv2d(x, w, b):
    """Valid, stride-1 cross-correlation (what Conv2d computes): x (N, Cin, H, W),
    w (Cout, Cin, kh, kw) -> (N, Cout, H-kh+1, W-kw+1), in float64."""
    kh, kw = w.shape[2:]
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    y = np.einsum("nchwij,ocij->nohw", win, w)
    return y if b is None else y + b[None, :, None, None]


def _fold_tol(terms, K, dtype=F64):
    """Absolute bound between a layer-then-BN output and the folded layer's, both computed
    in dtype: each is a sum of K products (the layer) and about 6 more roundings (bias, - rm,
    * invstd * gamma, + beta, the fold's own products), so each is within gamma_{K+6} of the
    exact value relative to ``terms``, the largest |x| @ |W| * |invstd gamma| + |bias and
    running-mean terms| + |beta| (the size of what is summed)."""
    return 2 * gamma_n(K + 6, dtype) * float(np.max(terms))


def _fold_terms(x_abs_dot_w, b, rm, rv, g, beta, eps, axis=1):
    """``terms`` of _fold_tol, from |x| @ |W|^T (or |x| conv |w|) in float64."""
    shape = [1] * x_abs_dot_w.ndim
    shape[axis] = -1
    r = lambda v: np.abs(np.asarray(0.0 if v is None else v, F64)).reshape(  # noqa: E731
        shape if np.ndim(v) else [1] * x_abs_dot_w.ndim)
    gain = r(g) / np.sqrt(np.asarray(rv, F64).reshape(shape) + eps)
    return (x_abs_dot_w + r(b) + r(rm)) * gain + r(beta)


def _bn_eval(z, rm, rv, g, b, eps, axis=1):
    """Eval-mode BN in float64 NumPy, spelled out."""
    shape = [1] * z.ndim
    shape[axis] = -1
    r = lambda v: np.asarray(v, F64).reshape(shape)  # noqa: E731
    return (z - r(rm)) / np.sqrt(r(rv) + eps) * r(g) + r(b)


@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_then_bn_equals_folded_linear(rng, with_bias):
    n, d_in, C = 50, 7, 5
    W = rng.standard_normal((C, d_in))
    b = rng.standard_normal(C) if with_bias else None
    rm, rv, g, beta = _bn_params(rng, C)
    eps = 1e-3
    x = make_float(rng, (n, d_in), 1)
    z = x @ W.T + (0 if b is None else b)
    want = _bn_eval(z, rm, rv, g, beta, eps)
    Wf, bf = bnfast.fold_batch_norm(W, b, rm, rv, g, beta, eps=eps)
    assert Wf.shape == W.shape and bf.shape == (C,)
    assert Wf.dtype == F64 and bf.dtype == F64
    tol = _fold_tol(_fold_terms(np.abs(x) @ np.abs(W).T, b, rm, rv, g, beta, eps), d_in)
    np.testing.assert_allclose(x @ Wf.T + bf, want, rtol=0, atol=tol)
    # and against the layer itself in eval mode
    bn = bnfast.BatchNorm(C, dtype=F64, eps=eps).eval()
    bn.load_state_dict({"weight": g, "bias": beta, "running_mean": rm, "running_var": rv,
                        "num_batches_tracked": np.array(3)})
    np.testing.assert_allclose(bn(z), x @ Wf.T + bf, rtol=0, atol=tol)


def test_linear_then_trained_float32_layer(rng):
    """A float32 BatchNorm trained for a few steps, then folded: the folded float32 Linear
    gives the eval-mode output to float32 rounding."""
    n, d_in, C = 64, 6, 4
    W = rng.standard_normal((C, d_in)).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    bn = bnfast.BatchNorm(C, momentum=0.3)
    for _ in range(4):
        x = make_float(rng, (n, d_in), 1).astype(np.float32)
        z = x @ W.T + b
        bn(z)
        bn.backward(rng.standard_normal(z.shape).astype(np.float32))
        bn.weight -= 0.2 * bn.dgamma
        bn.bias -= 0.2 * bn.dbeta
    bn.eval()
    x = make_float(rng, (n, d_in), 1).astype(np.float32)
    want = bn(x.astype(F64) @ W.T.astype(F64) + b)
    Wf, bf = bnfast.fold_batch_norm(W, b, bn.running_mean, bn.running_var, bn.weight, bn.bias,
                                    eps=bn.eps)
    assert Wf.dtype == np.float32 and bf.dtype == np.float32
    got = x @ Wf.T + bf
    # float32 on the folded side: its sum and its rounded Wf, bf (2 more roundings)
    terms = _fold_terms(np.abs(x.astype(F64)) @ np.abs(W.astype(F64)).T, b, bn.running_mean,
                        bn.running_var, bn.weight, bn.bias, bn.eps)
    np.testing.assert_allclose(got, want, rtol=0, atol=_fold_tol(terms, d_in + 2, np.float32))


@pytest.mark.parametrize("with_bias", [True, False])
def test_conv_then_bn_equals_folded_conv(rng, with_bias):
    N, Cin, Cout, H, W_, kh, kw = 2, 3, 4, 7, 6, 3, 2
    w = rng.standard_normal((Cout, Cin, kh, kw))
    b = rng.standard_normal(Cout) if with_bias else None
    rm, rv, g, beta = _bn_params(rng, Cout)
    x = make_float(rng, (N, Cin, H, W_), 1)
    z = _conv2d(x, w, b)
    want = _bn_eval(z, rm, rv, g, beta, 1e-5)
    wf, bf = bnfast.fold_batch_norm(w, b, rm, rv, g, beta)
    assert wf.shape == w.shape
    got = _conv2d(x, wf, bf)
    terms = _fold_terms(_conv2d(np.abs(x), np.abs(w), None), b, rm, rv, g, beta, 1e-5)
    np.testing.assert_allclose(got, want, rtol=0, atol=_fold_tol(terms, Cin * kh * kw))


def test_conv_fold_matches_torch(rng):
    torch = pytest.importorskip("torch")
    conv = torch.nn.Conv2d(3, 5, 3, bias=True).double()
    bn = torch.nn.BatchNorm2d(5).double()
    rm, rv, g, beta = _bn_params(rng, 5)
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(rm))
        bn.running_var.copy_(torch.from_numpy(rv))
        bn.weight.copy_(torch.from_numpy(g))
        bn.bias.copy_(torch.from_numpy(beta))
    bn.eval()
    x = torch.from_numpy(make_float(rng, (2, 3, 8, 8), 1))
    want = bn(conv(x)).detach().numpy()
    wf, bf = bnfast.fold_batch_norm(conv.weight.detach().numpy(), conv.bias.detach().numpy(),
                                    rm, rv, g, beta, eps=bn.eps)
    got = torch.nn.functional.conv2d(x, torch.from_numpy(wf), torch.from_numpy(bf)).numpy()
    terms = _fold_terms(_conv2d(np.abs(x.numpy()), np.abs(conv.weight.detach().numpy()), None),
                        conv.bias.detach().numpy(), rm, rv, g, beta, bn.eps)
    np.testing.assert_allclose(got, want, rtol=0, atol=_fold_tol(terms, 3 * 3 * 3))


def test_no_affine_and_inputs_unchanged(rng):
    C = 3
    W = rng.standard_normal((C, 4))
    rm, rv, _, _ = _bn_params(rng, C)
    args = [W, None, rm, rv]
    copies = [None if a is None else a.copy() for a in args]
    Wf, bf = bnfast.fold_batch_norm(*args, None, None, eps=0.0)
    s = 1 / np.sqrt(rv)
    # + eps, sqrt, divide, multiply: 4 roundings on either side
    np.testing.assert_allclose(Wf, W * s[:, None], rtol=2 * gamma_n(4), atol=0)
    np.testing.assert_allclose(bf, -rm * s, rtol=2 * gamma_n(4), atol=0)
    for a, c in zip(args, copies):
        if a is not None:
            np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("bad, exc", [
    (dict(running_mean=np.zeros(4)), ValueError),
    (dict(gamma=np.ones((3, 1))), ValueError),
    (dict(bias=np.ones(2)), ValueError),
    (dict(running_var=np.array([1.0, -1.0, 1.0])), ValueError),
    (dict(running_var=None), ValueError),
    (dict(eps=-1.0), ValueError),
    (dict(weight=np.array(1.0)), ValueError),
    (dict(weight=np.ones((3, 2), dtype=complex)), TypeError),
])
def test_errors(bad, exc):
    kwargs = dict(weight=np.ones((3, 2)), bias=None, running_mean=np.zeros(3),
                  running_var=np.ones(3), gamma=None, beta=None, eps=1e-5)
    kwargs.update(bad)
    with pytest.raises(exc):
        bnfast.fold_batch_norm(**kwargs)
