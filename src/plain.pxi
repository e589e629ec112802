# Recognizing the plain case (included by _kernels.pyx, whose docstring defines it): these
# helpers look at types, flags and shapes only, and never raise.

# The element types of x: what plain_call returns, and what the entry points dispatch on.
cdef enum:
    K_F32 = 0
    K_F64 = 1
    K_F16 = 2
    K_BF16 = 3

# bfloat16 arrays come as NumPy's user dtype of ml_dtypes (its type number, once the Python
# layer has seen one: set_bfloat16) or as the structured dtype of their bits that
# bnfast.torch views tensors with (bnfast._dtypes.BFLOAT16_BITS): neither needs ml_dtypes here.
cdef int bf16_typenum = -1
cdef object bf16_bits = None


def set_bfloat16(object dtype, object bits_dtype):
    """Tell the kernels which dtypes hold bfloat16: ml_dtypes' (or None) and the structured
    dtype of the bits (or None to keep the one set)."""
    global bf16_typenum, bf16_bits
    if dtype is not None:
        bf16_typenum = (<cnp.dtype>dtype).type_num
    if bits_dtype is not None:
        bf16_bits = bits_dtype


cdef int array_kind(cnp.ndarray arr) noexcept:
    """K_* of arr's element type, or -1 for a type the kernels do not take."""
    cdef int t = cnp.PyArray_TYPE(arr)
    if t == cnp.NPY_FLOAT32:
        return K_F32
    if t == cnp.NPY_FLOAT64:
        return K_F64
    if t == cnp.NPY_FLOAT16:
        return K_F16
    if t == bf16_typenum:
        return K_BF16
    if (t == cnp.NPY_VOID and bf16_bits is not None
            and cnp.PyArray_EquivTypes(arr.descr, <cnp.dtype>bf16_bits)):
        return K_BF16
    return -1

cdef bint plain_array(object a, int typenum, int ndim) noexcept:
    """a is exactly an ndarray of typenum, ndim dimensions, C-contiguous, aligned, native."""
    cdef cnp.ndarray arr
    if type(a) is not cnp.ndarray:
        return False
    arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_NDIM(arr) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISALIGNED(arr)
            and cnp.PyArray_ISNOTSWAPPED(arr))


cdef bint plain_like(object a, cnp.ndarray like) noexcept:
    """a is a plain array of like's dtype and shape."""
    cdef int i, ndim = cnp.PyArray_NDIM(like)
    if not plain_array(a, cnp.PyArray_TYPE(like), ndim):
        return False
    if (cnp.PyArray_TYPE(like) == cnp.NPY_VOID
            and not cnp.PyArray_EquivTypes((<cnp.ndarray>a).descr, like.descr)):
        return False
    for i in range(ndim):
        if (<cnp.ndarray>a).shape[i] != like.shape[i]:
            return False
    return True


cdef bint plain_vector(object a, intp C, bint write, bint f32=True) noexcept:
    """a is a plain float64 (or, with f32, float32) vector of length C, writeable if write."""
    if not (plain_array(a, cnp.NPY_FLOAT64, 1) or (f32 and plain_array(a, cnp.NPY_FLOAT32, 1))):
        return False
    if (<cnp.ndarray>a).shape[0] != C:
        return False
    return not write or cnp.PyArray_ISWRITEABLE(<cnp.ndarray>a)


cdef inline bint plain_optional(object a, intp C, bint write) noexcept:
    """a is None or a plain float32/float64 vector of length C."""
    return a is None or plain_vector(a, C, write)


cdef bint plain_threads(object n_threads, int *nt) noexcept:
    """n_threads is None (nt = 0: OpenMP's default) or a Python int in [1, 65536]."""
    nt[0] = 0
    if n_threads is None:
        return True
    if type(n_threads) is not int or not 1 <= n_threads <= 65536:
        return False
    nt[0] = n_threads
    return True


cdef bint plain_float(object v, double lo, double hi, bint lo_open, double *out) noexcept:
    """v is a Python float in [lo, hi] (with lo_open: (lo, hi]); hi = INFINITY excludes inf."""
    cdef double d
    if type(v) is not float:
        return False
    d = v
    if not (d >= lo and d <= hi) or (lo_open and d == lo) or d == INFINITY:
        return False
    out[0] = d
    return True


cdef int plain_call(object x, object axis, object n_threads, intp *outer, intp *C,
                    intp *inner, int *nt) noexcept:
    """x's kind (K_*) when x, axis and n_threads are plain and x has at least one channel and
    one element per channel, else -1; fills the (outer, C, inner) view's shape."""
    cdef cnp.ndarray arr
    cdef int kind, ndim, ax, i
    if type(x) is not cnp.ndarray:
        return -1
    arr = <cnp.ndarray>x
    kind = array_kind(arr)
    if kind < 0:
        return -1
    ndim = cnp.PyArray_NDIM(arr)
    if not plain_array(x, cnp.PyArray_TYPE(arr), ndim) or ndim < 2 or type(axis) is not int:
        return -1
    if not plain_threads(n_threads, nt) or not -ndim <= axis < ndim:
        return -1
    ax = axis % ndim
    outer[0] = 1
    inner[0] = 1
    for i in range(ndim):
        if i < ax:
            outer[0] *= arr.shape[i]
        elif i > ax:
            inner[0] *= arr.shape[i]
    C[0] = arr.shape[ax]
    if C[0] < 1 or outer[0] * inner[0] < 1:
        return -1
    return kind


cdef object new_like(cnp.ndarray like):
    """A new C-contiguous array of like's shape and dtype."""
    cdef int t = cnp.PyArray_TYPE(like)
    if t == cnp.NPY_FLOAT32 or t == cnp.NPY_FLOAT64 or t == cnp.NPY_FLOAT16:
        return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(like), like.shape, t, 0)
    return np.empty_like(like, order="C")  # bfloat16: like's own dtype object


cdef object plain_out(object out, cnp.ndarray like, object other):
    """A new array like `like`, or `out` when it is plain, writeable, of like's type and shape,
    and either identical to or disjoint from `like` and `other`; None otherwise."""
    cdef cnp.ndarray a
    cdef intp nbytes
    cdef char *ys
    cdef char *xs
    if out is None:
        return new_like(like)
    if not plain_like(out, like) or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out):
        return None
    nbytes = cnp.PyArray_NBYTES(like)
    ys = <char *>cnp.PyArray_DATA(<cnp.ndarray>out)
    for a in (like, other):
        xs = <char *>cnp.PyArray_DATA(a)
        if xs != ys and xs < ys + nbytes and ys < xs + nbytes:
            return None  # partial overlap: the validating path copies
    return out


cdef const double *as_doubles(object a, double *buf, intp C) noexcept:
    """A plain vector's values as doubles: its own data, or converted into buf; NULL for None."""
    cdef cnp.ndarray arr
    cdef const float *f
    cdef intp c
    if a is None:
        return NULL
    arr = <cnp.ndarray>a
    if cnp.PyArray_TYPE(arr) == cnp.NPY_FLOAT64:
        return <const double *>cnp.PyArray_DATA(arr)
    f = <const float *>cnp.PyArray_DATA(arr)
    for c in range(C):
        buf[c] = f[c]
    return buf


cdef inline double *data(object a) noexcept:
    return <double *>cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline cnp.ndarray new_vector(intp C):
    return cnp.PyArray_EMPTY(1, &C, cnp.NPY_FLOAT64, 0)


cdef double *alloc_doubles(intp n) except NULL:
    cdef double *buf = <double *>malloc(max(n, 1) * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    return buf


cdef void update_buffer(object running, const double *batch, intp C, double momentum,
                        double factor) noexcept:
    """update_running on a plain float32/float64 running buffer (nothing for None)."""
    if running is None:
        return
    if cnp.PyArray_TYPE(<cnp.ndarray>running) == cnp.NPY_FLOAT32:
        update_running_impl(<float *>cnp.PyArray_DATA(<cnp.ndarray>running), batch, C,
                            momentum, factor)
    else:
        update_running_impl(<double *>cnp.PyArray_DATA(<cnp.ndarray>running), batch, C,
                            momentum, factor)


cdef bint plain_activation(object activation, int *act) noexcept:
    """activation is None (act 0) or exactly the str "relu" (act 1)."""
    if activation is None:
        act[0] = 0
        return True
    if type(activation) is str and activation == "relu":
        act[0] = 1
        return True
    return False


cdef bint same_or_apart(object a, object b) noexcept:
    """Two plain arrays of one size are the same buffer or share no memory (a None is
    apart from anything)."""
    cdef intp nbytes
    cdef char *pa
    cdef char *pb
    if a is None or b is None:
        return True
    nbytes = cnp.PyArray_NBYTES(<cnp.ndarray>a)
    pa = <char *>cnp.PyArray_DATA(<cnp.ndarray>a)
    pb = <char *>cnp.PyArray_DATA(<cnp.ndarray>b)
    return pa == pb or not (pa < pb + nbytes and pb < pa + nbytes)


cdef bint plain_residual(object residual, cnp.ndarray x, object y) noexcept:
    """residual is None, or a plain array of x's dtype and shape that is y itself (out=residual)
    or shares no memory with y (it may share memory with x, which is only read)."""
    if residual is None:
        return True
    return plain_like(residual, x) and same_or_apart(residual, y)
