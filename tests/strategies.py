"""Hypothesis strategies and the checking engine of the argument-validation fuzzer: random
arguments of random types to every public entry point (the functions, ``BatchNorm`` and its
methods, ``BatchNormScaler`` and its methods).

What a call may do:

- return a result, or raise TypeError or ValueError (``numpy.exceptions.AxisError`` is a
  ValueError), or one of the few documented others: KeyError from
  ``BatchNorm.load_state_dict(strict=True)`` on missing or unexpected keys, RuntimeError from
  ``BatchNorm.backward`` before any forward, MemoryError from ``BatchNorm(num_features)`` when
  the parameters cannot be allocated;
- modify no argument, except on success ``out=``, the running statistics of a training
  forward and ``X`` of a ``copy=False`` scaler transform (documented outputs);
- when it raises, leave the layer or the scaler exactly as it was.

Never a crash (the process dies: the run fails), a hang (a watchdog dumps every thread's stack
and exits), any other exception, or a modified input.

Used by tests/test_fuzz_validation.py (a fixed budget of examples) and by the long-run CLI
tools/fuzz_validation.py. Needs hypothesis (and scikit-learn for the scaler; without it the
scaler is left out).
"""
import collections
import faulthandler
import math
import warnings
from decimal import Decimal
from fractions import Fraction

import numpy as np
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bnfast

try:
    import sklearn  # noqa: F401
    HAVE_SKLEARN = True
except ImportError:
    HAVE_SKLEARN = False

ALLOWED = (TypeError, ValueError)
# Seconds one call may take before the watchdog declares a hang (the arrays are tiny).
HANG_SECONDS = 60
OMIT = object()  # an argument left out of the call

# What each entry point did: (entry point, outcome) -> count.
OUTCOMES = collections.Counter()


# ------------------------------------------------------------------------------ garbage

# Never sizes between 1e5 and 2**40: BatchNorm(num_features) would really allocate them.
HUGE_INTS = [2**40, 2**62, 2**63 - 1, 2**63, -2**63, -2**63 - 1, 2**64, 10**30, -10**30,
             10**400, -10**400, -1, -2**31]
ODD_FLOATS = [0.0, -0.0, 5e-324, 1e-300, 1e308, -1e308, math.inf, -math.inf, math.nan]


class _Opaque:
    """An object NumPy knows nothing about."""

    def __repr__(self):
        return "<opaque>"


class _FakeTensor:
    """Duck-types a torch tensor (``detach``, ``cpu``) around an arbitrary value."""

    def __init__(self, value):
        self.value = value

    def detach(self):
        return self

    def cpu(self):
        return self.value

    def __repr__(self):
        return f"_FakeTensor({self.value!r})"


ODD_OBJECTS = [_Opaque(), Ellipsis, NotImplemented, slice(1, 3), range(4), int, np.float32,
               print, np.dtype("f8"), np.dtype("c16"), b"\x00\x01", bytearray(b"ab"),
               memoryview(b"abcd"), frozenset({1.0}), {1.0, 2.0}, (), [], {}, [[]], [[], []],
               Decimal("NaN"), Decimal("1e400"), Fraction(1, 3), Fraction(10**400),
               np.float64("nan"), np.float16(65504), np.int8(-128), np.uint64(2**64 - 1),
               np.longdouble("1e4000") if np.finfo(np.longdouble).max > 1e400 else np.inf,
               np.bool_(True), np.complex64(1j), np.datetime64("2020-01-01"),
               np.timedelta64(5, "s"), np.str_("x"), np.bytes_(b"x"), np.void(b"ab")]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-4, 8),
    st.sampled_from(HUGE_INTS),
    st.floats(),
    st.sampled_from(ODD_FLOATS),
    st.complex_numbers(),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.fractions(),
    st.decimals(),
    st.sampled_from(ODD_OBJECTS),
    hnp.arrays(hnp.scalar_dtypes(), ()).map(lambda a: a[()]),  # NumPy scalars of every dtype
)

shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)


def _view(a, how):
    """``a`` as an awkward array of the same values: the layouts NumPy can produce."""
    if how == "C" or not isinstance(a, np.ndarray) or a.ndim == 0:
        return a
    if how == "F":
        return np.asfortranarray(a)
    if how == "reversed":
        return a[::-1]
    if how == "strided":
        big = np.repeat(a, 2, axis=-1)
        return big[..., ::2]
    if how == "transposed":
        return a.T
    if how == "read-only":
        a = a.copy()
        a.flags.writeable = False
        return a
    if how == "byteswapped":
        return a.astype(a.dtype.newbyteorder("S")) if a.dtype.isnative and a.dtype.kind in "fiuc" \
            else a
    if how == "broadcast":
        return np.broadcast_to(a[:1], a.shape)  # zero strides, read-only
    if how == "masked":
        return np.ma.masked_array(a, mask=np.zeros(a.shape, bool))
    if how == "matrix" and a.ndim == 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asmatrix(a)
    if how == "list":
        return a.tolist()
    return a


VIEWS = ["C", "C", "C", "F", "reversed", "strided", "transposed", "read-only", "byteswapped",
         "broadcast", "masked", "matrix", "list"]


@st.composite
def any_arrays(draw):
    """Arrays of any dtype (strings, datetimes, structured, object ...) and any layout."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        a = draw(hnp.arrays(hnp.scalar_dtypes(), shapes))
    elif kind == 1:
        a = draw(hnp.arrays(hnp.nested_dtypes(max_itemsize=16), hnp.array_shapes(max_dims=2,
                                                                                 max_side=3)))
    elif kind == 2:
        items = draw(st.lists(scalars, max_size=4))
        a = np.empty(len(items), dtype=object)
        a[:] = items
    else:
        a = draw(real_arrays(shapes))
    return _view(a, draw(st.sampled_from(VIEWS)))


@st.composite
def nested_lists(draw):
    """Python lists, ragged or not, of anything."""
    return draw(st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=8))


garbage = st.one_of(scalars, any_arrays(), nested_lists(), st.dictionaries(st.text(max_size=3),
                                                                           scalars, max_size=3))

REAL_DTYPES = ["float64", "float32", "float16", "int64", "int32", "uint8", "bool", ">f8", "<f4"]


@st.composite
def real_arrays(draw, shape_strategy, dtypes=REAL_DTYPES):
    """Real arrays: NaN, infinity, subnormals, extremes included (or, half the time, tame
    values); any layout."""
    shape = draw(shape_strategy)
    dtype = np.dtype(draw(st.sampled_from(dtypes)))
    if dtype.kind == "f" and draw(st.booleans()):
        elements = st.floats(-1e3, 1e3, width=8 * dtype.itemsize if dtype.itemsize < 8 else 64)
    elif dtype.kind == "f":
        elements = st.floats(width=8 * dtype.itemsize if dtype.itemsize < 8 else 64)
    elif dtype.kind == "b":
        elements = st.booleans()
    else:
        info = np.iinfo(dtype)
        elements = st.integers(int(info.min), int(info.max))
    a = draw(hnp.arrays(dtype, shape, elements=elements))
    return _view(a, draw(st.sampled_from(VIEWS)))


# How likely an argument is valid, drawn once per example: some examples are all garbage,
# most have one or two bad arguments among good ones, which reaches the deeper checks.
_P_VALID = [0.6]


def maybe(draw, valid, p_valid=None, p_omit=0.15):
    """A valid value (from the strategy ``valid``), garbage, or OMIT."""
    p_valid = _P_VALID[0] if p_valid is None else p_valid
    u = draw(st.floats(0, 1))
    if u < p_omit:
        return OMIT
    if u < p_omit + (1.0 - p_omit) * p_valid:
        return draw(valid)
    return draw(garbage)


# ------------------------------------------------------------------------------ freezing

def freeze(obj, _depth=0):
    """A comparable snapshot of ``obj``: arrays by dtype, shape, strides, flags and bytes."""
    if _depth > 20:
        return ("deep", id(obj))
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            content = tuple(freeze(v, _depth + 1) for v in obj.ravel(order="K").tolist())
        else:
            content = obj.tobytes(order="A")
        mask = freeze(np.ma.getmaskarray(obj).data, _depth + 1) if np.ma.isMA(obj) else None
        return ("ndarray", type(obj), id(obj), obj.dtype.str, obj.dtype.descr, obj.shape,
                obj.strides, obj.flags.writeable, content, mask)
    if isinstance(obj, (list, tuple)):
        return (type(obj), id(obj) if isinstance(obj, list) else None,
                tuple(freeze(v, _depth + 1) for v in obj))
    if isinstance(obj, dict):
        return (dict, id(obj), tuple((repr(k), freeze(v, _depth + 1)) for k, v in obj.items()))
    if isinstance(obj, (set, bytearray)):
        return (type(obj), id(obj), repr(sorted(map(repr, obj)) if isinstance(obj, set)
                                         else bytes(obj)))
    if isinstance(obj, _FakeTensor):
        return (_FakeTensor, freeze(obj.value, _depth + 1))
    if isinstance(obj, memoryview):
        return (memoryview, obj.tobytes())
    return (type(obj), id(obj), repr(obj))


def _state(obj):
    """A snapshot of an object's attributes (None for None)."""
    if obj is None:
        return None
    return tuple((key, freeze(value)) for key, value in sorted(vars(obj).items()))


def _shares(a, others):
    return isinstance(a, np.ndarray) and any(
        isinstance(o, np.ndarray) and np.may_share_memory(a, o) for o in others)


# ------------------------------------------------------------------------------ one call

class Failure(AssertionError):
    pass


def _call(name, fn, args, kwargs, outputs=(), state=None, allowed=ALLOWED):
    """Call ``fn(*args, **kwargs)``; check the outcome, the inputs and ``state`` (an object
    whose attributes must not change when the call raises). Returns (ok, result)."""
    kwargs = {k: v for k, v in kwargs.items() if v is not OMIT}
    named = {f"arg{i}": v for i, v in enumerate(args)}
    named.update(kwargs)
    before = {k: freeze(v) for k, v in named.items()}
    state_before = _state(state)
    faulthandler.dump_traceback_later(HANG_SECONDS, exit=True)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            result = fn(*args, **kwargs)
        ok, outcome = True, "result"
    except allowed as exc:
        ok, outcome, result = False, type(exc).__name__, exc
    except BaseException as exc:
        raise Failure(f"{name}: unexpected {type(exc).__name__}: {exc}\n  args={args!r}\n"
                      f"  kwargs={kwargs!r}") from exc
    finally:
        faulthandler.cancel_dump_traceback_later()
    OUTCOMES[(name, outcome)] += 1
    # Documented outputs may change on success (and whatever shares memory with them).
    changeable = [named[k] for k in outputs if k in named] if ok else []
    for key, value in named.items():
        if ok and (any(value is c for c in changeable) or _shares(value, changeable)):
            continue
        if freeze(value) != before[key]:
            raise Failure(f"{name}: argument {key} was modified ({outcome})\n  args={args!r}\n"
                          f"  kwargs={kwargs!r}")
    if state is not None and not ok and _state(state) != state_before:
        raise Failure(f"{name}: raised {outcome} but changed {type(state).__name__}'s state\n"
                      f"  args={args!r}\n  kwargs={kwargs!r}")
    return ok, result


# ------------------------------------------------------------------------------ entry points

@st.composite
def x_and_channels(draw, min_dims=1):
    """(x, axis, C): a real array (or garbage), a channel axis and the channel count it
    implies (a plausible guess when the axis is bad)."""
    if draw(st.floats(0, 1)) < 0.75:
        x = draw(real_arrays(hnp.array_shapes(min_dims=min_dims, max_dims=4, min_side=0,
                                              max_side=5)))
    else:
        x = draw(garbage)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shape = np.shape(x)
        shape = tuple(shape) if isinstance(shape, tuple) else ()  # np.shape(np.float32)
    except Exception:  # ragged lists
        shape = ()
    ndim = len(shape)
    axis = draw(st.one_of(st.integers(-ndim - 1, ndim), st.sampled_from([None, OMIT]), scalars))
    if ndim == 1 or axis is None:
        C = 1
    elif ndim and isinstance(axis, int) and not isinstance(axis, bool) and -ndim <= axis < ndim:
        C = shape[axis]
    elif ndim and axis is OMIT and ndim > 1:
        C = shape[1]
    else:
        C = draw(st.integers(0, 4))
    return x, axis, C


def vectors(C):
    """Per-channel arguments: right length in many forms, wrong length, wrong kind."""
    right = real_arrays(st.just((C,)), dtypes=["float64", "float32", "float16", "int64",
                                               ">f8", "bool"])
    return st.one_of(right, right, st.integers(0, 6).flatmap(
        lambda n: real_arrays(st.just((n,)))), real_arrays(st.just((C, 1))))


def running_vectors(C):
    """Running statistics: writeable float arrays of length C (and the odd ones)."""
    def make(dtype, strided):
        a = np.zeros(2 * C if strided else C, dtype=dtype)
        return a[::2] if strided else a
    return st.one_of(st.builds(make, st.sampled_from(["float64", "float32", "float16", ">f8"]),
                               st.booleans()), vectors(C))


def outs(x, work_dtype):
    """out= candidates: fresh right, x itself, wrong shape / dtype, read-only, garbage."""
    shape = np.shape(x) if isinstance(x, np.ndarray) else (3,)
    cands = [np.empty(shape, work_dtype), np.empty(shape, work_dtype),
             np.empty(shape, np.float64), np.empty(shape[::-1] + (1,), work_dtype)]
    ro = np.empty(shape, work_dtype)
    ro.flags.writeable = False
    cands.append(ro)
    if isinstance(x, np.ndarray):
        cands.append(x)
    return st.sampled_from(cands)


def _work(x):
    try:
        dt = np.asarray(x).dtype
    except Exception:
        return np.dtype(np.float64)
    if dt.kind == "f" and dt.itemsize in (2, 4):
        return dt.newbyteorder("=")
    return np.dtype(np.float64)


def numbers_like():
    return st.one_of(st.floats(0, 2), st.sampled_from([0, 1, 0.1, 1e-5, np.float32(0.5)]))


def fuzz_moments(draw):
    x, axis, _ = draw(x_and_channels())
    _call("moments", bnfast.moments, (x,),
          dict(axis=axis, ddof=maybe(draw, st.integers(-3, 3)),
               n_threads=maybe(draw, st.sampled_from([None, 1, 2, 3]))))


def fuzz_moments_state(draw):
    x, axis, _ = draw(x_and_channels())
    n = np.shape(x)[0] if isinstance(x, np.ndarray) and x.ndim else 3
    _call("moments_state", bnfast.moments_state, (x,),
          dict(axis=axis, skipna=maybe(draw, st.booleans()),
               sample_weight=maybe(draw, real_arrays(st.just((n,))), p_omit=0.5),
               n_threads=maybe(draw, st.sampled_from([None, 1, 2]))))


def fuzz_merge_moments(draw):
    C = draw(st.integers(0, 4))
    right = real_arrays(st.just((C,)), dtypes=["float64", "float32", "int64"])
    count = st.one_of(st.integers(0, 5), right)

    @st.composite
    def state(draw_):
        return (maybe(draw_, count, p_omit=0), maybe(draw_, right, p_omit=0),
                maybe(draw_, right, p_omit=0))

    states = draw(st.one_of(st.lists(state(), max_size=3), st.lists(state(), max_size=3)
                            .map(tuple), st.lists(st.one_of(state(), garbage), max_size=3),
                            garbage))
    _call("merge_moments", bnfast.merge_moments, (states,), {})


def fuzz_forward(draw):
    x, axis, C = draw(x_and_channels())
    _call("batch_norm_forward", bnfast.batch_norm_forward, (x,),
          dict(gamma=maybe(draw, vectors(C)), beta=maybe(draw, vectors(C)), axis=axis,
               eps=maybe(draw, numbers_like()),
               running_mean=maybe(draw, running_vectors(C)),
               running_var=maybe(draw, running_vectors(C)),
               momentum=maybe(draw, numbers_like()), out=maybe(draw, outs(x, _work(x))),
               n_threads=maybe(draw, st.sampled_from([None, 1, 2])),
               virtual_batch_size=maybe(draw, st.integers(-1, 6), p_omit=0.7)),
          outputs=("out", "running_mean", "running_var"))


def fuzz_renorm(draw):
    x, axis, C = draw(x_and_channels())
    _call("batch_renorm_forward", bnfast.batch_renorm_forward,
          (x, maybe(draw, running_vectors(C), p_omit=0),
           maybe(draw, running_vectors(C), p_omit=0)),
          dict(gamma=maybe(draw, vectors(C)), beta=maybe(draw, vectors(C)), axis=axis,
               r_max=maybe(draw, st.floats(1.0, 4.0), p_omit=0),
               d_max=maybe(draw, st.floats(0.0, 6.0), p_omit=0),
               eps=maybe(draw, numbers_like()), momentum=maybe(draw, numbers_like()),
               out=maybe(draw, outs(x, _work(x))),
               n_threads=maybe(draw, st.sampled_from([None, 1, 2]))),
          outputs=("out", "arg1", "arg2"))


def fuzz_inference(draw):
    x, axis, C = draw(x_and_channels())
    _call("batch_norm_inference", bnfast.batch_norm_inference,
          (x, maybe(draw, vectors(C), p_omit=0), maybe(draw, vectors(C), p_omit=0)),
          dict(gamma=maybe(draw, vectors(C)), beta=maybe(draw, vectors(C)), axis=axis,
               eps=maybe(draw, numbers_like()), out=maybe(draw, outs(x, _work(x))),
               n_threads=maybe(draw, st.sampled_from([None, 1, 2]))),
          outputs=("out",))


def fuzz_backward(draw):
    x, axis, C = draw(x_and_channels())
    if isinstance(x, np.ndarray) and draw(st.booleans()):
        dy = draw(real_arrays(st.just(x.shape)))
    else:
        dy = draw(st.one_of(st.just(x), garbage))
    _call("batch_norm_backward", bnfast.batch_norm_backward,
          (dy, x, maybe(draw, vectors(C), p_omit=0), maybe(draw, vectors(C), p_omit=0)),
          dict(gamma=maybe(draw, vectors(C)), axis=axis, out=maybe(draw, outs(x, _work(x))),
               n_threads=maybe(draw, st.sampled_from([None, 1, 2])),
               virtual_batch_size=maybe(draw, st.integers(-1, 6), p_omit=0.8),
               renorm=maybe(draw, st.tuples(vectors(C), vectors(C)), p_omit=0.8)),
          outputs=("out",))


def fuzz_fold(draw):
    C = draw(st.integers(0, 4))
    weight = maybe(draw, real_arrays(st.sampled_from([(C,), (C, 3), (C, 2, 2, 2)])), p_omit=0)
    _call("fold_batch_norm", bnfast.fold_batch_norm,
          (weight, maybe(draw, vectors(C), p_omit=0), maybe(draw, vectors(C), p_omit=0),
           maybe(draw, vectors(C), p_omit=0), maybe(draw, vectors(C), p_omit=0),
           maybe(draw, vectors(C), p_omit=0)),
          dict(eps=maybe(draw, numbers_like())))


def _safe_size(v):
    """Keep BatchNorm(num_features) from really allocating gigabytes."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) \
            and 10**5 < v < 2**40:
        return 3
    return v


def fuzz_layer(draw):
    C = draw(st.integers(1, 4))
    kwargs = dict(axis=maybe(draw, st.sampled_from([1, -1, 0, None])),
                  eps=maybe(draw, numbers_like()),
                  momentum=maybe(draw, st.one_of(st.none(), numbers_like())),
                  affine=maybe(draw, st.booleans()),
                  track_running_stats=maybe(draw, st.booleans()),
                  dtype=maybe(draw, st.sampled_from([np.float32, np.float64, "float16"])),
                  n_threads=maybe(draw, st.sampled_from([None, 1, 2])),
                  virtual_batch_size=maybe(draw, st.sampled_from([None, 1, 2]), p_omit=0.8),
                  renorm=maybe(draw, st.booleans(), p_omit=0.8))
    num_features = _safe_size(maybe(draw, st.just(C), p_omit=0))
    allowed = ALLOWED + ((MemoryError,) if isinstance(num_features, int)
                         and num_features >= 2**31 else ())
    ok, bn = _call("BatchNorm", bnfast.BatchNorm, (num_features,), kwargs, allowed=allowed)
    if not ok:
        return
    C = bn.num_features
    for _ in range(draw(st.integers(1, 4))):
        method = draw(st.sampled_from(["forward", "forward", "forward", "backward",
                                       "backward", "train", "load_state_dict", "eval"]))
        if method == "forward":
            ax = bn.axis
            if draw(st.floats(0, 1)) < max(0.7, _P_VALID[0]):
                shape = list(draw(hnp.array_shapes(min_dims=2, max_dims=4, max_side=4)))
                if ax is not None and -len(shape) <= ax < len(shape):
                    shape[ax] = C
                x = draw(real_arrays(st.just(tuple(shape))))
            else:
                x = draw(garbage)
            _call("BatchNorm.forward", bn.forward, (x,), {}, state=bn)
        elif method == "backward":
            saved = bn._saved
            if saved is not None and draw(st.floats(0, 1)) < max(0.5, _P_VALID[0]):
                dy = draw(real_arrays(st.just(np.shape(saved[0]))))
            else:
                dy = draw(garbage)
            allowed = ALLOWED + ((RuntimeError,) if saved is None else ())
            _call("BatchNorm.backward", bn.backward, (dy,), {}, state=bn, allowed=allowed)
        elif method == "train":
            _call("BatchNorm.train", bn.train, (maybe(draw, st.booleans(), p_omit=0),), {},
                  state=bn)
        elif method == "eval":
            _call("BatchNorm.eval", bn.eval, (), {}, state=bn)
        else:
            sd = bn.state_dict() if draw(st.booleans()) else {}
            for key in list(sd):
                u = draw(st.integers(0, 9))
                if u == 0:
                    del sd[key]
                elif u == 1:
                    sd[key] = draw(garbage)
                elif u == 2:
                    sd[key] = _FakeTensor(draw(garbage))
            if draw(st.integers(0, 5)) == 0:
                sd[draw(st.text(max_size=6))] = draw(garbage)
            if draw(st.integers(0, 5)) == 0:
                sd = draw(garbage)
            strict = maybe(draw, st.booleans(), p_valid=0.8)
            _call("BatchNorm.load_state_dict", bn.load_state_dict, (sd,), dict(strict=strict),
                  state=bn, allowed=ALLOWED + (KeyError,))


def _is_false(v):
    return isinstance(v, (bool, np.bool_)) and not v


def fuzz_scaler(draw):
    if not HAVE_SKLEARN:
        return
    p_param = max(0.9, _P_VALID[0])
    params = dict(eps=maybe(draw, numbers_like(), p_valid=p_param),
                  momentum=maybe(draw, st.one_of(st.none(), st.floats(0, 1)), p_valid=p_param),
                  with_mean=maybe(draw, st.booleans(), p_valid=p_param),
                  with_std=maybe(draw, st.booleans(), p_valid=p_param),
                  copy=maybe(draw, st.booleans(), p_valid=p_param),
                  n_threads=maybe(draw, st.sampled_from([None, 1, 2]), p_valid=p_param))
    ok, scaler = _call("BatchNormScaler", bnfast.BatchNormScaler, (), params)
    if not ok:
        return
    p = draw(st.integers(1, 4))

    def X_arg():
        if draw(st.floats(0, 1)) < max(0.7, _P_VALID[0]):
            n = draw(st.integers(1, 6) | st.just(0))
            cols = p if draw(st.floats(0, 1)) < 0.8 else draw(st.integers(0, 5))
            return draw(real_arrays(st.just((n, cols))))
        return draw(garbage)

    for i in range(draw(st.integers(1, 4))):
        method = draw(st.sampled_from(["fit", "partial_fit", "fit_transform", "transform",
                                       "inverse_transform", "set_output"]))
        if i == 0 and draw(st.booleans()):
            method = "fit"  # fitted first more often: transform gets past NotFittedError
        X = X_arg()
        kwargs = {}
        outputs = ()
        if method in ("fit", "partial_fit", "fit_transform"):
            n = np.shape(X)[0] if isinstance(X, np.ndarray) and X.ndim else 3
            kwargs["sample_weight"] = maybe(draw, real_arrays(st.just((n,))), p_omit=0.5)
            args = (X,)
            if method == "fit_transform" and _is_false(scaler.copy):
                outputs = ("arg0",)
        elif method == "set_output":
            args = ()
            # Only valid configurations: scikit-learn's set_output stores anything, and its
            # fit_transform wrapper then raises after the fit (StandardScaler does the same).
            kwargs["transform"] = draw(st.sampled_from(["default", None, OMIT]))
        else:
            args = (X,)
            kwargs["copy"] = maybe(draw, st.sampled_from([None, True, False]))
            c = kwargs["copy"]
            if _is_false(c) or ((c is None or c is OMIT) and _is_false(scaler.copy)):
                outputs = ("arg0",)
        _call(f"BatchNormScaler.{method}", getattr(scaler, method), args, kwargs,
              outputs=outputs, state=scaler)


ENTRY_POINTS = {
    "moments": fuzz_moments,
    "moments_state": fuzz_moments_state,
    "merge_moments": fuzz_merge_moments,
    "batch_norm_forward": fuzz_forward,
    "batch_norm_inference": fuzz_inference,
    "batch_norm_backward": fuzz_backward,
    "batch_renorm_forward": fuzz_renorm,
    "fold_batch_norm": fuzz_fold,
    "BatchNorm": fuzz_layer,
    "BatchNormScaler": fuzz_scaler,
}


def check_one(data):
    """One fuzz example: an entry point and its arguments drawn from hypothesis ``data``."""
    name = data.draw(st.sampled_from(sorted(ENTRY_POINTS)), label="entry point")
    _P_VALID[0] = data.draw(st.sampled_from([0.5, 0.8, 0.95]), label="validity")
    ENTRY_POINTS[name](data.draw)


calls = st.data()

SETTINGS = dict(deadline=None, database=None, print_blob=True,
                suppress_health_check=list(HealthCheck))
