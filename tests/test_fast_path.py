"""The compiled entry points compute their plain case with the validated path's exact bits,
and decline (return None) everything else (docs/design.md §4; tests/test_contract.py checks
the same over random arguments)."""
import numpy as np
import pytest

import bnfast
from bnfast import _kernels, _plain


@pytest.mark.parametrize("shape, axis", [((256, 64), 1), ((8, 16, 9, 9), 1), ((8, 9, 9, 16), -1),
                                         ((40, 3, 7), -2)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fast_path_matches_validating_path(rng, shape, axis, dtype):
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    C = shape[axis]
    gamma = rng.uniform(0.5, 2, C).astype(np.float32)
    beta = rng.standard_normal(C)
    rm_fast, rv_fast = rng.standard_normal(C).astype(np.float32), rng.uniform(1, 2, C)
    rm_slow, rv_slow = rm_fast.copy(), rv_fast.copy()

    fast = _kernels.forward_train(x, gamma, beta, axis, 1e-5, rm_fast, rv_fast, 0.1, None, None)
    assert fast is not None
    # np.float64 eps and a list gamma are not "plain": this goes through the validating path.
    assert _kernels.forward_train(x, list(gamma), beta, axis, np.float64(1e-5), rm_slow,
                                  rv_slow, 0.1, None, None) is None
    slow = bnfast.batch_norm_forward(x, [float(g) for g in gamma], beta, axis=axis,
                                     eps=np.float64(1e-5), running_mean=rm_slow,
                                     running_var=rv_slow, momentum=0.1)
    for a, b in zip(fast, slow):
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(rm_fast, rm_slow)
    np.testing.assert_array_equal(rv_fast, rv_slow)


def _unaligned(a):
    """A copy of a whose data pointer is not aligned for its dtype."""
    raw = np.zeros(a.nbytes + 1, np.uint8)[1:]
    u = raw.view(a.dtype).reshape(a.shape)
    u[...] = a
    assert not u.flags.aligned
    return u


def test_fast_path_declines_what_it_does_not_handle(rng):
    x = rng.standard_normal((10, 4)).astype(np.float32)
    declined = [
        dict(x=x[:, ::-1]),                      # not contiguous
        dict(x=x.astype(">f4")),                 # byte-swapped
        dict(x=_unaligned(x)),                   # not aligned
        dict(x=x[:1]),                           # one value per channel: the error path
        dict(axis=2),                            # axis out of range: the error path
        dict(axis=np.int64(1)),                  # not a Python int
        dict(eps=-1.0), dict(momentum=1.5),      # bad values: the error paths
        dict(eps=np.float64(1e-5)),              # not a Python float
        dict(gamma=np.ones(3)),                  # wrong length: the error path
        dict(gamma=_unaligned(np.ones(4))),      # not aligned
        dict(running_mean=np.ones(4)[::-1]),     # strided running statistics
        dict(out=np.empty((10, 4), np.float64)),  # wrong out dtype
        dict(out=np.empty((10, 4), np.float32)[::-1]),  # strided out
        dict(out=_unaligned(x)),                 # unaligned out
        dict(n_threads=0), dict(n_threads=True),
    ]
    base = dict(x=x, gamma=None, beta=None, axis=1, eps=1e-5, running_mean=None,
                running_var=None, momentum=0.1, out=None, n_threads=None)
    for change in declined:
        args = {**base, **change}
        assert _kernels.forward_train(**args) is None, change
    # Partial overlap between out and x is declined too (the validating path copies).
    buf = rng.standard_normal(50).astype(np.float32)
    assert _kernels.forward_train(buf[:40].reshape(10, 4), None, None, 1, 1e-5, None, None,
                                  0.1, buf[4:44].reshape(10, 4), None) is None


def test_unaligned_input_goes_through_a_copy(rng):
    """The validated path makes what the entry point accepts: unaligned arrays are copied."""
    x = rng.standard_normal((30, 4)) * 3 + 1
    rm, rv = np.zeros(4), np.ones(4)
    want = bnfast.batch_norm_forward(x, running_mean=rm, running_var=rv)
    rm_u, rv_u = _unaligned(np.zeros(4)), _unaligned(np.ones(4))
    got = bnfast.batch_norm_forward(_unaligned(x), _unaligned(np.ones(4)), running_mean=rm_u,
                                    running_var=rv_u)
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(rm_u, rm)
    np.testing.assert_array_equal(rv_u, rv)
    out = _unaligned(np.zeros_like(x))
    assert bnfast.batch_norm_forward(x, out=out)[0] is out
    np.testing.assert_array_equal(out, want[0])


def test_validated_path_result_none_is_an_internal_error(monkeypatch, rng):
    """None from the entry point after validation breaks the contract: a RuntimeError."""
    monkeypatch.setattr(_plain, "_kernels", _Declining())
    with pytest.raises(RuntimeError, match="bnfast bug"):
        bnfast.batch_norm_forward(rng.standard_normal((8, 3)))


class _Declining:
    def __getattr__(self, name):
        return lambda *args: None


@pytest.mark.parametrize("shape, axis", [((256, 64), 1), ((8, 16, 9, 9), 1), ((8, 9, 9, 16), -1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_and_backward_fast_paths_match_validating_path(rng, shape, axis, dtype):
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    gamma = rng.uniform(0.5, 2, C).astype(np.float32)
    beta = rng.standard_normal(C)
    rm, rv = rng.standard_normal(C).astype(np.float32), rng.uniform(1, 2, C)
    mean, invstd = rng.standard_normal(C) + 5, rng.uniform(0.5, 1, C)

    fast_y = _kernels.forward_infer(x, rm, rv, gamma, beta, axis, 1e-5, None, None)
    slow_y = bnfast.batch_norm_inference(x, list(rm), rv, gamma, beta, axis=axis,
                                         eps=np.float64(1e-5))
    assert fast_y is not None
    np.testing.assert_array_equal(fast_y, slow_y)

    fast = _kernels.backward(dy, x, mean, invstd, gamma, axis, None, None)
    slow = bnfast.batch_norm_backward(dy, x, list(mean), invstd, gamma, axis=axis)
    assert fast is not None
    for a, b in zip(fast, slow):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)
    # In place on dy and on x: the same bits again.
    for target in (dy.copy(), x.copy()):
        d, xx = (target, x) if target.shape == dy.shape and np.array_equal(target, dy) else (dy, target)
        res = bnfast.batch_norm_backward(d, xx, mean, invstd, gamma, axis=axis, out=target)
        assert res[0] is target
        np.testing.assert_array_equal(target, slow[0])
