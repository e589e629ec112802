"""The kernel contract (docs/design.md §4), over random arguments of every kind.

For each operation with a compiled entry point, the same arguments are built twice (the
same seed) and given once to the entry point (``bnfast._kernels.<op>``) and once to the
validated path (``_<op>_validated``), which checks, normalizes and calls that same entry
point. Whatever the arguments (lists, float16, integers, byte-swapped, strided, unaligned,
read-only, subclasses, wrong shapes, bad eps / momentum / count / n_threads, NumPy scalars,
out fresh, in place, overlapping, of the wrong dtype):

- when the entry point returns, the validated path returns too, with the same bits in every
  output and in every argument it wrote (out, the running statistics);
- when the validated path raises, the entry point returned None;
- when the entry point returns None, it has written nothing.

Then the two halves of the backward (``bnfast._training.backward_sums`` and
``backward_input``) against ``batch_norm_backward``: the same bits, on both planner paths.
"""
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import bnfast
from bnfast import _kernels, _plain, _training

# No deadline and no too_slow check: on a loaded CI machine drawing a case can take tens of
# milliseconds, which says nothing about the contract.
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Sub(np.ndarray):
    """An ndarray subclass: never the plain case, accepted by the validated path."""


# -- building arguments -------------------------------------------------------------------

ARRAY_KINDS = ["f32", "f64", "f16", "int", "bool", ">f4", "list", "transposed", "strided",
               "unaligned", "readonly", "subclass"]
VECTOR_KINDS = [None, "f64", "f32", "f16", "int", "list", ">f8", "strided", "unaligned",
                "readonly", "subclass", "wrong_len", "2d", "complex"]
RUNNING_KINDS = [None, "f64", "f32", "f16", "strided", "unaligned", "readonly", "subclass",
                 "list", "wrong_len", "int"]
OUT_KINDS = [None, "fresh", "inplace", "inplace_other", "overlap", "wrong_dtype",
             "wrong_shape", "strided", "unaligned", "readonly", "subclass", "list"]
EPS = [1e-5, 0.0, 0.5, np.float64(1e-5), np.float32(1e-3), 1, -1.0, float("inf"),
       float("nan"), True, "1e-5", None]
MOMENTUM = [0.1, 0.0, 1.0, np.float64(0.1), 1, 1.5, -0.1, float("nan"), None]
N_THREADS = [None, 1, 2, 3, np.int64(2), 0, -1, True, 2.0, 70000]
COUNTS = [12.0, 1.0, 12, np.float64(12.0), 0.0, -3.0, float("inf"), float("nan"), True, "12",
          None, 10**400]
# The fused activation and residual (forward), the forward output y and return_dresidual
# (backward).
ACTIVATIONS = [None, "relu", np.str_("relu"), "tanh", "RELU", 1]
RESIDUALS = [None, "same", "out", "x", "f64", "f32", "f16", "int", "list", "strided",
             "wrong_shape", "overlap_out"]
YS = ["fwd", "out", "missing", "extra", "wrong_shape", "list", "f16", "strided", "f64"]
RETURN_DRES = [False, True, np.bool_(True), 1, None]


def _unaligned(a):
    raw = np.zeros(a.nbytes + a.itemsize, np.uint8)[1:1 + a.nbytes]
    u = raw.view(a.dtype).reshape(a.shape)
    u[...] = a
    return u


def _as_kind(v, kind):
    """The float64 array v in one of ARRAY_KINDS / VECTOR_KINDS."""
    if kind == "f32":
        return v.astype(np.float32)
    if kind == "f64":
        return v.copy()
    if kind == "f16":
        return v.astype(np.float16)
    if kind == "int":
        return np.round(v).astype(np.int64)
    if kind == "bool":
        return v > 0
    if kind in (">f4", ">f8"):
        return v.astype(kind)
    if kind == "list":
        return v.tolist()
    if kind == "transposed":
        return np.asfortranarray(v.astype(np.float32))
    if kind == "strided":
        return np.repeat(v, 2, axis=-1)[..., ::2] if v.ndim else v.copy()
    if kind == "unaligned":
        return _unaligned(v.astype(np.float32) if v.ndim > 1 else v)
    if kind == "readonly":
        r = v.astype(np.float32) if v.ndim > 1 else v.copy()
        r.flags.writeable = False
        return r
    if kind == "subclass":
        return v.copy().view(Sub)
    if kind == "wrong_len":
        return np.append(v, 1.0)
    if kind == "2d":
        return v.reshape(-1, 1)
    if kind == "complex":
        return v.astype(np.complex128)
    raise AssertionError(kind)


def _vector(rng, kind, C, positive=False):
    if kind is None:
        return None
    v = rng.uniform(0.5, 2.0, C) if positive else rng.standard_normal(C) * 2
    return _as_kind(v, kind)


def _out_dtype(x):
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        return x.dtype.newbyteorder("=")
    return np.dtype(np.float64)


def _out(kind, shape, x, other):
    """out= of one of OUT_KINDS, for an input x (and other, the second input or x)."""
    if kind is None or kind == "overlap":
        return None  # overlap is made with the inputs (see _inputs)
    dt = _out_dtype(x)
    if kind == "fresh":
        return np.full(shape, -7.0, dt)
    if kind == "inplace":
        return x
    if kind == "inplace_other":
        return other
    if kind == "wrong_dtype":
        return np.zeros(shape, np.float64 if dt == np.float32 else np.float32)
    if kind == "wrong_shape":
        return np.zeros(shape + (1,), dt)
    if kind == "strided":
        return np.zeros(shape[:-1] + (2 * shape[-1],) if shape else (2,), dt)[..., ::2]
    if kind == "unaligned":
        return _unaligned(np.zeros(shape, dt))
    if kind == "readonly":
        r = np.zeros(shape, dt)
        r.flags.writeable = False
        return r
    if kind == "subclass":
        return np.zeros(shape, dt).view(Sub)
    if kind == "list":
        return np.zeros(shape).tolist()
    raise AssertionError(kind)


PLAIN = dict(x=["f32", "f64"], dy=["f32", "f64"], vector=[None, "f64", "f32"],
             required=["f64", "f32"],
             out=[None, "fresh", "inplace", "inplace_other"], n_threads=[None, 1, 2],
             eps=[1e-5, 0.0, 0.5], momentum=[0.1, 0.0, 1.0], count=[12.0, 1.0, 0.25],
             activation=[None, "relu"], residual=[None, "same", "out", "x"], y=["fwd", "out"],
             return_dresidual=[False, True])
ANY = dict(x=ARRAY_KINDS, dy=ARRAY_KINDS + ["wrong_shape"], vector=VECTOR_KINDS,
           required=VECTOR_KINDS,
           running=RUNNING_KINDS, out=OUT_KINDS, n_threads=N_THREADS, eps=EPS,
           momentum=MOMENTUM, count=COUNTS, activation=ACTIVATIONS, residual=RESIDUALS, y=YS,
           return_dresidual=RETURN_DRES)


@st.composite
def cases(draw, vectors=(), running=(), scalars=(), two_inputs=False, required=()):
    """Arguments mostly of the plain case, with up to three drawn from every kind: the
    entry point then computes often enough to compare bits, and each way out of the plain
    case is met next to plain arguments."""
    names = ["shape", "axis", "x", "out", "n_threads", *(["dy"] if two_inputs else []),
             *vectors, *running, *scalars, *required]
    odd = set(draw(st.lists(st.sampled_from(names), max_size=3)))

    def pick(name, kind):
        return draw(st.sampled_from(ANY[kind] if name in odd else PLAIN.get(kind, ANY[kind])))

    ndim = draw(st.integers(1, 4))
    low = 0 if "shape" in odd else 1
    side = st.integers(low, 5) if ndim > 2 else st.integers(low, 4) | st.integers(5, 70)
    shape = tuple(draw(st.lists(side, min_size=ndim, max_size=ndim)))
    axes = list(range(-ndim, ndim)) if ndim > 1 else [None, 0, -1, 1]
    if "axis" in odd:
        axes = [None, np.int64(1), 1.0, ndim, -ndim - 1, *axes]
    case = dict(seed=draw(st.integers(0, 2**32 - 1)), shape=shape,
                axis=draw(st.sampled_from(axes)))
    for name in ("x", "out", "n_threads", *(["dy"] if two_inputs else [])):
        case[name] = pick(name, name)
    for name in vectors:
        case[name] = pick(name, "vector")
    for name in required:
        case[name] = pick(name, "required")
    for name in running:
        case[name] = pick(name, "running" if name in odd else "vector")
    for name in scalars:
        case[name] = pick(name, name)
    return case


def _channels(shape, axis):
    if axis is None or len(shape) == 1 or type(axis) is not int or not -len(shape) <= axis < len(shape):
        return 1
    return shape[axis]


def _inputs(case, rng):
    """x (and dy) for the case, with an overlapping out when asked for."""
    shape = case["shape"]
    x = rng.standard_normal(shape) * 3 + 2
    dy = rng.standard_normal(shape) if "dy" in case else None
    if case["out"] == "overlap" and case["x"] in ("f32", "f64"):
        dt = np.float32 if case["x"] == "f32" else np.float64
        n = x.size
        buf = np.zeros(n + 3, dt)
        xv = buf[:n].reshape(shape)
        xv[...] = x
        return xv, dy, buf[3:3 + n].reshape(shape)
    x = _as_kind(x, case["x"])
    if dy is not None:
        dy = (rng.standard_normal(shape + (2,)) if case["dy"] == "wrong_shape"
              else _as_kind(dy, case["dy"]))
    return x, dy, None


# -- checking one case --------------------------------------------------------------------

def _arrays(args):
    return [a for a in args if isinstance(a, np.ndarray)]


def _bits(a):
    return (a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes())


def _same_bits(a, b):
    if isinstance(a, tuple):
        assert isinstance(b, tuple) and len(a) == len(b)
        for u, v in zip(a, b):
            _same_bits(u, v)
        return
    assert _bits(a) == _bits(b)


def check_contract(kernel, validated, build, case):
    """build(case) -> argument tuple, made afresh (the same values) on every call."""
    args_fast, args_slow = build(case), build(case)
    before = [_bits(a) for a in _arrays(args_fast)]
    fast = kernel(*args_fast)
    try:
        slow = validated(*args_slow)
    except (ValueError, TypeError) as exc:  # AxisError is a ValueError
        assert fast is None, f"the entry point computed what validation rejects: {exc!r}"
        return "rejected"
    if fast is None:
        assert [_bits(a) for a in _arrays(args_fast)] == before, "declined, yet wrote"
        return "declined"
    _same_bits(fast, slow)
    for a, b in zip(_arrays(args_fast), _arrays(args_slow)):  # out, running statistics
        _same_bits(a, b)
    return "computed"


# -- the operations -----------------------------------------------------------------------

def _plain_of(x, shape, values):
    """values (of the given shape) as a plain array of x's dtype (float64 when x is not a
    float ndarray)."""
    return values.reshape(shape).astype(_out_dtype(x))


def _fill(out, values):
    """Write values into an out= the test made, read-only ones included: those own their
    memory (_as_kind), so they may be made writeable for this and read-only again. An out of
    another shape (a wrong-shape case, which validation rejects) is left as it is."""
    if out.shape != np.shape(values):
        return
    readonly = not out.flags.writeable
    out.flags.writeable = True
    np.copyto(out, values, casting="unsafe")
    out.flags.writeable = not readonly


def _residual(case, rng, x, out):
    """The forward's residual of one of RESIDUALS (drawn after every other argument)."""
    kind = case.get("residual")
    shape = case["shape"]
    r = rng.standard_normal(shape)
    if kind is None:
        return None
    if kind == "same":
        return _plain_of(x, shape, r)
    if kind == "out":  # out=residual, the in-place ResNet case
        return out if isinstance(out, np.ndarray) else _plain_of(x, shape, r)
    if kind == "x":
        return x
    if kind == "wrong_shape":
        return r.reshape(shape + (1,))
    if kind == "overlap_out":  # out's memory in another order: the validated path copies
        if isinstance(out, np.ndarray) and out.size > 1 and out.flags.c_contiguous:
            if out.dtype.kind == "f":
                _fill(out, r)
            return out.reshape(-1)[::-1].reshape(shape)
        return _plain_of(x, shape, r)
    return _as_kind(r, kind)


def _forward_output(case, rng, x, out):
    """The backward's y of one of YS, with activation relu-like or not."""
    kind = case.get("y")
    shape = case["shape"]
    y = np.maximum(rng.standard_normal(shape), 0)
    relu = case.get("activation") is not None
    if kind in ("fwd", "out"):
        if not relu:
            return None
        if kind == "out" and isinstance(out, np.ndarray):
            _fill(out, y)  # the forward wrote y into out
            return out
        return _plain_of(x, shape, y)
    if kind == "missing":
        return None
    if kind == "extra":
        return _plain_of(x, shape, y)
    if kind == "wrong_shape":
        return y.reshape(shape + (1,))
    return _as_kind(y, kind)

def build_forward_train(case):
    rng = np.random.default_rng(case["seed"])
    x, _, out = _inputs(case, rng)
    C = _channels(case["shape"], case["axis"])
    gamma = _vector(rng, case["gamma"], C, positive=True)
    beta = _vector(rng, case["beta"], C)
    rm = _vector(rng, case["running_mean"], C)
    rv = _vector(rng, case["running_var"], C, positive=True)
    if out is None:
        out = _out(case["out"], case["shape"], x, x)
    return (x, gamma, beta, case["axis"], case["eps"], rm, rv, case["momentum"], out,
            case["n_threads"], case["activation"], _residual(case, rng, x, out))


@SETTINGS
@given(cases(vectors=("gamma", "beta"), running=("running_mean", "running_var"),
             scalars=("eps", "momentum", "activation", "residual")))
def test_forward_train_contract(case):
    event(check_contract(_kernels.forward_train, _plain._forward_train_validated,
                         build_forward_train, case))


def build_forward_infer(case):
    rng = np.random.default_rng(case["seed"])
    x, _, out = _inputs(case, rng)
    C = _channels(case["shape"], case["axis"])
    rm = _vector(rng, case["running_mean"], C)
    rv = _vector(rng, case["running_var"], C, positive=True)
    gamma = _vector(rng, case["gamma"], C, positive=True)
    beta = _vector(rng, case["beta"], C)
    if out is None:
        out = _out(case["out"], case["shape"], x, x)
    return (x, rm, rv, gamma, beta, case["axis"], case["eps"], out, case["n_threads"],
            case["activation"], _residual(case, rng, x, out))


@SETTINGS
@given(cases(vectors=("gamma", "beta"), required=("running_mean", "running_var"),
             scalars=("eps", "activation", "residual")))
def test_forward_infer_contract(case):
    event(check_contract(_kernels.forward_infer, _plain._forward_infer_validated,
                         build_forward_infer, case))


def _backward_inputs(case):
    rng = np.random.default_rng(case["seed"])
    x, dy, out = _inputs(case, rng)
    if dy is None:  # the overlapping case: dy plain, of x's dtype
        dy = rng.standard_normal(case["shape"]).astype(x.dtype)
    C = _channels(case["shape"], case["axis"])
    mean = _vector(rng, case["mean"], C)
    invstd = _vector(rng, case["invstd"], C, positive=True)
    return rng, x, dy, out, C, mean, invstd


def build_backward(case):
    rng, x, dy, out, C, mean, invstd = _backward_inputs(case)
    gamma = _vector(rng, case["gamma"], C, positive=True)
    if out is None:
        out = _out(case["out"], case["shape"], dy, x)
    return (dy, x, mean, invstd, gamma, case["axis"], out, case["n_threads"],
            case["activation"], _forward_output(case, rng, x, out), case["return_dresidual"])


@SETTINGS
@given(cases(vectors=("gamma",), required=("mean", "invstd"), two_inputs=True,
             scalars=("activation", "y", "return_dresidual")))
def test_backward_contract(case):
    event(check_contract(_kernels.backward, _plain._backward_validated, build_backward,
                         case))


def build_backward_sums(case):
    rng, x, dy, _, _, mean, invstd = _backward_inputs(case)
    return (dy, x, mean, invstd, case["axis"], case["n_threads"], case["activation"],
            _forward_output(case, rng, x, None))


@SETTINGS
@given(cases(required=("mean", "invstd"), two_inputs=True, scalars=("activation", "y")))
def test_backward_sums_contract(case):
    event(check_contract(_kernels.backward_sums, _training._backward_sums_validated,
                         build_backward_sums, case))


def build_backward_input(case):
    rng, x, dy, out, C, mean, invstd = _backward_inputs(case)
    gamma = _vector(rng, case["gamma"], C, positive=True)
    dgamma = _vector(rng, case["dgamma"], C)
    dbeta = _vector(rng, case["dbeta"], C)
    if out is None:
        out = _out(case["out"], case["shape"], dy, x)
    return (dy, x, mean, invstd, gamma, dgamma, dbeta, case["count"], case["axis"], out,
            case["n_threads"], case["activation"], _forward_output(case, rng, x, out),
            case["return_dresidual"])


@SETTINGS
@given(cases(vectors=("gamma",), required=("mean", "invstd", "dgamma", "dbeta"),
             two_inputs=True, scalars=("count", "activation", "y", "return_dresidual")))
def test_backward_input_contract(case):
    event(check_contract(_kernels.backward_input, _training._backward_input_validated,
                         build_backward_input, case))


def test_contract_cases_reach_every_outcome():
    """check_contract is not vacuous: each outcome happens, for a forward and a backward."""
    plain = dict(seed=1, shape=(30, 4), axis=1, x="f32", out=None, n_threads=None, dy="f32",
                 gamma="f32", beta=None, running_mean="f32", running_var="f64", eps=1e-5,
                 momentum=0.1, mean="f64", invstd="f64", activation="relu", residual="same",
                 y="fwd", return_dresidual=True)
    for kernel, validated, build in [
            (_kernels.forward_train, _plain._forward_train_validated, build_forward_train),
            (_kernels.backward, _plain._backward_validated, build_backward)]:
        assert check_contract(kernel, validated, build, plain) == "computed"
        assert check_contract(kernel, validated, build, {**plain, "x": "list"}) == "declined"
        assert check_contract(kernel, validated, build, {**plain, "axis": 5}) == "rejected"


# -- the backward in two halves -----------------------------------------------------------

# (shape, axis, dtype, fused): both planner paths of batch_norm_backward (one channel at a
# time from cache, or the sums and then dx in memory order), runs and tiles, several chunks.
HALVES = [((2, 16, 2048), 1, np.float32, True),
          ((2, 16, 1024), 1, np.float64, True),
          ((6, 5, 7, 7), 1, np.float32, False),
          ((300, 40), 1, np.float64, False),
          ((9, 6, 6, 600), -1, np.float32, False),
          ((40, 3, 60, 60), 1, np.float64, False),
          ((5000,), 0, np.float32, False)]


@pytest.mark.parametrize("shape, axis, dtype, fused", HALVES)
@pytest.mark.parametrize("with_gamma", [True, False])
def test_backward_halves_give_batch_norm_backward_bits(rng, shape, axis, dtype, fused,
                                                       with_gamma):
    ndim = len(shape)
    C = 1 if ndim == 1 else shape[axis]
    outer = int(np.prod(shape[:axis % ndim])) if ndim > 1 else 1
    inner = int(np.prod(shape[axis % ndim + 1:])) if ndim > 1 else shape[0]
    p = _kernels.plan(outer, C, inner, np.dtype(dtype).itemsize)
    assert bool(p["fused"]) == fused
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 2.0, C) if with_gamma else None
    _, mean, invstd = bnfast.batch_norm_forward(x, axis=axis)
    dx, dgamma, dbeta = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma, axis=axis)

    sums = _training.backward_sums(dy, x, mean, invstd, axis=axis)
    _same_bits(sums, (dgamma, dbeta))
    m = float(x.size // C)
    _same_bits(_training.backward_input(dy, x, mean, invstd, gamma, *sums, m, axis=axis), dx)
    # in place on dy, and through the validated path (a list gamma, an int count)
    target = dy.copy()
    got = _training.backward_input(target, x, mean, invstd,
                                   None if gamma is None else gamma.tolist(), *sums, int(m),
                                   axis=axis, out=target)
    assert got is target
    _same_bits(target, dx)


def test_backward_input_with_sums_of_two_ranks(rng):
    """The SyncBatchNorm use: sums all-reduced over two slices of the batch, each slice's dx
    from them equals the whole batch's dx up to the order the sums were added in."""
    x = rng.standard_normal((64, 5, 3)) * 2 + 1
    dy = rng.standard_normal((64, 5, 3))
    gamma = rng.uniform(0.5, 2.0, 5)
    _, mean, invstd = bnfast.batch_norm_forward(x)
    dx, dgamma, dbeta = bnfast.batch_norm_backward(dy, x, mean, invstd, gamma)
    halves = [slice(0, 20), slice(20, 64)]
    parts = [_training.backward_sums(dy[h], x[h], mean, invstd) for h in halves]
    dg, db = parts[0][0] + parts[1][0], parts[0][1] + parts[1][1]
    got = np.concatenate([_training.backward_input(dy[h], x[h], mean, invstd, gamma, dg, db,
                                                   64.0 * 3) for h in halves])
    # The sums differ from the whole batch's only in the order their terms were added (the
    # terms themselves are rounded alike): reordering a float64 sum of m = 192 terms moves
    # it by at most 2 * m * eps * sum|term|. That enters dx as
    # gamma * invstd / m * (d dbeta + xhat * d dgamma). The few float64 operations of dx
    # after it may round differently: 4 eps of the magnitudes they combine.
    eps, m = np.finfo(np.float64).eps, 192
    xmu = x - mean[:, None]
    xhat = xmu * invstd[:, None]
    d_dbeta = 2 * m * eps * np.abs(dy).sum(axis=(0, 2))[:, None]
    d_dgamma = 2 * m * eps * np.abs(dy * xhat).sum(axis=(0, 2))[:, None]
    k = (gamma * invstd)[:, None]
    a, b = (dbeta / m)[:, None], (invstd * dgamma / m)[:, None]
    bound = (k / m * (d_dbeta + np.abs(xhat) * d_dgamma)
             + 4 * eps * k * (np.abs(dy) + np.abs(a) + np.abs(xmu * b)))
    assert np.all(np.abs(got - dx) <= bound)


def test_backward_halves_errors(rng):
    x = rng.standard_normal((6, 3))
    mean, invstd = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="dy: expected the shape of x"):
        _training.backward_sums(x[:2], x, mean, invstd)
    with pytest.raises(ValueError, match="mean, invstd"):
        _training.backward_sums(x, x, None, invstd)
    for bad in (0.0, -1.0, float("inf"), float("nan"), True, "6"):
        with pytest.raises(ValueError, match="count: expected"):
            _training.backward_input(x, x, mean, invstd, None, mean, mean, bad)
    with pytest.raises(ValueError, match="dgamma, dbeta"):
        _training.backward_input(x, x, mean, invstd, None, None, mean, 6.0)
    with pytest.raises(ValueError, match="dgamma: expected shape"):
        _training.backward_input(x, x, mean, invstd, None, np.zeros(4), mean, 6.0)
    # An empty batch: zero sums, an empty dx.
    dg, db = _training.backward_sums(x[:0], x[:0], mean, invstd)
    assert dg.tolist() == [0.0] * 3 and db.tolist() == [0.0] * 3
    assert _training.backward_input(x[:0], x[:0], mean, invstd, None, dg, db, 6.0).shape == (0, 3)
