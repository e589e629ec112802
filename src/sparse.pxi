# Sparse matrices, CSR and CSC (included by _kernels.pyx): per-column weighted statistics
# with the implicit zeros counted and NaN skipped, and the column scaling of the stored values
# (BatchNormScaler on scipy.sparse input, with_mean=False).
#
# Relies on: intp, floating, ceil_div, run_tasks / n_threads_for / DYNAMIC / GUIDED
# (plan.pxi); plain_array / plain_vector / plain_threads / plain_out / new_vector / data
# (plain.pxi); bn_well_shifted (bn_loops.h).
#
# The statistics take two passes (three for a column whose first-pass mean was too coarse a
# shift): the mean of every column (its implicit zeros included), then sums shifted by that
# mean, which the implicit zeros join in closed form. A shift that close to the mean keeps
# M2 = q - s^2 / n free of cancellation (bn_well_shifted, checked per column on the whole
# column), so the chunks' shifted sums simply add up: no merge between chunks.
#
# The work is cut by the matrix's shape and stored count (nnz) alone, never by the thread
# count, and chunk sums are added in chunk order: every result is bit-identical for every
# thread count (docs/design.md §3).
#
# The structure (indptr, indices) is read as given: the Python layer checks it first
# (bnfast/_scaler_sparse.py). The loops still clamp every index into range, so even a malformed
# matrix can only give wrong numbers, never a read or write outside the arrays.

from libc.math cimport NAN

ctypedef fused sparse_index:
    cnp.int32_t
    cnp.int64_t

cdef extern from "bn_loops.h" nogil:
    int bn_well_shifted(double s, double q, double n)

cdef enum:
    # CSR: chunks of rows (the parallel tasks, whose sums are added in order) hold at least
    # this many stored values ...
    SPARSE_MIN_CHUNK = 65536
    # ... and there are at most SPARSE_TASKS of them ...
    SPARSE_TASKS = 64
    # ... and their sums (4 doubles per column and chunk) stay within about one byte per
    # stored value: chunks <= nnz / (SPARSE_STATE_SHARE * n_cols).
    SPARSE_STATE_SHARE = 32
    # Columns per task of the per-column steps (CSR) and of the statistics (CSC).
    SPARSE_COLS = 256
    # Stored values per task of the scaling pass.
    SPARSE_SCALE_SEGMENT = 65536


cdef struct ColumnSums:
    # One column's sums over one CSR chunk. First pass: the weight of its non-NaN stored
    # values, their weighted sum, and the count and weight of its stored values (NaN
    # included). Second pass (s, q in the first two slots): sum w d and sum w d^2, d = x - k.
    double w, sx, stored, wstored


cdef struct SparseJob:
    const void *indices
    const void *indptr
    bint wide               # int64 indices and indptr, else int32
    const double *w         # per-row weights, or NULL (all ones)
    intp n_rows, n_cols, nnz
    double w_total          # the sum of all the rows' weights
    intp rows_per_chunk, n_chunks
    ColumnSums *sums        # CSR: [chunk * n_cols + c]
    double *shift           # per column: k, the first pass's mean
    double *zeros           # per column: the weight of its implicit zeros
    char *again             # per column: summed again around a refined shift
    const char *only        # the second pass covers these columns only (NULL: all)
    double *count           # results, per column
    double *mean
    double *m2
    const double *factors   # scaling: per column
    void *out


cdef inline intp clamp_index(intp i, intp n) noexcept nogil:
    return 0 if i < 0 else (n if i > n else i)


cdef inline double zeros_weight(const SparseJob *j, double stored, double wstored) noexcept nogil:
    """The weight of a column's implicit zeros (the rows without a stored value)."""
    if stored >= j.n_rows:
        return 0.0  # every row stored: no rounding of w_total - wstored
    return max(j.w_total - wstored, 0.0)


cdef inline double counted_weight(const SparseJob *j, double w, double wstored) noexcept nogil:
    """The weight of a column's rows whose value is not NaN: all the weight less that of its
    NaN, so that every column without NaN gets the same bits (one n_samples_seen_)."""
    return max(j.w_total - (wstored - w), 0.0)


cdef inline bint finish_column(const SparseJob *j, intp c, double s, double q,
                               bint check) noexcept nogil:
    """A column's mean and M2 from its shifted sums (the implicit zeros added in closed form);
    False, with nothing written, when check is set and the shift was too far off."""
    cdef double n = j.count[c]
    cdef double k = j.shift[c]
    cdef double wz = j.zeros[c]
    if n == 0:
        j.mean[c] = j.m2[c] = 0.0
        return True
    s -= wz * k
    q += wz * (k * k)
    if check and not bn_well_shifted(s, q, n):
        j.shift[c] = k + s / n
        return False
    j.mean[c] = k + s / n
    j.m2[c] = q - s * (s / n)
    return True


# --- CSR: chunks of rows, each summing into its own row of ColumnSums -------------------------

cdef void csr_pass(const floating *x, const sparse_index *indices, const sparse_index *indptr,
                   const SparseJob *j, intp chunk, bint first) noexcept nogil:
    """One pass over the rows of one chunk: the first pass's sums, or the shifted sums."""
    cdef intp C = j.n_cols
    cdef intp r0 = chunk * j.rows_per_chunk
    cdef intp r1 = min(r0 + j.rows_per_chunk, j.n_rows)
    cdef ColumnSums *acc = j.sums + chunk * C
    cdef const double *k = j.shift
    cdef const char *only = j.only
    cdef ColumnSums *a
    cdef intp r, i, i1, c
    cdef double wr, v
    for c in range(C):
        if only == NULL or only[c]:
            acc[c].w = acc[c].sx = acc[c].stored = acc[c].wstored = 0.0
    for r in range(r0, r1):
        wr = 1.0 if j.w == NULL else j.w[r]
        i1 = clamp_index(indptr[r + 1], j.nnz)
        for i in range(clamp_index(indptr[r], j.nnz), i1):
            c = indices[i]
            if c < 0 or c >= C:
                continue
            a = &acc[c]
            v = x[i]
            if first:
                a.stored += 1.0
                a.wstored += wr
                if v == v:
                    a.w += wr
                    a.sx += wr * v
            elif v == v and (only == NULL or only[c]):
                v -= k[c]
                a.w += wr * v
                a.sx += wr * (v * v)


cdef void csr_first_body(const floating *x, void *job, intp task) noexcept nogil:
    cdef SparseJob *j = <SparseJob *>job
    if j.wide:
        csr_pass(x, <const cnp.int64_t *>j.indices, <const cnp.int64_t *>j.indptr, j, task, True)
    else:
        csr_pass(x, <const cnp.int32_t *>j.indices, <const cnp.int32_t *>j.indptr, j, task, True)


cdef void csr_shifted_body(const floating *x, void *job, intp task) noexcept nogil:
    cdef SparseJob *j = <SparseJob *>job
    if j.wide:
        csr_pass(x, <const cnp.int64_t *>j.indices, <const cnp.int64_t *>j.indptr, j, task,
                 False)
    else:
        csr_pass(x, <const cnp.int32_t *>j.indices, <const cnp.int32_t *>j.indptr, j, task,
                 False)


cdef void csr_mean_body(const double *unused, void *job, intp task) noexcept nogil:
    """Columns [task * SPARSE_COLS, ...): the first pass's chunk sums added in chunk order,
    giving the count, the implicit zeros' weight and the shift (the mean)."""
    cdef SparseJob *j = <SparseJob *>job
    cdef intp C = j.n_cols
    cdef intp c, chunk
    cdef double w, sx, stored, wstored, n
    cdef const ColumnSums *a
    for c in range(task * SPARSE_COLS, min((task + 1) * SPARSE_COLS, C)):
        w = sx = stored = wstored = 0.0
        for chunk in range(j.n_chunks):
            a = &j.sums[chunk * C + c]
            w += a.w
            sx += a.sx
            stored += a.stored
            wstored += a.wstored
        j.zeros[c] = zeros_weight(j, stored, wstored)
        n = counted_weight(j, w, wstored)
        j.count[c] = n
        j.shift[c] = sx / n if n > 0 else 0.0


cdef void csr_finish_body(const double *unused, void *job, intp task) noexcept nogil:
    """Columns [task * SPARSE_COLS, ...): the shifted chunk sums added in chunk order, and the
    mean and M2; a column whose shift was too coarse is marked to be summed again (first
    round, j.only NULL), or finished as it is (second round)."""
    cdef SparseJob *j = <SparseJob *>job
    cdef intp C = j.n_cols
    cdef intp c, chunk
    cdef double s, q
    cdef const ColumnSums *a
    for c in range(task * SPARSE_COLS, min((task + 1) * SPARSE_COLS, C)):
        if j.only != NULL and not j.only[c]:
            continue
        s = q = 0.0
        for chunk in range(j.n_chunks):
            a = &j.sums[chunk * C + c]
            s += a.w
            q += a.sx
        j.again[c] = not finish_column(j, c, s, q, j.only == NULL)


cdef int csr_moments(const floating *x, SparseJob *j, int nt) except -1 nogil:
    """CSR statistics into j.count, j.mean, j.m2 (j.shift, j.zeros, j.again: scratch)."""
    cdef intp c, redo = 0
    cdef intp n_cols_tasks = ceil_div(j.n_cols, SPARSE_COLS)
    cdef int nt_rows = n_threads_for(nt, j.nnz + j.n_rows, j.n_chunks)
    cdef int nt_cols = n_threads_for(nt, j.n_chunks * j.n_cols, n_cols_tasks)
    j.sums = <ColumnSums *>malloc(max(j.n_chunks * j.n_cols, 1) * sizeof(ColumnSums))
    if j.sums == NULL:
        with gil:
            raise MemoryError()
    j.only = NULL
    run_tasks(csr_first_body[floating], x, j, j.n_chunks, nt_rows, DYNAMIC)
    run_tasks(csr_mean_body, <const double *>NULL, j, n_cols_tasks, nt_cols, DYNAMIC)
    run_tasks(csr_shifted_body[floating], x, j, j.n_chunks, nt_rows, DYNAMIC)
    run_tasks(csr_finish_body, <const double *>NULL, j, n_cols_tasks, nt_cols, DYNAMIC)
    for c in range(j.n_cols):
        redo += j.again[c]
    if redo:  # rare: a first-pass mean too coarse to shift by (a huge offset, say)
        j.only = j.again
        run_tasks(csr_shifted_body[floating], x, j, j.n_chunks, nt_rows, DYNAMIC)
        run_tasks(csr_finish_body, <const double *>NULL, j, n_cols_tasks, nt_cols, DYNAMIC)
    free(j.sums)
    return 0


# --- CSC: one task per range of columns, each column's values contiguous -----------------------

cdef void csc_column(const floating *x, const sparse_index *indices,
                     const sparse_index *indptr, const SparseJob *j, intp c) noexcept nogil:
    """One column's statistics, with the same passes as the CSR chunks."""
    cdef intp a = clamp_index(indptr[c], j.nnz)
    cdef intp b = max(a, clamp_index(indptr[c + 1], j.nnz))
    cdef intp i, row, round_
    cdef double w = 0.0, sx = 0.0, wstored = 0.0, n, wr, v, s, q
    for i in range(a, b):
        row = indices[i]
        wr = 0.0 if row < 0 or row >= j.n_rows else (1.0 if j.w == NULL else j.w[row])
        wstored += wr
        v = x[i]
        if v == v:
            w += wr
            sx += wr * v
    j.zeros[c] = zeros_weight(j, <double>(b - a), wstored)
    n = counted_weight(j, w, wstored)
    j.count[c] = n
    j.shift[c] = sx / n if n > 0 else 0.0
    for round_ in range(2):
        s = q = 0.0
        for i in range(a, b):
            row = indices[i]
            wr = 0.0 if row < 0 or row >= j.n_rows else (1.0 if j.w == NULL else j.w[row])
            v = x[i]
            if v == v:
                v -= j.shift[c]
                s += wr * v
                q += wr * (v * v)
        if finish_column(j, c, s, q, round_ == 0):
            break


cdef void csc_body(const floating *x, void *job, intp task) noexcept nogil:
    cdef SparseJob *j = <SparseJob *>job
    cdef intp c
    for c in range(task * SPARSE_COLS, min((task + 1) * SPARSE_COLS, j.n_cols)):
        if j.wide:
            csc_column(x, <const cnp.int64_t *>j.indices, <const cnp.int64_t *>j.indptr, j, c)
        else:
            csc_column(x, <const cnp.int32_t *>j.indices, <const cnp.int32_t *>j.indptr, j, c)


cdef bint plain_sparse(object values, object indices, object indptr, object shape, object csr,
                       object n_threads, int *typenum, bint *wide, intp *n_rows,
                       intp *n_cols, int *nt) noexcept:
    """values, indices, indptr, shape, csr and n_threads make the plain case of the sparse
    entry points (their docstrings)."""
    cdef intp nnz, n_major
    if type(csr) is not bool or type(shape) is not tuple or len(shape) != 2:
        return False
    if type(shape[0]) is not int or type(shape[1]) is not int or not plain_threads(n_threads,
                                                                                   nt):
        return False
    if not (1 <= shape[0] < 2 ** 62 and 1 <= shape[1] < 2 ** 62):
        return False
    n_rows[0] = shape[0]
    n_cols[0] = shape[1]
    if plain_array(values, cnp.NPY_FLOAT32, 1):
        typenum[0] = cnp.NPY_FLOAT32
    elif plain_array(values, cnp.NPY_FLOAT64, 1):
        typenum[0] = cnp.NPY_FLOAT64
    else:
        return False
    if plain_array(indices, cnp.NPY_INT32, 1) and plain_array(indptr, cnp.NPY_INT32, 1):
        wide[0] = False
    elif plain_array(indices, cnp.NPY_INT64, 1) and plain_array(indptr, cnp.NPY_INT64, 1):
        wide[0] = True
    else:
        return False
    nnz = (<cnp.ndarray>values).shape[0]
    n_major = n_rows[0] if csr else n_cols[0]
    return (<cnp.ndarray>indices).shape[0] == nnz and (<cnp.ndarray>indptr).shape[0] == n_major + 1


def sparse_moments(object values, object indices, object indptr, object shape, object csr,
                   object weights, object n_threads):
    """Per-column weighted Welford state (count, mean, m2) of a CSR (csr True) or CSC (csr
    False) matrix, its implicit zeros counted and NaN skipped; or None.

    Plain case: values a plain float32/float64 vector of the nnz stored values; indices and
    indptr plain vectors, both int32 or both int64, of lengths nnz and n_major + 1 (n_major:
    rows for CSR, columns for CSC); shape a tuple of two Python ints (n_rows, n_cols), both at
    least 1; csr a bool; weights None or a plain float64 vector of length n_rows; n_threads
    as everywhere. count is the sum of the weights of the rows whose value is not NaN; a
    column with nothing counted gets count, mean and m2 0. The structure is the caller's to
    check (the header of sparse.pxi): canonical (indptr nondecreasing from 0 to nnz, indices
    in range, none repeated within a row or column).
    """
    cdef int typenum, nt
    cdef bint wide, by_rows
    cdef intp n_rows, n_cols, r, n_tasks
    cdef SparseJob j
    cdef cnp.ndarray count, mean, m2
    cdef const void *px
    cdef double wt = 0.0
    cdef double *scratch
    if not plain_sparse(values, indices, indptr, shape, csr, n_threads, &typenum, &wide,
                        &n_rows, &n_cols, &nt):
        return None
    if not (weights is None or plain_vector(weights, n_rows, False, False)):
        return None
    by_rows = csr
    j.indices = cnp.PyArray_DATA(<cnp.ndarray>indices)
    j.indptr = cnp.PyArray_DATA(<cnp.ndarray>indptr)
    j.wide = wide
    j.w = NULL if weights is None else data(weights)
    j.n_rows, j.n_cols = n_rows, n_cols
    j.nnz = (<cnp.ndarray>values).shape[0]
    count, mean, m2 = new_vector(n_cols), new_vector(n_cols), new_vector(n_cols)
    j.count, j.mean, j.m2 = data(count), data(mean), data(m2)
    scratch = alloc_doubles(2 * n_cols + ceil_div(n_cols, sizeof(double)))
    j.shift, j.zeros = scratch, scratch + n_cols
    j.again = <char *>(scratch + 2 * n_cols)
    px = cnp.PyArray_DATA(<cnp.ndarray>values)
    try:
        with nogil:
            if j.w == NULL:
                wt = <double>n_rows
            else:
                for r in range(n_rows):
                    wt += j.w[r]
            j.w_total = wt
            if by_rows:
                # Chunks of rows by the shape and nnz alone (never by the thread count).
                j.n_chunks = max(1, min(SPARSE_TASKS, j.nnz // SPARSE_MIN_CHUNK,
                                        j.nnz // (SPARSE_STATE_SHARE * n_cols)))
                j.rows_per_chunk = ceil_div(n_rows, j.n_chunks)
                j.n_chunks = ceil_div(n_rows, j.rows_per_chunk)
                if typenum == cnp.NPY_FLOAT32:
                    csr_moments(<const float *>px, &j, nt)
                else:
                    csr_moments(<const double *>px, &j, nt)
            else:
                n_tasks = ceil_div(n_cols, SPARSE_COLS)
                nt = n_threads_for(nt, j.nnz + n_cols, n_tasks)
                if typenum == cnp.NPY_FLOAT32:
                    run_tasks(csc_body[float], <const float *>px, &j, n_tasks, nt, DYNAMIC)
                else:
                    run_tasks(csc_body[double], <const double *>px, &j, n_tasks, nt, DYNAMIC)
    finally:
        free(scratch)
    return count, mean, m2


# --- Scaling the stored values of a CSR matrix by column ---------------------------------------

cdef void scale_segment(const floating *x, const sparse_index *indices, SparseJob *j,
                        intp task) noexcept nogil:
    cdef intp i0 = task * SPARSE_SCALE_SEGMENT
    cdef intp i1 = min(i0 + SPARSE_SCALE_SEGMENT, j.nnz)
    cdef floating *y = <floating *>j.out
    cdef intp i, c
    for i in range(i0, i1):
        c = indices[i]
        # An index out of range (a malformed matrix) gives NaN, never a read outside factors.
        y[i] = <floating>(<double>x[i] * (j.factors[c] if 0 <= c < j.n_cols else NAN))


cdef void scale_body(const floating *x, void *job, intp task) noexcept nogil:
    cdef SparseJob *j = <SparseJob *>job
    if j.wide:
        scale_segment(x, <const cnp.int64_t *>j.indices, j, task)
    else:
        scale_segment(x, <const cnp.int32_t *>j.indices, j, task)


def sparse_scale(object values, object indices, object factors, object out,
                 object n_threads):
    """y[i] = values[i] * factors[indices[i]], computed in float64 and rounded to values'
    dtype: the column scaling of a CSR matrix's stored values; returns y (out, or a new
    vector when out is None), or None.

    Plain case: values a plain float32/float64 vector; indices a plain int32 or int64 vector
    of values' length; factors a plain float64 vector (one per column; an index outside it
    gives NaN); out None or a plain writeable vector of values' dtype and length that is
    values itself or shares no memory with it; n_threads as everywhere.
    """
    cdef int typenum, nt
    cdef intp n_tasks
    cdef SparseJob j
    cdef const void *px
    cdef object y
    if plain_array(values, cnp.NPY_FLOAT32, 1):
        typenum = cnp.NPY_FLOAT32
    elif plain_array(values, cnp.NPY_FLOAT64, 1):
        typenum = cnp.NPY_FLOAT64
    else:
        return None
    j.nnz = (<cnp.ndarray>values).shape[0]
    if plain_array(indices, cnp.NPY_INT32, 1):
        j.wide = False
    elif plain_array(indices, cnp.NPY_INT64, 1):
        j.wide = True
    else:
        return None
    if (<cnp.ndarray>indices).shape[0] != j.nnz or not plain_threads(n_threads, &nt):
        return None
    if not plain_array(factors, cnp.NPY_FLOAT64, 1):
        return None
    y = plain_out(out, <cnp.ndarray>values, values)
    if y is None:
        return None
    j.n_cols = (<cnp.ndarray>factors).shape[0]
    j.factors = data(factors)
    j.indices = cnp.PyArray_DATA(<cnp.ndarray>indices)
    j.out = cnp.PyArray_DATA(<cnp.ndarray>y)
    px = cnp.PyArray_DATA(<cnp.ndarray>values)
    n_tasks = ceil_div(j.nnz, SPARSE_SCALE_SEGMENT)
    if n_tasks == 0:
        return y
    with nogil:
        nt = n_threads_for(nt, j.nnz, n_tasks)
        if typenum == cnp.NPY_FLOAT32:
            run_tasks(scale_body[float], <const float *>px, &j, n_tasks, nt, GUIDED)
        else:
            run_tasks(scale_body[double], <const double *>px, &j, n_tasks, nt, GUIDED)
    return y
