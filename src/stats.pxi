# Statistics: per-channel Welford states by blocks and chunks, merged in chunk order
# (included by _kernels.pyx; the blocking is plan.pxi's, docs/design.md §3).

# --- Chan et al.'s pairwise merge: the one place the formula is written ----------------------

cdef inline void chan_weights(double na, double nb, double *wb, double *wab) noexcept nogil:
    """Weights for merging a state of count nb into one of count na (nb > 0)."""
    cdef double n = na + nb
    wb[0] = nb / n
    wab[0] = na * (nb / n)


cdef inline void chan_apply(double *mean, double *m2, double mean_b, double m2_b, double wb,
                            double wab) noexcept nogil:
    """(mean, m2) <- merge of (mean, m2) and (mean_b, m2_b) with chan_weights' weights."""
    cdef double delta = mean_b - mean[0]
    mean[0] += delta * wb
    m2[0] += m2_b + delta * delta * wab


cdef inline void chan_apply2(double *hi, double *lo, double *m2, double hi_b, double lo_b,
                             double m2_b, double wb, double wab) noexcept nogil:
    """chan_apply with the means kept as unevaluated sums hi + lo (docs/design.md §1,
    "Offsets"): the states of one channel's blocks and chunks inside a call.

    Near an offset far above the spread (1e8 + N(0, 1)) a mean rounded to one double has an
    error of half its ulp (7.5e-9 there), and delta, the difference of two such means, would
    carry it to m2 through delta^2 in every merge: 1e-10 relative. Here hi_b - hi is exact
    (Sterbenz: two close means), delta keeps its digits, and the new mean's rounding goes
    into lo (an exact two-sum). The first state merged into an empty one (na = 0) must be
    copied, not merged: delta would be rounded into hi alone."""
    cdef double delta = (hi_b - hi[0]) + (lo_b - lo[0])
    cdef double a = hi[0], b = delta * wb
    cdef double s = a + b
    cdef double bb = s - a
    lo[0] += (a - (s - bb)) + (b - bb)
    hi[0] = s
    m2[0] += m2_b + delta * delta * wab


cdef struct Reduction:
    # One reduction pass over chunks (moments, masked moments, backward sums).
    const Plan *p
    const void *dy          # backward sums: the upstream gradient (x is the task's argument)
    const double *w         # masked moments: sample weights, or NULL
    const double *mean      # backward sums: the channel means
    double *st[4]           # per chunk and channel: Welford (n, mean, m2, mean's low part),
                            # or the two sums
    intp per                # channel tasks per chunk (task i: chunk i // per, tile i % per)


# --- Plain statistics -----------------------------------------------------------------------

cdef inline double first_values_mean(const floating *x, intp n) noexcept nogil:
    """Mean of x[0:n] (n >= 1): the shift guess for a chunk's first block of runs."""
    cdef double s = 0.0
    cdef intp i
    for i in range(n):
        s += to_double(x[i])
    return s / n


cdef inline void first_rows_mean(const floating *x, intp nrows, intp ncols, intp stride,
                                 double *out) noexcept nogil:
    """Per-column mean of the first nrows (>= 1) tile rows: the tiles' shift guess."""
    cdef intp r, c
    for c in range(ncols):
        out[c] = to_double(x[c])
    for r in range(1, nrows):
        for c in range(ncols):
            out[c] += to_double(x[r * stride + c])
    for c in range(ncols):
        out[c] /= nrows


cdef inline void tile_block_moments(const floating *x, const Plan *p, intp b, intp t, double n,
                                    double *mean, double *lo, double *m2) noexcept nogil:
    """Fold block b of tile t into a chunk's Welford state (mean[C] + lo[C], m2[C]) after n
    rows.

    The block's sums are shifted by a guess of its mean: the chunk's mean so far, or the
    mean of the block's first rows for the chunk's first block.
    """
    cdef intp c0 = t * p.ctile
    cdef intp nc = min(p.ctile, p.C - c0)
    cdef intp row0 = b * p.rows_per_block
    cdef intp nrows = min(p.rows_per_block, p.outer - row0)
    cdef const floating *ptr = x + row0 * p.C + c0
    cdef double wb, wab
    cdef intp j
    cdef double shift[TILE_C]
    cdef double tmean[TILE_C]
    cdef double tm2[TILE_C]
    cdef double scratch[TILE_C]
    mean += c0
    lo += c0
    m2 += c0
    shift[0] = 0.0  # nc >= 1 and both branches set shift[:nc]: this store tells GCC so
    if n > 0:
        for j in range(nc):
            shift[j] = mean[j] + lo[j]
    else:
        first_rows_mean(ptr, min(nrows, SHIFT_PROBE), nc, p.C, shift)
    k_tile_moments(ptr, nrows, nc, p.C, shift, tmean, tm2, scratch)
    if n == 0:
        for j in range(nc):
            mean[j], lo[j], m2[j] = shift[j], tmean[j], tm2[j]
        return
    chan_weights(n, <double>nrows, &wb, &wab)
    for j in range(nc):
        chan_apply2(&mean[j], &lo[j], &m2[j], shift[j], tmean[j], tm2[j], wb, wab)


cdef void moments_task(const floating *x, const Plan *p, intp k, intp t, double *st_n,
                       double *st_mean, double *st_m2, double *st_lo) noexcept nogil:
    """Welford state of chunk k of channel task t (t < 0: every tile of a tiled layout, block
    by block), written at st_*[k * C + channel]; its mean is st_mean + st_lo, unevaluated.

    Each block's sums are shifted by a guess of its mean: the chunk's mean so far, or the mean
    of the block's first values for the chunk's first block.  A channel's arithmetic does not
    depend on t: one task per tile and one task for all tiles give the same bits.
    """
    cdef intp b, b1, row0, nrows, start, length, c0, nc, j, t0, t1
    cdef double n = 0.0, nb, wb, wab, bmean, blo, bm2, shift
    cdef const floating *ptr
    cdef double *mean = st_mean + k * p.C
    cdef double *m2 = st_m2 + k * p.C
    cdef double *lo = st_lo + k * p.C
    b1 = min((k + 1) * p.blocks_per_chunk, p.n_blocks)
    if not p.tiled:
        mean += t
        m2 += t
        lo += t
        for b in range(k * p.blocks_per_chunk, b1):
            run_block(p, b, &row0, &nrows, &start, &length)
            ptr = x + (row0 * p.C + t) * p.inner + start
            shift = (mean[0] + lo[0] if n > 0
                     else first_values_mean(ptr, min(length, SHIFT_PROBE)))
            k_run_moments(ptr, nrows, length, p.C * p.inner, shift, &bmean, &blo, &bm2)
            nb = <double>(nrows * length)
            if n == 0:
                mean[0], lo[0], m2[0] = bmean, blo, bm2
            else:
                chan_weights(n, nb, &wb, &wab)
                chan_apply2(mean, lo, m2, bmean, blo, bm2, wb, wab)
            n += nb
        st_n[k * p.C + t] = n
        return
    t0 = 0 if t < 0 else t
    t1 = p.n_ctasks if t < 0 else t + 1
    c0 = t0 * p.ctile
    nc = min(t1 * p.ctile, p.C) - c0
    for b in range(k * p.blocks_per_chunk, b1):
        for j in range(t0, t1):
            tile_block_moments(x, p, b, j, n, mean, lo, m2)
        n += <double>min(p.rows_per_block, p.outer - b * p.rows_per_block)
    for j in range(c0, c0 + nc):
        st_n[k * p.C + j] = n


cdef void moments_body(const floating *x, void *job, intp task) noexcept nogil:
    cdef Reduction *j = <Reduction *>job
    moments_task(x, j.p, task // j.per, -1 if j.p.whole_rows else task % j.per, j.st[0],
                 j.st[1], j.st[2], j.st[3])


cdef int alloc_states(const Plan *p, double **st) except -1 nogil:
    """Room for one Welford state per chunk and channel in st[0:4] (n, mean, m2 and the
    mean's low part; freed with free(st[0]))."""
    cdef intp states = p.n_chunks * p.C
    st[0] = <double *>malloc(4 * max(states, 1) * sizeof(double))
    if st[0] == NULL:
        with gil:
            raise MemoryError()
    st[1] = st[0] + states
    st[2] = st[0] + 2 * states
    st[3] = st[0] + 3 * states
    return 0


cdef struct Merge:
    const Plan *p
    const double *st[4]     # the chunk states (n, mean, m2, mean's low part) at [k * C + c]
    double *count           # per channel: count (or NULL), mean and m2
    double *mean
    double *m2


cdef void merge_body(const double *unused, void *job, intp task) noexcept nogil:
    """Merge the chunk states of channels [task * MERGE_C, ...) in chunk order.

    Chunk by chunk across the task's channels: each channel's merges are independent of its
    neighbours', so the loop over channels pipelines (and vectorizes) where one channel's
    fifteen dependent merges would wait on each other. A channel's arithmetic, and so its
    bits, do not depend on the range it falls in.
    """
    cdef Merge *j = <Merge *>job
    cdef const Plan *p = j.p
    cdef intp c0 = task * MERGE_C
    cdef intp nc = min(MERGE_C, p.C - c0)
    cdef intp k, c
    cdef const double *sn
    cdef const double *smean
    cdef const double *sm2
    cdef const double *slo
    cdef double na, nb, mu, ml, q, wb, wab
    cdef double n[MERGE_C]
    cdef double lo[MERGE_C]
    cdef double *mean = j.mean + c0
    cdef double *m2 = j.m2 + c0
    for c in range(nc):
        n[c] = j.st[0][c0 + c]
        mean[c] = j.st[1][c0 + c]
        m2[c] = j.st[2][c0 + c]
        lo[c] = j.st[3][c0 + c]
    for k in range(1, p.n_chunks):
        sn = j.st[0] + k * p.C + c0
        smean = j.st[1] + k * p.C + c0
        sm2 = j.st[2] + k * p.C + c0
        slo = j.st[3] + k * p.C + c0
        for c in range(nc):
            # An empty chunk state leaves the channel alone (its weights would be 0 / 0); a
            # state merged into an empty one is copied (chan_apply2).
            na = n[c]
            nb = sn[c]
            mu = mean[c]
            ml = lo[c]
            q = m2[c]
            chan_weights(na, nb, &wb, &wab)
            chan_apply2(&mu, &ml, &q, smean[c], slo[c], sm2[c], wb, wab)
            mean[c] = mu if nb != 0 and na != 0 else (smean[c] if nb != 0 else mean[c])
            lo[c] = ml if nb != 0 and na != 0 else (slo[c] if nb != 0 else lo[c])
            m2[c] = q if nb != 0 and na != 0 else (sm2[c] if nb != 0 else m2[c])
            n[c] = na + nb
    for c in range(nc):
        mean[c] = mean[c] + lo[c]
    if j.count != NULL:
        memcpy(j.count + c0, n, nc * sizeof(double))


cdef void merge_chunks(const Plan *p, double **st, double *count, double *mean, double *m2,
                       int n_threads) noexcept nogil:
    """Merge the chunk states of every channel, in chunk order, into count, mean and m2."""
    cdef Merge j
    cdef intp n_tasks
    cdef intp c
    if p.n_chunks == 1:  # nothing to merge: the one chunk's states are the result
        if count != NULL:
            memcpy(count, st[0], p.C * sizeof(double))
        for c in range(p.C):
            mean[c] = st[1][c] + st[3][c]
        memcpy(m2, st[2], p.C * sizeof(double))
        return
    j.p = p
    j.st[0], j.st[1], j.st[2], j.st[3] = st[0], st[1], st[2], st[3]
    j.count, j.mean, j.m2 = count, mean, m2
    n_tasks = ceil_div(p.C, MERGE_C)
    run_tasks(merge_body, <const double *>NULL, &j, n_tasks,
              n_threads_for(n_threads, p.n_chunks * p.C, n_tasks), DYNAMIC)


cdef int channel_moments(const floating *x, const Plan *p, double *mean, double *m2,
                         int n_threads) except -1 nogil:
    """Per-channel mean and M2 of x into mean[C], m2[C]; bit-identical for any n_threads."""
    cdef Reduction j
    cdef intp n_tasks
    j.p = p
    j.per = 1 if p.whole_rows else p.n_ctasks
    n_tasks = p.n_chunks * j.per
    alloc_states(p, j.st)
    run_tasks(moments_body[floating], x, &j, n_tasks,
              n_threads_for(n_threads, p.outer * p.C * p.inner, n_tasks), DYNAMIC)
    merge_chunks(p, j.st, NULL, mean, m2, n_threads)
    free(j.st[0])
    return 0


# --- Weighted, NaN-skipping statistics of a (N, C) sample matrix ----------------------------

cdef void masked_task(const real *x, const double *w, const Plan *p, intp k, intp t,
                      double *st_n, double *st_mean, double *st_m2,
                      double *st_lo) noexcept nogil:
    """Weighted NaN-skipping Welford state of chunk k of channel tile t (shifted like
    moments_task: by the chunk's mean so far, else the block's first value, NaN: 0; the mean
    unevaluated, st_mean + st_lo)."""
    cdef intp b, b1, row0, nrows, j
    cdef intp c0 = t * p.ctile
    cdef intp nc = min(p.ctile, p.C - c0)
    cdef intp base = k * p.C + c0
    cdef double wb, wab, v
    cdef const real *ptr
    cdef double shift[MASKED_TILE_C]
    cdef double tn[MASKED_TILE_C]
    cdef double tmean[MASKED_TILE_C]
    cdef double tm2[MASKED_TILE_C]
    cdef double scratch[MASKED_TILE_C]
    for j in range(nc):
        st_n[base + j] = 0.0
        st_mean[base + j] = 0.0
        st_m2[base + j] = 0.0
        st_lo[base + j] = 0.0
    b1 = min((k + 1) * p.blocks_per_chunk, p.n_blocks)
    for b in range(k * p.blocks_per_chunk, b1):
        row0 = b * p.rows_per_block
        nrows = min(p.rows_per_block, p.outer - row0)
        ptr = x + row0 * p.C + c0
        for j in range(nc):
            v = <double>ptr[j]
            shift[j] = (st_mean[base + j] + st_lo[base + j] if st_n[base + j] != 0
                        else (v if v == v else 0.0))
        if real is float:
            tile_moments_masked_f32(ptr, w + row0 if w != NULL else NULL, nrows, nc, p.C, shift,
                                    tn, tmean, tm2, scratch)
        else:
            tile_moments_masked_f64(ptr, w + row0 if w != NULL else NULL, nrows, nc, p.C, shift,
                                    tn, tmean, tm2, scratch)
        for j in range(nc):
            if tn[j] != 0 and st_n[base + j] == 0:
                st_mean[base + j], st_lo[base + j], st_m2[base + j] = shift[j], tmean[j], tm2[j]
                st_n[base + j] = tn[j]
            elif tn[j] != 0:
                chan_weights(st_n[base + j], tn[j], &wb, &wab)
                chan_apply2(&st_mean[base + j], &st_lo[base + j], &st_m2[base + j], shift[j],
                            tmean[j], tm2[j], wb, wab)
                st_n[base + j] += tn[j]


cdef void masked_body(const real *x, void *job, intp task) noexcept nogil:
    cdef Reduction *j = <Reduction *>job
    masked_task(x, j.w, j.p, task // j.per, task % j.per, j.st[0], j.st[1], j.st[2], j.st[3])


cdef int masked_moments(const real *x, const double *w, const Plan *p, double *count,
                        double *mean, double *m2, int n_threads) except -1 nogil:
    """Per-column weighted Welford state of the (N, C) rows x (tiled plan), NaN skipped."""
    cdef Reduction j
    cdef intp n_tasks = p.n_chunks * p.n_ctasks
    j.p = p
    j.w = w
    j.per = p.n_ctasks
    alloc_states(p, j.st)
    run_tasks(masked_body[real], x, &j, n_tasks,
              n_threads_for(n_threads, p.outer * p.C, n_tasks), DYNAMIC)
    merge_chunks(p, j.st, count, mean, m2, n_threads)
    free(j.st[0])
    return 0
