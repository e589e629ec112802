# Compiler directives (boundscheck, wraparound, cdivision, ...) are set once in setup.py.
"""bnfast's compiled kernels, and the one contract every operation keeps (docs/design.md §4).

One entry point per operation
-----------------------------
forward_train, forward_infer, backward, backward_sums, backward_input, moments,
moments_masked, merge_states, update_running, sparse_moments and sparse_scale (sparse.pxi)
each take Python objects and either compute
their result or return None. They recognize; they never reject:

1. The *plain case* is computed with no Python in between, and the result returned.
2. Anything else returns None, having looked only at the arguments' types, flags and
   shapes: nothing is read from an array, nothing is written, and nothing is raised (except
   MemoryError). None is also the answer for every argument the public function rejects, so
   the Python layer is the one place for error messages (docs/design.md §5).
3. The Python layer (bnfast/_functional.py, bnfast/_training.py) calls the entry point with
   the user's arguments first. On None it validates them, normalizes them into the plain
   case and calls the same entry point again; None then is a bnfast bug (RuntimeError).
   Empty inputs (no channel, no element) are answered by the Python layer before the call.

The plain case
--------------
- x (and dy): exactly an ndarray (no subclass) of float32, float64, float16 or bfloat16
  (ml_dtypes' dtype, or bnfast._dtypes.BFLOAT16_BITS), in native byte order, C-contiguous
  and aligned, with at least 2 dimensions, at least one channel and at
  least one element per channel (two for training); dy of x's dtype and shape. The work
  is done on the (outer, C, inner) view of docs/design.md §2.
- axis: a Python int in [-ndim, ndim). n_threads: None (OpenMP's default) or a Python int
  in [1, 65536].
- eps: a Python float in [0, inf); momentum: a Python float in [0, 1]; count: a Python
  float in (0, inf); factor: a Python float.
- Per-channel vectors: None where the argument is optional, otherwise plain float32 or
  float64 vectors of length C (float64 only where noted), writeable where updated in place
  (running_mean, running_var).
- out: None (a new array is returned) or a plain writeable array of x's dtype and shape
  that is exactly one of the inputs (in place) or shares no memory with them.
- The fused activation and residual (forward_train, forward_infer): activation None or
  exactly the str "relu"; residual None or a plain array of x's dtype and shape that is y's
  buffer itself (out=residual) or shares no memory with it. backward: activation likewise, y
  (the forward output, for the mask y > 0) given exactly when activation is "relu", plain, of
  x's dtype and shape, the same buffer as dx or disjoint from it; return_dresidual a bool.
- The three building blocks of the statistics and of the running-statistics rule state
  their own plain case in their docstrings, in the same style: moments_masked takes a plain
  2-D (samples, channels) matrix; merge_states and update_running take float64 state
  vectors and one running buffer. They are called only by the Python layer, always through
  the validated path, yet returning None rather than raising keeps one rule for the module.

What the Python layer normalizes to: contiguous native aligned arrays of the working dtype,
viewed as (outer, C, inner) with axis=1; float64 vectors; eps, momentum and count as
floats; n_threads None or an int; out plain, or None with a copy made afterwards.

Where the rest lives
--------------------
plan.pxi (blocks, chunks, tasks: results never depend on the thread count, docs/design.md
§3), stats.pxi (Welford statistics), elementwise.pxi (normalize and the forward),
backward.pxi, plain.pxi (recognizing the plain case), sparse.pxi (scipy.sparse matrices),
config.pxi (introspection), loops.pxi (the C loops of bn_loops.h). Each entry point below
checks the element type once and calls one fused implementation (float, double, bn_f16,
bn_bf16).
"""
from cython.parallel cimport prange
from libc.math cimport INFINITY, sqrt
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
cimport numpy as cnp
import numpy as np

cnp.import_array()

ctypedef cnp.npy_intp intp

cdef extern from "bn_half.h":
    # float16 and bfloat16 storage (bn_half.h): the bits, widened when loaded
    ctypedef struct bn_f16:
        unsigned short bits
    ctypedef struct bn_bf16:
        unsigned short bits

# The element types of x, dy and y: every kernel is specialized for each.
ctypedef fused floating:
    float
    double
    bn_f16
    bn_bf16

# float32 and float64 only: running buffers, the scaler's weighted statistics.
ctypedef fused real:
    float
    double

include "loops.pxi"
include "plan.pxi"
include "stats.pxi"
include "elementwise.pxi"
include "backward.pxi"
include "plain.pxi"
include "sparse.pxi"

# Ask for the processor count once, at import, before any call can run on another thread.
bn_num_procs()


# --- Entry points: one per operation (see the module docstring) -----------------------------

def forward_train(object x, object gamma, object beta, object axis, object eps,
                  object running_mean, object running_var, object momentum, object out,
                  object n_threads, object activation=None, object residual=None):
    """batch_norm_forward's plain case: (y, mean, invstd), running statistics updated; or
    None. y = relu(bn(x) + residual) with activation "relu" and a residual (module
    docstring)."""
    cdef intp outer, C, inner
    cdef int nt, act
    cdef int kind = plain_call(x, axis, n_threads, &outer, &C, &inner, &nt)
    cdef double e, mom
    cdef double *buf
    cdef const double *g
    cdef const double *b
    cdef double *m2
    cdef double *pmean
    cdef double *pinv
    cdef cnp.ndarray mean, invstd
    cdef object y
    cdef Plan p
    cdef void *px
    cdef void *py
    cdef const void *pres
    if (kind < 0 or outer * inner < 2 or not plain_float(eps, 0.0, INFINITY, False, &e)
            or not plain_float(momentum, 0.0, 1.0, False, &mom)):
        return None
    if not (plain_optional(gamma, C, False) and plain_optional(beta, C, False)
            and plain_optional(running_mean, C, True) and plain_optional(running_var, C, True)
            and plain_activation(activation, &act)):
        return None
    y = plain_out(out, <cnp.ndarray>x, x)
    if y is None or not plain_residual(residual, <cnp.ndarray>x, y):
        return None
    pres = NULL if residual is None else cnp.PyArray_DATA(<cnp.ndarray>residual)
    mean = new_vector(C)
    invstd = new_vector(C)
    p = make_plan(outer, C, inner, cnp.PyArray_ITEMSIZE(<cnp.ndarray>x))
    buf = alloc_doubles(5 * C)  # gamma, beta as doubles; m2; 2 * C of scratch
    g = as_doubles(gamma, buf, C)
    b = as_doubles(beta, buf + C, C)
    m2 = buf + 2 * C
    pmean, pinv = data(mean), data(invstd)
    px = cnp.PyArray_DATA(<cnp.ndarray>x)
    py = cnp.PyArray_DATA(<cnp.ndarray>y)
    try:
        with nogil:
            if kind == K_F32:
                train_impl(<const float *>px, <float *>py, &p, g, b, e, pmean, m2, pinv,
                           buf + 3 * C, <const float *>pres, act, nt)
            elif kind == K_F64:
                train_impl(<const double *>px, <double *>py, &p, g, b, e, pmean, m2, pinv,
                           buf + 3 * C, <const double *>pres, act, nt)
            elif kind == K_F16:
                train_impl(<const bn_f16 *>px, <bn_f16 *>py, &p, g, b, e, pmean, m2, pinv,
                           buf + 3 * C, <const bn_f16 *>pres, act, nt)
            else:
                train_impl(<const bn_bf16 *>px, <bn_bf16 *>py, &p, g, b, e, pmean, m2, pinv,
                           buf + 3 * C, <const bn_bf16 *>pres, act, nt)
        # Unbiased variance m2 / (m - 1) goes into running_var (PyTorch's convention).
        update_buffer(running_mean, pmean, C, mom, 1.0)
        update_buffer(running_var, m2, C, mom, 1.0 / (<double>(outer * inner) - 1.0))
    finally:
        free(buf)
    return y, mean, invstd


def forward_infer(object x, object running_mean, object running_var, object gamma,
                  object beta, object axis, object eps, object out, object n_threads,
                  object activation=None, object residual=None):
    """batch_norm_inference's plain case: y (with the activation and residual of
    forward_train); or None."""
    cdef intp outer, C, inner
    cdef int nt, act
    cdef const void *pres
    cdef int kind = plain_call(x, axis, n_threads, &outer, &C, &inner, &nt)
    cdef double e
    cdef double *buf
    cdef const double *vec[4]
    cdef object y
    cdef Plan p
    cdef void *px
    cdef void *py
    if kind < 0 or not plain_float(eps, 0.0, INFINITY, False, &e):
        return None
    if not (plain_vector(running_mean, C, False) and plain_vector(running_var, C, False)
            and plain_optional(gamma, C, False) and plain_optional(beta, C, False)
            and plain_activation(activation, &act)):
        return None
    y = plain_out(out, <cnp.ndarray>x, x)
    if y is None or not plain_residual(residual, <cnp.ndarray>x, y):
        return None
    pres = NULL if residual is None else cnp.PyArray_DATA(<cnp.ndarray>residual)
    p = make_plan(outer, C, inner, cnp.PyArray_ITEMSIZE(<cnp.ndarray>x))
    buf = alloc_doubles(6 * C)  # four vectors as doubles; 2 * C of scratch
    vec[0] = as_doubles(running_mean, buf, C)
    vec[1] = as_doubles(running_var, buf + C, C)
    vec[2] = as_doubles(gamma, buf + 2 * C, C)
    vec[3] = as_doubles(beta, buf + 3 * C, C)
    px = cnp.PyArray_DATA(<cnp.ndarray>x)
    py = cnp.PyArray_DATA(<cnp.ndarray>y)
    try:
        with nogil:
            if kind == K_F32:
                infer_impl(<const float *>px, <float *>py, &p, vec[0], vec[1], vec[2], vec[3], e,
                           buf + 4 * C, <const float *>pres, act, nt)
            elif kind == K_F64:
                infer_impl(<const double *>px, <double *>py, &p, vec[0], vec[1], vec[2], vec[3],
                           e, buf + 4 * C, <const double *>pres, act, nt)
            elif kind == K_F16:
                infer_impl(<const bn_f16 *>px, <bn_f16 *>py, &p, vec[0], vec[1], vec[2], vec[3],
                           e, buf + 4 * C, <const bn_f16 *>pres, act, nt)
            else:
                infer_impl(<const bn_bf16 *>px, <bn_bf16 *>py, &p, vec[0], vec[1], vec[2],
                           vec[3], e, buf + 4 * C, <const bn_bf16 *>pres, act, nt)
    finally:
        free(buf)
    return y


cdef int plain_backward(object dy, object x, object axis, object n_threads, object mean,
                        object invstd, intp *outer, intp *C, intp *inner, int *nt) noexcept:
    """x's kind when dy, x, axis, n_threads, mean and invstd are plain (dy like x), else -1."""
    cdef int kind = plain_call(x, axis, n_threads, outer, C, inner, nt)
    if kind < 0 or not plain_like(dy, <cnp.ndarray>x):
        return -1
    if not (plain_vector(mean, C[0], False) and plain_vector(invstd, C[0], False)):
        return -1
    return kind


def backward(object dy, object x, object mean, object invstd, object gamma, object axis,
             object out, object n_threads, object activation=None, object y=None,
             object return_dresidual=False):
    """batch_norm_backward's plain case: (dx, dgamma, dbeta), and dresidual with
    return_dresidual; or None. With activation "relu", dy counts where y > 0 only."""
    cdef intp outer, C, inner
    cdef int nt, act
    cdef object dres = None
    cdef void *pry = NULL
    cdef void *pdr = NULL
    cdef int kind = plain_backward(dy, x, axis, n_threads, mean, invstd, &outer, &C, &inner,
                                   &nt)
    cdef double *buf
    cdef const double *vec[3]
    cdef double *pdg
    cdef double *pdb
    cdef cnp.ndarray dgamma, dbeta
    cdef object dx
    cdef Plan p
    cdef void *pdy
    cdef void *px
    cdef void *pdx
    if (kind < 0 or not plain_optional(gamma, C, False)
            or not plain_activation(activation, &act) or type(return_dresidual) is not bool):
        return None
    if (y is None) if act else (y is not None):
        return None
    if y is not None and not plain_like(y, <cnp.ndarray>x):
        return None
    dx = plain_out(out, <cnp.ndarray>x, dy)
    if dx is None or not same_or_apart(dx, y):
        return None
    if y is not None:
        pry = cnp.PyArray_DATA(<cnp.ndarray>y)
    if return_dresidual:
        dres = new_like(<cnp.ndarray>x)
        pdr = cnp.PyArray_DATA(<cnp.ndarray>dres)
    dgamma = new_vector(C)
    dbeta = new_vector(C)
    p = make_plan(outer, C, inner, cnp.PyArray_ITEMSIZE(<cnp.ndarray>x), False, GRAD_TILE_C)
    buf = alloc_doubles(6 * C)  # three vectors as doubles; 3 * C of scratch
    vec[0] = as_doubles(mean, buf, C)
    vec[1] = as_doubles(invstd, buf + C, C)
    vec[2] = as_doubles(gamma, buf + 2 * C, C)
    pdy = cnp.PyArray_DATA(<cnp.ndarray>dy)
    px = cnp.PyArray_DATA(<cnp.ndarray>x)
    pdx = cnp.PyArray_DATA(<cnp.ndarray>dx)
    pdg, pdb = data(dgamma), data(dbeta)
    try:
        with nogil:
            if kind == K_F32:
                backward_impl(<const float *>pdy, <const float *>px, <float *>pdx, &p, vec[0],
                              vec[1], vec[2], pdg, pdb, buf + 3 * C, nt, <const float *>pry,
                              <float *>pdr)
            elif kind == K_F64:
                backward_impl(<const double *>pdy, <const double *>px, <double *>pdx, &p, vec[0],
                              vec[1], vec[2], pdg, pdb, buf + 3 * C, nt, <const double *>pry,
                              <double *>pdr)
            elif kind == K_F16:
                backward_impl(<const bn_f16 *>pdy, <const bn_f16 *>px, <bn_f16 *>pdx, &p, vec[0],
                              vec[1], vec[2], pdg, pdb, buf + 3 * C, nt, <const bn_f16 *>pry,
                              <bn_f16 *>pdr)
            else:
                backward_impl(<const bn_bf16 *>pdy, <const bn_bf16 *>px, <bn_bf16 *>pdx, &p,
                              vec[0], vec[1], vec[2], pdg, pdb, buf + 3 * C, nt,
                              <const bn_bf16 *>pry, <bn_bf16 *>pdr)
    finally:
        free(buf)
    if return_dresidual:
        return dx, dgamma, dbeta, dres
    return dx, dgamma, dbeta


def backward_sums(object dy, object x, object mean, object invstd, object axis,
                  object n_threads, object activation=None, object y=None):
    """The local half of the backward: (dgamma, dbeta) = (sum(dy * xhat), sum(dy)) per
    channel, with the bits batch_norm_backward computes them with (dy masked by y > 0 with
    activation "relu"); or None."""
    cdef intp outer, C, inner
    cdef int nt, act
    cdef void *pry = NULL
    cdef int kind = plain_backward(dy, x, axis, n_threads, mean, invstd, &outer, &C, &inner,
                                   &nt)
    cdef double *buf
    cdef const double *vec[2]
    cdef double *pdg
    cdef double *pdb
    cdef cnp.ndarray dgamma, dbeta
    cdef Plan p
    cdef void *pdy
    cdef void *px
    if kind < 0 or not plain_activation(activation, &act):
        return None
    if ((y is None) if act else (y is not None)) or not (y is None
                                                         or plain_like(y, <cnp.ndarray>x)):
        return None
    if y is not None:
        pry = cnp.PyArray_DATA(<cnp.ndarray>y)
    dgamma = new_vector(C)
    dbeta = new_vector(C)
    p = make_plan(outer, C, inner, cnp.PyArray_ITEMSIZE(<cnp.ndarray>x), False, GRAD_TILE_C)
    buf = alloc_doubles(2 * C)
    vec[0] = as_doubles(mean, buf, C)
    vec[1] = as_doubles(invstd, buf + C, C)
    pdy = cnp.PyArray_DATA(<cnp.ndarray>dy)
    px = cnp.PyArray_DATA(<cnp.ndarray>x)
    pdg, pdb = data(dgamma), data(dbeta)
    try:
        with nogil:
            if kind == K_F32:
                backward_sums_impl(<const float *>pdy, <const float *>px, &p, vec[0], vec[1],
                                   pdg, pdb, nt, <const float *>pry)
            elif kind == K_F64:
                backward_sums_impl(<const double *>pdy, <const double *>px, &p, vec[0], vec[1],
                                   pdg, pdb, nt, <const double *>pry)
            elif kind == K_F16:
                backward_sums_impl(<const bn_f16 *>pdy, <const bn_f16 *>px, &p, vec[0], vec[1],
                                   pdg, pdb, nt, <const bn_f16 *>pry)
            else:
                backward_sums_impl(<const bn_bf16 *>pdy, <const bn_bf16 *>px, &p, vec[0],
                                   vec[1], pdg, pdb, nt, <const bn_bf16 *>pry)
    finally:
        free(buf)
    return dgamma, dbeta


def backward_input(object dy, object x, object mean, object invstd, object gamma,
                   object dgamma, object dbeta, object count, object axis, object out,
                   object n_threads, object activation=None, object y=None,
                   object return_dresidual=False):
    """The elementwise half of the backward: dx from per-channel sums over count elements
    (possibly gathered from several processes), dy masked by y > 0 with activation "relu",
    and (dx, dresidual) with return_dresidual; or None."""
    cdef intp outer, C, inner
    cdef int nt, act
    cdef object dres = None
    cdef void *pry = NULL
    cdef void *pdr = NULL
    cdef int kind = plain_backward(dy, x, axis, n_threads, mean, invstd, &outer, &C, &inner,
                                   &nt)
    cdef double n
    cdef double *buf
    cdef const double *vec[5]
    cdef object dx
    cdef Plan p
    cdef void *pdy
    cdef void *px
    cdef void *pdx
    if kind < 0 or not plain_float(count, 0.0, INFINITY, True, &n):
        return None
    if not (plain_optional(gamma, C, False) and plain_vector(dgamma, C, False)
            and plain_vector(dbeta, C, False) and plain_activation(activation, &act)
            and type(return_dresidual) is bool):
        return None
    if ((y is None) if act else (y is not None)) or not (y is None
                                                         or plain_like(y, <cnp.ndarray>x)):
        return None
    dx = plain_out(out, <cnp.ndarray>x, dy)
    if dx is None or not same_or_apart(dx, y):
        return None
    if y is not None:
        pry = cnp.PyArray_DATA(<cnp.ndarray>y)
    if return_dresidual:
        dres = new_like(<cnp.ndarray>x)
        pdr = cnp.PyArray_DATA(<cnp.ndarray>dres)
    p = make_plan(outer, C, inner, cnp.PyArray_ITEMSIZE(<cnp.ndarray>x), False, GRAD_TILE_C)
    buf = alloc_doubles(8 * C)  # five vectors as doubles; 3 * C of scratch
    vec[0] = as_doubles(mean, buf, C)
    vec[1] = as_doubles(invstd, buf + C, C)
    vec[2] = as_doubles(gamma, buf + 2 * C, C)
    vec[3] = as_doubles(dgamma, buf + 3 * C, C)
    vec[4] = as_doubles(dbeta, buf + 4 * C, C)
    pdy = cnp.PyArray_DATA(<cnp.ndarray>dy)
    px = cnp.PyArray_DATA(<cnp.ndarray>x)
    pdx = cnp.PyArray_DATA(<cnp.ndarray>dx)
    try:
        with nogil:
            if kind == K_F32:
                grad_input(<const float *>pdy, <const float *>px, <float *>pdx, &p, vec[0],
                           vec[1], vec[2], vec[3], vec[4], n, buf + 5 * C, nt,
                           <const float *>pry, <float *>pdr)
            elif kind == K_F64:
                grad_input(<const double *>pdy, <const double *>px, <double *>pdx, &p, vec[0],
                           vec[1], vec[2], vec[3], vec[4], n, buf + 5 * C, nt,
                           <const double *>pry, <double *>pdr)
            elif kind == K_F16:
                grad_input(<const bn_f16 *>pdy, <const bn_f16 *>px, <bn_f16 *>pdx, &p, vec[0],
                           vec[1], vec[2], vec[3], vec[4], n, buf + 5 * C, nt,
                           <const bn_f16 *>pry, <bn_f16 *>pdr)
            else:
                grad_input(<const bn_bf16 *>pdy, <const bn_bf16 *>px, <bn_bf16 *>pdx, &p,
                           vec[0], vec[1], vec[2], vec[3], vec[4], n, buf + 5 * C, nt,
                           <const bn_bf16 *>pry, <bn_bf16 *>pdr)
    finally:
        free(buf)
    if return_dresidual:
        return dx, dres
    return dx


def moments(object x, object axis, object n_threads):
    """Per-channel (mean, m2) (m2: the sum of squared deviations) in the plain case; or
    None."""
    cdef intp outer, C, inner
    cdef int nt
    cdef int kind = plain_call(x, axis, n_threads, &outer, &C, &inner, &nt)
    cdef cnp.ndarray mean, m2
    cdef double *pm
    cdef double *pm2
    cdef Plan p
    cdef void *px
    if kind < 0:
        return None
    mean = new_vector(C)
    m2 = new_vector(C)
    pm, pm2 = data(mean), data(m2)
    p = make_plan(outer, C, inner, cnp.PyArray_ITEMSIZE(<cnp.ndarray>x))
    px = cnp.PyArray_DATA(<cnp.ndarray>x)
    with nogil:
        if kind == K_F32:
            channel_moments(<const float *>px, &p, pm, pm2, nt)
        elif kind == K_F64:
            channel_moments(<const double *>px, &p, pm, pm2, nt)
        elif kind == K_F16:
            channel_moments(<const bn_f16 *>px, &p, pm, pm2, nt)
        else:
            channel_moments(<const bn_bf16 *>px, &p, pm, pm2, nt)
    return mean, m2


def moments_masked(object x, object weights, object n_threads):
    """Per-column weighted Welford state (count, mean, m2) of a 2-D (N, C) sample matrix,
    NaN skipped; or None.

    Plain case: x a plain 2-D float32/float64 array with N >= 1 and C >= 1; weights None or
    a plain float64 vector of length N. count is the sum of the weights of the values counted.
    """
    cdef int nt, typenum
    cdef intp N, C
    cdef cnp.ndarray count, mean, m2
    cdef double *pn
    cdef double *pm
    cdef double *pm2
    cdef const double *w
    cdef Plan p
    cdef void *px
    if not plain_threads(n_threads, &nt):
        return None
    if plain_array(x, cnp.NPY_FLOAT32, 2):
        typenum = cnp.NPY_FLOAT32
    elif plain_array(x, cnp.NPY_FLOAT64, 2):
        typenum = cnp.NPY_FLOAT64
    else:
        return None
    N = (<cnp.ndarray>x).shape[0]
    C = (<cnp.ndarray>x).shape[1]
    if N < 1 or C < 1 or not (weights is None or plain_vector(weights, N, False, False)):
        return None
    count = new_vector(C)
    mean = new_vector(C)
    m2 = new_vector(C)
    pn, pm, pm2 = data(count), data(mean), data(m2)
    w = NULL if weights is None else data(weights)
    p = make_plan(N, C, 1, cnp.PyArray_ITEMSIZE(<cnp.ndarray>x), True, MASKED_TILE_C)
    px = cnp.PyArray_DATA(<cnp.ndarray>x)
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            masked_moments(<const float *>px, w, &p, pn, pm, pm2, nt)
        else:
            masked_moments(<const double *>px, w, &p, pn, pm, pm2, nt)
    return count, mean, m2


def merge_states(object count, object mean, object m2, object count_b, object mean_b,
                 object m2_b):
    """Merge the Welford state (count_b, mean_b, m2_b) into (count, mean, m2) in place and
    return the latter; or None.

    Plain case: six plain float64 vectors of one length, the first three writeable. Entries
    with count_b == 0 are left as they are. This is the merge the kernels use between blocks
    and chunks.
    """
    cdef intp C, c
    cdef double wb, wab
    cdef double *n
    cdef double *mu
    cdef double *s
    cdef const double *nb
    cdef const double *mub
    cdef const double *sb
    if not plain_array(count, cnp.NPY_FLOAT64, 1):
        return None
    C = (<cnp.ndarray>count).shape[0]
    if not (plain_vector(count, C, True, False) and plain_vector(mean, C, True, False)
            and plain_vector(m2, C, True, False) and plain_vector(count_b, C, False, False)
            and plain_vector(mean_b, C, False, False) and plain_vector(m2_b, C, False, False)):
        return None
    n, mu, s = data(count), data(mean), data(m2)
    nb, mub, sb = data(count_b), data(mean_b), data(m2_b)
    with nogil:
        for c in range(C):
            if nb[c] > 0:
                chan_weights(n[c], nb[c], &wb, &wab)
                chan_apply(&mu[c], &s[c], mub[c], sb[c], wb, wab)
                n[c] = n[c] + nb[c]
    return count, mean, m2


def update_running(object buffer, object batch, object momentum, object factor):
    """buffer = (1 - momentum) * buffer + momentum * (factor * batch), computed in float64,
    in place; returns buffer, or None.

    Plain case: buffer a plain writeable float32/float64 vector, batch a plain float64 vector
    of the same length, momentum a Python float in [0, 1], factor a Python float. The
    training forward updates running_mean (factor 1) and running_var (factor 1 / (m - 1))
    with this same arithmetic.
    """
    cdef intp C
    cdef double mom
    if (not plain_float(momentum, 0.0, 1.0, False, &mom) or type(factor) is not float
            or type(buffer) is not cnp.ndarray):
        return None
    C = (<cnp.ndarray>buffer).shape[0] if cnp.PyArray_NDIM(<cnp.ndarray>buffer) == 1 else -1
    if C < 0 or not plain_vector(buffer, C, True) or not plain_vector(batch, C, False, False):
        return None
    update_buffer(buffer, data(batch), C, mom, <double>factor)
    return buffer


include "config.pxi"
