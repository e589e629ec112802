# Sparse matrices, CSR and CSC (included by _kernels.pyx): per-column weighted statistics
# with the implicit zeros counted and NaN skipped, and the column scaling of the stored values
# (BatchNormScaler on scipy.sparse input, with_mean=False).
#
# Relies on: intp, real, ceil_div, run_tasks / n_threads_for / DYNAMIC / GUIDED
# (plan.pxi); plain_array / plain_vector / plain_threads / plain_out / alloc_doubles /
# new_vector / data (plain.pxi); bn_well_shifted (bn_loops.h).
#
# The statistics are sums shifted by a guess k of each column's mean, its implicit zeros
# included (they join in closed form), checked on the whole column (bn_well_shifted: M2 =
# q - s^2 / n free of cancellation). A column whose guess was too coarse is summed again
# around the mean the first sums give (the corrected two-pass algorithm). Since every chunk
# of rows sums around the same k, the chunks' sums simply add up: no merge between chunks.
# - CSR: k is the mean of the first rows (a probe of about SPARSE_PROBE stored values), so
#   one pass over the data is the rule: a column is summed again only when its first rows
#   are not like the rest (sorted data, a trend).
# - CSC: each column's values are contiguous: its mean first, then the shifted sums, the
#   column still in cache.
#
# The work is cut by the matrix's shape and stored count (nnz) alone, never by the thread
# count, and chunk sums are added in chunk order: every result is bit-identical for every
# thread count (docs/design.md §3).
#
# The structure (indptr, indices) is read as given. Indices out of range and indptr going
# back or beyond nnz are skipped (never read or written through) and counted: the entry
# points report the count and the Python layer raises.

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
    # ... and their sums (32 bytes per column and chunk) stay within about one byte per
    # stored value: chunks <= nnz / (SPARSE_STATE_SHARE * n_cols).
    SPARSE_STATE_SHARE = 32
    # CSR: the first rows holding about this many stored values (at least SPARSE_PROBE_ROWS
    # rows) give the shifts.
    SPARSE_PROBE = 16384
    SPARSE_PROBE_ROWS = 64
    # Columns per task of the per-column steps (CSR) and of the statistics (CSC).
    SPARSE_COLS = 256
    # Stored values per task of the scaling pass.
    SPARSE_SCALE_SEGMENT = 65536


cdef struct ColumnSums:
    # One column's sums over one CSR chunk, 32 bytes (two to a cache line: each stored value
    # updates one line, and 2,000 columns stay within a 64 KiB L1): sum w d and sum w d^2
    # (d = x - k) over the non-NaN values, the weight of the stored values (NaN included;
    # their count when unweighted) and the weight of the NaN.
    double s, q, wstored, wnan


cdef struct SparseJob:
    const void *indices
    const void *indptr
    bint wide               # int64 indices and indptr, else int32
    const double *w         # per-row weights, or NULL (all ones)
    intp n_rows, n_cols, nnz
    double w_total          # the sum of all the rows' weights
    intp rows_per_chunk, n_chunks
    ColumnSums *sums        # CSR: [chunk * n_cols + c]
    intp *bad               # per task t: at 2 t the stored values outside the structure, at
                            # 2 t + 1 those not after their row's (CSR) or column's (CSC)
                            # previous one (unsorted, or a repeated (row, column) pair)
    double *shift           # per column: k
    char *again             # per column: summed again around a refined shift
    const char *only        # the CSR pass covers these columns only (NULL: all)
    double *count           # results, per column
    double *mean
    double *m2
    const double *factors   # scaling: per column
    void *out


cdef inline intp clamp_index(intp i, intp n) noexcept nogil:
    return 0 if i < 0 else (n if i > n else i)


cdef inline intp span(const sparse_index *indptr, intp m, intp nnz, intp *lo,
                      intp *hi) noexcept nogil:
    """The stored values [lo, hi) of row (CSR) or column (CSC) m, clamped into [0, nnz];
    returns 1 when indptr was out of range or went back there (a malformed structure)."""
    lo[0] = clamp_index(indptr[m], nnz)
    hi[0] = max(lo[0], clamp_index(indptr[m + 1], nnz))
    return 0 if (indptr[m] == lo[0] and indptr[m + 1] == hi[0]) else 1


cdef inline double zeros_weight(const SparseJob *j, double stored, double wstored) noexcept nogil:
    """The weight of a column's implicit zeros (the rows without a stored value), from the
    weight of its stored values (their count when unweighted: exact) and, when known (CSC),
    their count (else -1). Weighted, a difference of sums within its own rounding
    (gamma_{n+2} of the total) of zero is zero, so a column stored in every row gets none."""
    cdef double wz
    if j.w == NULL:
        return <double>j.n_rows - wstored
    if stored >= j.n_rows:
        return 0.0
    wz = j.w_total - wstored
    return wz if wz > 4.0 * (j.n_rows + 2) * 1.1102230246251565e-16 * j.w_total else 0.0


cdef inline bint finish_column(const SparseJob *j, intp c, double s, double q, double wz,
                               bint check) noexcept nogil:
    """A column's mean and M2 from its shifted sums, its implicit zeros (weight wz) added in
    closed form; False, with the refined shift written instead, when check is set and the
    shift was too far off."""
    cdef double n = j.count[c]
    cdef double k = j.shift[c]
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

cdef intp csr_probe(const real *x, const sparse_index *indices, const sparse_index *indptr,
                    const SparseJob *j, double *scratch) noexcept nogil:
    """The shifts: each column's mean over the first rows, its zeros included (0 where those
    rows hold no weight for it). scratch: n_cols doubles. Returns the rows probed."""
    cdef intp C = j.n_cols
    cdef intp rows = min(j.n_rows, max(<intp>SPARSE_PROBE_ROWS, <intp>(
        <double>SPARSE_PROBE * j.n_rows / max(j.nnz, 1))))
    cdef intp r, i, lo, hi, c
    cdef double wr, v, wall = 0.0
    cdef double *nan_w = scratch
    for c in range(C):
        j.shift[c] = nan_w[c] = 0.0
    for r in range(rows):
        wr = 1.0 if j.w == NULL else j.w[r]
        wall += wr
        span(indptr, r, j.nnz, &lo, &hi)
        for i in range(lo, hi):
            c = indices[i]
            if 0 <= c < C:
                v = x[i]
                if v == v:
                    j.shift[c] += wr * v
                else:
                    nan_w[c] += wr
    for c in range(C):
        v = wall - nan_w[c]
        j.shift[c] = j.shift[c] / v if v > 0 else 0.0
    return rows


cdef void csr_pass(const real *x, const sparse_index *indices, const sparse_index *indptr,
                   const SparseJob *j, intp chunk) noexcept nogil:
    """The shifted sums of one chunk's rows (of the columns in j.only when it is set)."""
    cdef intp C = j.n_cols
    cdef intp r0 = chunk * j.rows_per_chunk
    cdef intp r1 = min(r0 + j.rows_per_chunk, j.n_rows)
    cdef ColumnSums *acc = j.sums + chunk * C
    cdef const double *k = j.shift
    cdef const char *only = j.only
    cdef ColumnSums *a
    cdef intp r, i, lo, hi, c, prev, bad = 0, unsorted = 0
    cdef double wr, v
    for c in range(C):
        if only == NULL or only[c]:
            acc[c].s = acc[c].q = acc[c].wstored = acc[c].wnan = 0.0
    for r in range(r0, r1):
        wr = 1.0 if j.w == NULL else j.w[r]
        bad += span(indptr, r, j.nnz, &lo, &hi)
        prev = -1
        for i in range(lo, hi):
            c = indices[i]
            if c < 0 or c >= C:
                bad += 1
                continue
            unsorted += c <= prev
            prev = c
            if only != NULL and not only[c]:
                continue
            a = &acc[c]
            v = x[i]
            a.wstored += wr
            if v == v:
                v -= k[c]
                a.s += wr * v
                a.q += wr * (v * v)
            else:
                a.wnan += wr
    j.bad[2 * chunk] = bad
    j.bad[2 * chunk + 1] = unsorted


cdef void csr_body(const real *x, void *job, intp task) noexcept nogil:
    cdef SparseJob *j = <SparseJob *>job
    if j.wide:
        csr_pass(x, <const cnp.int64_t *>j.indices, <const cnp.int64_t *>j.indptr, j, task)
    else:
        csr_pass(x, <const cnp.int32_t *>j.indices, <const cnp.int32_t *>j.indptr, j, task)


cdef void csr_finish_body(const double *unused, void *job, intp task) noexcept nogil:
    """Columns [task * SPARSE_COLS, ...): the chunk sums added in chunk order, the count, the
    mean and M2; a column whose shift was too coarse is marked to be summed again (first
    round, j.only NULL), or finished as it is (second round)."""
    cdef SparseJob *j = <SparseJob *>job
    cdef intp C = j.n_cols
    cdef intp c, chunk
    cdef double s, q, wstored, wnan
    cdef const ColumnSums *a
    for c in range(task * SPARSE_COLS, min((task + 1) * SPARSE_COLS, C)):
        if j.only != NULL and not j.only[c]:
            continue
        s = q = wstored = wnan = 0.0
        for chunk in range(j.n_chunks):
            a = &j.sums[chunk * C + c]
            s += a.s
            q += a.q
            wstored += a.wstored
            wnan += a.wnan
        # All the weight less that of the NaN: every column without NaN gets the same bits
        # (one n_samples_seen_).
        j.count[c] = max(j.w_total - wnan, 0.0)
        j.again[c] = not finish_column(j, c, s, q, zeros_weight(j, -1.0, wstored),
                                       j.only == NULL)


cdef int csr_moments(const real *x, SparseJob *j, int nt, intp *bad,
                     intp *unsorted) except -1 nogil:
    """CSR statistics into j.count, j.mean, j.m2; adds the stored values outside the
    structure to bad, the unsorted or repeated ones to unsorted."""
    cdef intp c, redo = 0
    cdef intp n_cols_tasks = ceil_div(j.n_cols, SPARSE_COLS)
    cdef int nt_rows = n_threads_for(nt, j.nnz + j.n_rows, j.n_chunks)
    cdef int nt_cols = n_threads_for(nt, j.n_chunks * j.n_cols, n_cols_tasks)
    cdef void *block = malloc(max(j.n_chunks * j.n_cols, 1) * sizeof(ColumnSums) + 64
                              + 2 * j.n_chunks * sizeof(intp))
    if block == NULL:
        with gil:
            raise MemoryError()
    j.sums = <ColumnSums *>((<size_t>block + 63) & ~(<size_t>63))  # two to a cache line
    j.bad = <intp *>(j.sums + j.n_chunks * j.n_cols)
    if j.wide:
        csr_probe(x, <const cnp.int64_t *>j.indices, <const cnp.int64_t *>j.indptr, j, j.mean)
    else:
        csr_probe(x, <const cnp.int32_t *>j.indices, <const cnp.int32_t *>j.indptr, j, j.mean)
    j.only = NULL
    run_tasks(csr_body[real], x, j, j.n_chunks, nt_rows, DYNAMIC)
    for c in range(j.n_chunks):
        bad[0] += j.bad[2 * c]
        unsorted[0] += j.bad[2 * c + 1]
    run_tasks(csr_finish_body, <const double *>NULL, j, n_cols_tasks, nt_cols, DYNAMIC)
    for c in range(j.n_cols):
        redo += j.again[c]
    if redo:  # the first rows were not like the rest: those columns again, around their mean
        j.only = j.again
        run_tasks(csr_body[real], x, j, j.n_chunks, nt_rows, DYNAMIC)
        run_tasks(csr_finish_body, <const double *>NULL, j, n_cols_tasks, nt_cols, DYNAMIC)
    free(block)
    return 0


# --- CSC: one task per range of columns, each column's values contiguous -----------------------

cdef void csc_column(const real *x, const sparse_index *indices,
                     const sparse_index *indptr, SparseJob *j, intp c, intp *bad,
                     intp *unsorted) noexcept nogil:
    """One column's statistics: its mean (zeros included), then the sums shifted by it,
    again around a refined mean when it was too coarse."""
    cdef intp a, b, i, row, round_, prev = -1
    cdef double sx = 0.0, wstored = 0.0, wnan = 0.0, wz, wr, v, s, q
    bad[0] += span(indptr, c, j.nnz, &a, &b)
    for i in range(a, b):
        row = indices[i]
        if row < 0 or row >= j.n_rows:
            bad[0] += 1
            continue
        unsorted[0] += row <= prev
        prev = row
        wr = 1.0 if j.w == NULL else j.w[row]
        wstored += wr
        v = x[i]
        if v == v:
            sx += wr * v
        else:
            wnan += wr
    j.count[c] = max(j.w_total - wnan, 0.0)
    wz = zeros_weight(j, <double>(b - a), wstored)
    j.shift[c] = sx / j.count[c] if j.count[c] > 0 else 0.0
    for round_ in range(2):
        s = q = 0.0
        for i in range(a, b):
            row = indices[i]
            if 0 <= row < j.n_rows:
                v = x[i]
                if v == v:
                    wr = 1.0 if j.w == NULL else j.w[row]
                    v -= j.shift[c]
                    s += wr * v
                    q += wr * (v * v)
        if finish_column(j, c, s, q, wz, round_ == 0):
            break


cdef void csc_body(const real *x, void *job, intp task) noexcept nogil:
    cdef SparseJob *j = <SparseJob *>job
    cdef intp c
    cdef intp bad = 0, unsorted = 0
    for c in range(task * SPARSE_COLS, min((task + 1) * SPARSE_COLS, j.n_cols)):
        if j.wide:
            csc_column(x, <const cnp.int64_t *>j.indices, <const cnp.int64_t *>j.indptr, j, c,
                       &bad, &unsorted)
        else:
            csc_column(x, <const cnp.int32_t *>j.indices, <const cnp.int32_t *>j.indptr, j, c,
                       &bad, &unsorted)
    j.bad[2 * task] = bad
    j.bad[2 * task + 1] = unsorted


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
    False) matrix, its implicit zeros counted and NaN skipped, with two counts: the stored
    values outside its structure (skipped), and those not after the previous one of their
    row (CSR) or column (CSC); or None.

    Plain case: values a plain float32/float64 vector of the nnz stored values; indices and
    indptr plain vectors, both int32 or both int64, of lengths nnz and n_major + 1 (n_major:
    rows for CSR, columns for CSC); shape a tuple of two Python ints (n_rows, n_cols), both at
    least 1; csr a bool; weights None or a plain float64 vector of length n_rows; n_threads
    as everywhere. count is the sum of the weights of the rows whose value is not NaN; a
    column with nothing counted gets count, mean and m2 0. A repeated (row, column) counts
    as two values: when the second count is not 0 (indices unsorted, or repeated), the caller
    sums the duplicates (scipy's sum_duplicates) and calls again.
    """
    cdef int typenum, nt
    cdef bint wide, by_rows
    cdef intp n_rows, n_cols, r, n_tasks, bad = 0, unsorted = 0
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
    n_tasks = ceil_div(n_cols, SPARSE_COLS)
    scratch = alloc_doubles(n_cols + 2 * n_tasks + ceil_div(n_cols, sizeof(double)))
    j.shift = scratch
    j.bad = <intp *>(scratch + n_cols)
    j.again = <char *>(scratch + n_cols + 2 * n_tasks)
    px = cnp.PyArray_DATA(<cnp.ndarray>values)
    try:
        with nogil:
            if j.w == NULL:
                wt = <double>n_rows
            else:
                for r in range(n_rows):
                    wt += j.w[r]
            j.w_total = wt
            r = n_rows if by_rows else n_cols
            if wide:  # the ends of indptr: what the spans cannot see
                bad += (<const cnp.int64_t *>j.indptr)[0] != 0 or (
                    <const cnp.int64_t *>j.indptr)[r] != j.nnz
            else:
                bad += (<const cnp.int32_t *>j.indptr)[0] != 0 or (
                    <const cnp.int32_t *>j.indptr)[r] != j.nnz
            if by_rows:
                # Chunks of rows by the shape and nnz alone (never by the thread count).
                j.n_chunks = max(1, min(SPARSE_TASKS, j.nnz // SPARSE_MIN_CHUNK,
                                        j.nnz // (SPARSE_STATE_SHARE * n_cols)))
                j.rows_per_chunk = ceil_div(n_rows, j.n_chunks)
                j.n_chunks = ceil_div(n_rows, j.rows_per_chunk)
                if typenum == cnp.NPY_FLOAT32:
                    csr_moments(<const float *>px, &j, nt, &bad, &unsorted)
                else:
                    csr_moments(<const double *>px, &j, nt, &bad, &unsorted)
            else:
                nt = n_threads_for(nt, j.nnz + n_cols, n_tasks)
                if typenum == cnp.NPY_FLOAT32:
                    run_tasks(csc_body[float], <const float *>px, &j, n_tasks, nt, DYNAMIC)
                else:
                    run_tasks(csc_body[double], <const double *>px, &j, n_tasks, nt, DYNAMIC)
                for r in range(n_tasks):
                    bad += j.bad[2 * r]
                    unsorted += j.bad[2 * r + 1]
    finally:
        free(scratch)
    return count, mean, m2, bad, unsorted


# --- Scaling the stored values of a CSR matrix by column ---------------------------------------

cdef void scale_segment(const real *x, const sparse_index *indices, SparseJob *j,
                        intp task) noexcept nogil:
    cdef intp i0 = task * SPARSE_SCALE_SEGMENT
    cdef intp i1 = min(i0 + SPARSE_SCALE_SEGMENT, j.nnz)
    cdef real *y = <real *>j.out
    cdef intp i, c, bad = 0
    for i in range(i0, i1):
        c = indices[i]
        if 0 <= c < j.n_cols:
            y[i] = <real>(<double>x[i] * j.factors[c])
        else:  # outside the structure: NaN, never a read outside factors
            y[i] = <real>NAN
            bad += 1
    j.bad[task] = bad


cdef void scale_body(const real *x, void *job, intp task) noexcept nogil:
    cdef SparseJob *j = <SparseJob *>job
    if j.wide:
        scale_segment(x, <const cnp.int64_t *>j.indices, j, task)
    else:
        scale_segment(x, <const cnp.int32_t *>j.indices, j, task)


def sparse_scale(object values, object indices, object factors, object out,
                 object n_threads):
    """y[i] = values[i] * factors[indices[i]], computed in float64 and rounded to values'
    dtype: the column scaling of a CSR matrix's stored values; returns (y, the number of
    indices outside factors, whose y is NaN), y being out or a new vector when out is None;
    or None.

    Plain case: values a plain float32/float64 vector; indices a plain int32 or int64 vector
    of values' length; factors a plain float64 vector (one per column); out None or a plain
    writeable vector of values' dtype and length that is values itself or shares no memory
    with it; n_threads as everywhere.
    """
    cdef int typenum, nt
    cdef intp n_tasks, t, bad = 0
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
    n_tasks = ceil_div(j.nnz, SPARSE_SCALE_SEGMENT)
    if n_tasks == 0:
        return y, 0
    j.n_cols = (<cnp.ndarray>factors).shape[0]
    j.factors = data(factors)
    j.indices = cnp.PyArray_DATA(<cnp.ndarray>indices)
    j.out = cnp.PyArray_DATA(<cnp.ndarray>y)
    j.bad = <intp *>alloc_doubles(n_tasks)
    px = cnp.PyArray_DATA(<cnp.ndarray>values)
    try:
        with nogil:
            nt = n_threads_for(nt, j.nnz, n_tasks)
            if typenum == cnp.NPY_FLOAT32:
                run_tasks(scale_body[float], <const float *>px, &j, n_tasks, nt, GUIDED)
            else:
                run_tasks(scale_body[double], <const double *>px, &j, n_tasks, nt, GUIDED)
            for t in range(n_tasks):
                bad += j.bad[t]
    finally:
        free(j.bad)
    return y, bad
