# Compiler directives (boundscheck, wraparound, cdivision, ...) are set once in setup.py.
"""bnfast's compiled kernels: arithmetic only.

Every array arrives as the (outer, C, inner) C-contiguous view of DESIGN §2, already validated
and of the working dtype (float32 or float64) by bnfast._validation; per-channel vectors are
C-contiguous float64 of length C.  The entry points still check what they dereference, so a
misuse raises instead of crashing.

Work is cut by the shape alone: each channel's elements form blocks (two-pass Welford in
cache), consecutive blocks form chunks, and a task is one chunk of one channel (or of one
tile of channels when inner == 1).  Chunk states are merged in chunk order after the parallel
loop, so the statistics are bit-identical for every thread count.
"""
from cython.parallel cimport prange
from libc.math cimport sqrt
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy
cimport numpy as cnp

cnp.import_array()

ctypedef cnp.npy_intp intp

ctypedef fused floating:
    float
    double

cdef extern from "bn_openmp.h":
    int bn_openmp_enabled() noexcept nogil
    int bn_max_threads() noexcept nogil
    int bn_num_procs() noexcept nogil
    const char *bn_compile_flags() noexcept nogil

cdef extern from "bn_loops.h" nogil:
    void run_moments_f32(const float *x, intp nrows, intp len, intp stride, double shift,
                         double *mean, double *m2)
    void run_moments_f64(const double *x, intp nrows, intp len, intp stride, double shift,
                         double *mean, double *m2)
    void tile_moments_f32(const float *x, intp nrows, intp ncols, intp stride, double *shift,
                          double *mean, double *m2, double *q)
    void tile_moments_f64(const double *x, intp nrows, intp ncols, intp stride, double *shift,
                          double *mean, double *m2, double *q)
    void tile_moments_masked_f32(const float *x, const double *w, intp nrows, intp ncols,
                                 intp stride, double *shift, double *count, double *mean,
                                 double *m2, double *s)
    void tile_moments_masked_f64(const double *x, const double *w, intp nrows, intp ncols,
                                 intp stride, double *shift, double *count, double *mean,
                                 double *m2, double *s)
    void run_normalize_f32(const float *x, float *y, intp len, double mean, double scale,
                           double shift, int stream)
    void run_normalize_f64(const double *x, double *y, intp len, double mean, double scale,
                           double shift, int stream)
    void row_normalize_f32(const float *x, float *y, intp nrows, intp ncols,
                           const double *mean, const double *scale, const double *shift,
                           int stream)
    void row_normalize_f64(const double *x, double *y, intp nrows, intp ncols,
                           const double *mean, const double *scale, const double *shift,
                           int stream)
    void run_grad_sums_f32(const float *dy, const float *x, intp nrows, intp len, intp stride,
                           double mean, double *sum_dy, double *sum_dy_xmu)
    void run_grad_sums_f64(const double *dy, const double *x, intp nrows, intp len,
                           intp stride, double mean, double *sum_dy, double *sum_dy_xmu)
    void tile_grad_sums_f32(const float *dy, const float *x, intp nrows, intp ncols,
                            intp stride, const double *mean, double *sum_dy,
                            double *sum_dy_xmu)
    void tile_grad_sums_f64(const double *dy, const double *x, intp nrows, intp ncols,
                            intp stride, const double *mean, double *sum_dy,
                            double *sum_dy_xmu)
    void run_grad_input_f32(const float *dy, const float *x, float *dx, intp len, double mean,
                            double a, double b, double k, int stream)
    void run_grad_input_f64(const double *dy, const double *x, double *dx, intp len,
                            double mean, double a, double b, double k, int stream)
    void row_grad_input_f32(const float *dy, const float *x, float *dx, intp nrows,
                            intp ncols, const double *mean, const double *a, const double *b,
                            const double *k, int stream)
    void row_grad_input_f64(const double *dy, const double *x, double *dx, intp nrows,
                            intp ncols, const double *mean, const double *a, const double *b,
                            const double *k, int stream)


# Ask for the processor count once, at import, before any call can run on another thread.
bn_num_procs()

cdef enum:
    # Elements per block of runs: a second pass, when the shift guess was poor, must find
    # the block in L1/L2.
    BLOCK = 4096
    # Elements per block of tile rows (inner == 1): larger, to amortize the per-channel merges.
    TILE_BLOCK = 16384
    # The first block of a chunk is shifted by the mean of its first few values per channel:
    # close enough to the mean that the second pass is rarely needed.
    SHIFT_PROBE = 8
    # Channels per task when inner == 1 (the loops run along C inside a tile): 256 for the
    # statistics, 512 for the backward sums (two inputs). Measured against 128/256/512/1024
    # for C = 256-2048 (2-core EPYC, same run): the statistics of C = 512-2048 took 0.79-0.97x
    # the time with 256 as with 512, the backward sums 1.1-1.3x.
    TILE_C = 256
    GRAD_TILE_C = 512
    # Reduction tasks take whole rows (every tile of a chunk) when there are this many chunks.
    WHOLE_ROW_CHUNKS = 8
    # The elementwise loops of the inner == 1 layout run along rows of at least this many
    # elements: several samples side by side when C is small, with the coefficients
    # repeated to match ...
    ROW_MIN = 64
    # ... over segments of about this many elements (four rows or more) per task.
    ROW_SEGMENT = 8192
    # Chunks per channel task are added until there are this many tasks (shape-only, so
    # results do not depend on the thread count) ...
    TARGET_TASKS = 64
    # ... but a chunk never shrinks below this many elements.
    MIN_CHUNK = 32768
    # A thread is only woken for at least this many elements of work.
    MIN_PER_THREAD = 65536
    # Channels of at most this many bytes (runs layout) are reduced and then normalized by
    # one task while they sit in L2/L3: the training forward then reads x once from memory.
    FUSE_MAX_BYTES = 1 << 20
    # ... provided there are enough channels to keep every thread busy ...
    FUSE_MIN_C = 16
    # ... and the runs are long enough for the strided walk over one channel to stream.
    # Shorter runs are written faster by a separate pass in memory order: (64,256,14,14)
    # float32 (784-byte runs) trains in 1.3 ms that way against 2.1 ms fused (2 threads,
    # 2-core EPYC); at 4 KiB runs the separate pass still won by 1.1-1.5x, at 8 KiB and
    # more the two were within the machine's noise.
    FUSE_MIN_RUN_BYTES = 8192


cdef struct Plan:
    intp outer, C, inner
    bint tiled             # inner == 1 and C > 1: tasks are tiles of channels
    intp n_ctasks          # channel tasks: C, or the number of tiles
    intp ctile             # channels per tile
    intp rows_per_block    # outer rows per block
    intp pieces            # blocks per row when a run is longer than BLOCK, else 1
    intp piece_len
    intp n_blocks          # blocks per channel task
    intp blocks_per_chunk
    intp n_chunks
    bint fused             # one chunk per channel, small enough to stay in cache between
                           # the statistics pass and the elementwise pass
    bint whole_rows        # tiled, and each reduction task takes every tile of its chunk


cdef inline intp ceil_div(intp a, intp b) noexcept nogil:
    return (a + b - 1) // b


cdef Plan make_plan(intp outer, intp C, intp inner, intp itemsize,
                    bint keep_tiles=False, intp tile_c=TILE_C) noexcept nogil:
    """Cut a (outer, C, inner) array of itemsize-byte elements into blocks and chunks, by its
    shape alone (never by the thread count).

    keep_tiles: keep the tiled (inner == 1) layout even for a single channel.
    tile_c: at most this many channels per tile (TILE_C or GRAD_TILE_C).
    """
    cdef Plan p
    cdef intp per_block, per_ctask, n_target
    if C == 0 or outer * inner == 0:
        # Nothing to cut (entry points return before using it); keep every field sane.
        p.outer, p.C, p.inner = outer, C, inner
        p.tiled = inner == 1
        p.n_ctasks = p.ctile = p.rows_per_block = p.pieces = p.piece_len = 1
        p.n_blocks = p.blocks_per_chunk = p.n_chunks = 1
        p.fused = p.whole_rows = False
        return p
    if inner == 1 and C == 1 and not keep_tiles:
        # A single channel of contiguous scalars is one long run.
        inner = outer
        outer = 1
    p.outer = outer
    p.C = C
    p.inner = inner
    p.tiled = inner == 1
    if p.tiled:
        p.n_ctasks = ceil_div(C, tile_c)
        p.ctile = ceil_div(C, p.n_ctasks)
        p.rows_per_block = max(4, TILE_BLOCK // p.ctile)
        p.pieces = 1
        p.piece_len = 1
        per_block = p.rows_per_block * p.ctile
        p.n_blocks = ceil_div(outer, p.rows_per_block)
    else:
        p.n_ctasks = C
        p.ctile = 1
        if inner > BLOCK:
            p.pieces = ceil_div(inner, BLOCK)
            p.piece_len = ceil_div(inner, p.pieces)
            p.rows_per_block = 1
            per_block = p.piece_len
            p.n_blocks = outer * p.pieces
        else:
            p.pieces = 1
            p.piece_len = inner
            p.rows_per_block = max(1, BLOCK // max(inner, 1))
            per_block = p.rows_per_block * inner
            p.n_blocks = ceil_div(outer, p.rows_per_block)
    per_ctask = outer * inner * p.ctile
    n_target = min(ceil_div(TARGET_TASKS, max(p.n_ctasks, 1)), max(1, per_ctask // MIN_CHUNK))
    n_target = max(1, min(n_target, p.n_blocks))
    p.fused = (not p.tiled and C >= FUSE_MIN_C
               and outer * inner * itemsize <= FUSE_MAX_BYTES
               and inner * itemsize >= FUSE_MIN_RUN_BYTES)
    if p.fused:
        n_target = 1
    p.blocks_per_chunk = max(1, ceil_div(p.n_blocks, n_target))
    p.n_chunks = max(1, ceil_div(p.n_blocks, p.blocks_per_chunk))
    # Tiles of part of a row stream badly one at a time: with chunks enough to share out,
    # one reduction task takes every tile of its chunk, block by block (same bits either way).
    p.whole_rows = p.tiled and p.n_ctasks > 1 and p.n_chunks >= WHOLE_ROW_CHUNKS
    return p


cdef inline void run_block(const Plan *p, intp b, intp *row0, intp *nrows, intp *start,
                           intp *length) noexcept nogil:
    """Rows and columns of block b of a channel in the runs layout."""
    if p.pieces == 1:
        row0[0] = b * p.rows_per_block
        nrows[0] = min(p.rows_per_block, p.outer - row0[0])
        start[0] = 0
        length[0] = p.inner
    else:
        row0[0] = b // p.pieces
        nrows[0] = 1
        start[0] = (b % p.pieces) * p.piece_len
        length[0] = min(p.piece_len, p.inner - start[0])


cdef inline int n_threads_for(int requested, intp work, intp n_tasks) noexcept nogil:
    """Threads worth waking for `work` elements split into `n_tasks` tasks."""
    cdef intp t = requested if requested > 0 else bn_max_threads()
    # More threads than processors never helps these loops, and asking libgomp for thousands
    # can make it fail to create them, which ends the process.
    t = min(t, bn_num_procs(), n_tasks, max(1, work // MIN_PER_THREAD))
    return <int>max(1, t)


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


# --- Statistics -----------------------------------------------------------------------------

cdef inline double first_values_mean(const floating *x, intp n) noexcept nogil:
    """Mean of x[0:n] (n >= 1): the shift guess for a chunk's first block of runs."""
    cdef double s = 0.0
    cdef intp i
    for i in range(n):
        s += x[i]
    return s / n


cdef inline void first_rows_mean(const floating *x, intp nrows, intp ncols, intp stride,
                                 double *out) noexcept nogil:
    """Per-column mean of the first nrows (>= 1) tile rows: the tiles' shift guess."""
    cdef intp r, c
    for c in range(ncols):
        out[c] = x[c]
    for r in range(1, nrows):
        for c in range(ncols):
            out[c] += x[r * stride + c]
    for c in range(ncols):
        out[c] /= nrows


cdef inline void tile_block_moments(const floating *x, const Plan *p, intp b, intp t, double n,
                                    double *mean, double *m2) noexcept nogil:
    """Fold block b of tile t into a chunk's Welford state (mean[C], m2[C]) after n rows.

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
    m2 += c0
    shift[0] = 0.0  # nc >= 1 and both branches set shift[:nc]: this store tells GCC so
    if n > 0:
        for j in range(nc):
            shift[j] = mean[j]
    else:
        first_rows_mean(ptr, min(nrows, SHIFT_PROBE), nc, p.C, shift)
    if floating is float:
        tile_moments_f32(ptr, nrows, nc, p.C, shift, tmean, tm2, scratch)
    else:
        tile_moments_f64(ptr, nrows, nc, p.C, shift, tmean, tm2, scratch)
    chan_weights(n, <double>nrows, &wb, &wab)
    for j in range(nc):
        chan_apply(&mean[j], &m2[j], tmean[j], tm2[j], wb, wab)


cdef void moments_task(const floating *x, const Plan *p, intp k, intp t, double *st_n,
                       double *st_mean, double *st_m2) noexcept nogil:
    """Welford state of chunk k of channel task t (t < 0: every tile of a tiled layout, block
    by block), written at st_*[k * C + channel].

    Each block's sums are shifted by a guess of its mean: the chunk's mean so far, or the mean
    of the block's first values for the chunk's first block.  A channel's arithmetic does not
    depend on t: one task per tile and one task for all tiles give the same bits.
    """
    cdef intp b, b1, row0, nrows, start, length, c0, nc, j, t0, t1
    cdef double n = 0.0, nb, wb, wab, bmean, bm2, shift
    cdef const floating *ptr
    cdef double *mean = st_mean + k * p.C
    cdef double *m2 = st_m2 + k * p.C
    b1 = min((k + 1) * p.blocks_per_chunk, p.n_blocks)
    if not p.tiled:
        mean += t
        m2 += t
        mean[0] = 0.0
        m2[0] = 0.0
        for b in range(k * p.blocks_per_chunk, b1):
            run_block(p, b, &row0, &nrows, &start, &length)
            ptr = x + (row0 * p.C + t) * p.inner + start
            shift = mean[0] if n > 0 else first_values_mean(ptr, min(length, SHIFT_PROBE))
            if floating is float:
                run_moments_f32(ptr, nrows, length, p.C * p.inner, shift, &bmean, &bm2)
            else:
                run_moments_f64(ptr, nrows, length, p.C * p.inner, shift, &bmean, &bm2)
            nb = <double>(nrows * length)
            chan_weights(n, nb, &wb, &wab)
            chan_apply(mean, m2, bmean, bm2, wb, wab)
            n += nb
        st_n[k * p.C + t] = n
        return
    t0 = 0 if t < 0 else t
    t1 = p.n_ctasks if t < 0 else t + 1
    c0 = t0 * p.ctile
    nc = min(t1 * p.ctile, p.C) - c0
    for j in range(c0, c0 + nc):
        mean[j] = 0.0
        m2[j] = 0.0
    for b in range(k * p.blocks_per_chunk, b1):
        for j in range(t0, t1):
            tile_block_moments(x, p, b, j, n, mean, m2)
        n += <double>min(p.rows_per_block, p.outer - b * p.rows_per_block)
    for j in range(c0, c0 + nc):
        st_n[k * p.C + j] = n


cdef int alloc_states(const Plan *p, double **st_n, double **st_mean,
                      double **st_m2) except -1 nogil:
    """Room for one Welford state per chunk and channel (freed with free(st_n[0]))."""
    cdef intp states = p.n_chunks * p.C
    st_n[0] = <double *>malloc(3 * max(states, 1) * sizeof(double))
    if st_n[0] == NULL:
        with gil:
            raise MemoryError()
    st_mean[0] = st_n[0] + states
    st_m2[0] = st_n[0] + 2 * states
    return 0


cdef inline void merge_channel(const Plan *p, const double *st_n, const double *st_mean,
                               const double *st_m2, double *count, double *mean, double *m2,
                               intp c) noexcept nogil:
    cdef intp k, idx
    cdef double n = st_n[c], wb, wab
    mean[c] = st_mean[c]
    m2[c] = st_m2[c]
    for k in range(1, p.n_chunks):
        idx = k * p.C + c
        if st_n[idx] != 0:
            chan_weights(n, st_n[idx], &wb, &wab)
            chan_apply(&mean[c], &m2[c], st_mean[idx], st_m2[idx], wb, wab)
            n = n + st_n[idx]
    if count != NULL:
        count[c] = n


cdef void merge_chunks(const Plan *p, const double *st_n, const double *st_mean,
                       const double *st_m2, double *count, double *mean, double *m2,
                       int n_threads) noexcept nogil:
    """Merge the chunk states of every channel, in chunk order, into count, mean and m2."""
    cdef intp c
    cdef int nt = n_threads_for(n_threads, p.n_chunks * p.C, p.C)
    if nt > 1:
        for c in prange(p.C, num_threads=nt, schedule='dynamic'):
            merge_channel(p, st_n, st_mean, st_m2, count, mean, m2, c)
    else:
        for c in range(p.C):
            merge_channel(p, st_n, st_mean, st_m2, count, mean, m2, c)


cdef int channel_moments(const floating *x, const Plan *p, double *mean, double *m2,
                         int n_threads) except -1 nogil:
    """Per-channel mean and M2 of x into mean[C], m2[C]; bit-identical for any n_threads."""
    cdef intp per = 1 if p.whole_rows else p.n_ctasks
    cdef intp n_tasks = p.n_chunks * per, task
    cdef int nt = n_threads_for(n_threads, p.outer * p.C * p.inner, n_tasks)
    cdef double *st_n
    cdef double *st_mean
    cdef double *st_m2
    alloc_states(p, &st_n, &st_mean, &st_m2)
    if nt > 1:
        for task in prange(n_tasks, num_threads=nt, schedule='dynamic'):
            moments_task(x, p, task // per, -1 if p.whole_rows else task % per, st_n, st_mean,
                         st_m2)
    else:
        for task in range(n_tasks):
            moments_task(x, p, task // per, -1 if p.whole_rows else task % per, st_n, st_mean,
                         st_m2)
    merge_chunks(p, st_n, st_mean, st_m2, NULL, mean, m2, n_threads)
    free(st_n)
    return 0


cdef void masked_task(const floating *x, const double *w, const Plan *p, intp k, intp t,
                      double *st_n, double *st_mean, double *st_m2) noexcept nogil:
    """Weighted NaN-skipping Welford state of chunk k of channel tile t (shifted like
    moments_task: by the chunk's mean so far, else the block's first value, NaN: 0)."""
    cdef intp b, b1, row0, nrows, j
    cdef intp c0 = t * p.ctile
    cdef intp nc = min(p.ctile, p.C - c0)
    cdef intp base = k * p.C + c0
    cdef double wb, wab, v
    cdef const floating *ptr
    cdef double shift[TILE_C]
    cdef double tn[TILE_C]
    cdef double tmean[TILE_C]
    cdef double tm2[TILE_C]
    cdef double scratch[TILE_C]
    for j in range(nc):
        st_n[base + j] = 0.0
        st_mean[base + j] = 0.0
        st_m2[base + j] = 0.0
    b1 = min((k + 1) * p.blocks_per_chunk, p.n_blocks)
    for b in range(k * p.blocks_per_chunk, b1):
        row0 = b * p.rows_per_block
        nrows = min(p.rows_per_block, p.outer - row0)
        ptr = x + row0 * p.C + c0
        for j in range(nc):
            v = <double>ptr[j]
            shift[j] = st_mean[base + j] if st_n[base + j] != 0 else (v if v == v else 0.0)
        if floating is float:
            tile_moments_masked_f32(ptr, w + row0 if w != NULL else NULL, nrows, nc, p.C, shift,
                                    tn, tmean, tm2, scratch)
        else:
            tile_moments_masked_f64(ptr, w + row0 if w != NULL else NULL, nrows, nc, p.C, shift,
                                    tn, tmean, tm2, scratch)
        for j in range(nc):
            if tn[j] != 0:
                chan_weights(st_n[base + j], tn[j], &wb, &wab)
                chan_apply(&st_mean[base + j], &st_m2[base + j], tmean[j], tm2[j], wb, wab)
                st_n[base + j] += tn[j]


cdef int masked_moments(const floating *x, const double *w, const Plan *p, double *count,
                        double *mean, double *m2, int n_threads) except -1 nogil:
    cdef intp n_tasks = p.n_chunks * p.n_ctasks, task
    cdef int nt = n_threads_for(n_threads, p.outer * p.C, n_tasks)
    cdef double *st_n
    cdef double *st_mean
    cdef double *st_m2
    alloc_states(p, &st_n, &st_mean, &st_m2)
    if nt > 1:
        for task in prange(n_tasks, num_threads=nt, schedule='dynamic'):
            masked_task(x, w, p, task // p.n_ctasks, task % p.n_ctasks, st_n, st_mean, st_m2)
    else:
        for task in range(n_tasks):
            masked_task(x, w, p, task // p.n_ctasks, task % p.n_ctasks, st_n, st_mean, st_m2)
    merge_chunks(p, st_n, st_mean, st_m2, count, mean, m2, n_threads)
    free(st_n)
    return 0


# --- Elementwise passes ---------------------------------------------------------------------

cdef struct RowPlan:
    intp span              # samples per row
    intp width             # elements per row: span * C
    intp n_rows            # whole rows
    intp rem_cols          # elements of the short last row (outer % span samples), or 0
    intp per_seg           # rows per segment
    intp n_segments


cdef RowPlan row_plan(const Plan *p) noexcept nogil:
    """How the elementwise passes walk the tiled layout: rows of `span` samples."""
    cdef RowPlan r
    r.span = max(1, min(ceil_div(ROW_MIN, p.C), p.outer))
    r.width = r.span * p.C
    r.n_rows = p.outer // r.span
    r.rem_cols = (p.outer % r.span) * p.C
    r.per_seg = max(4, ROW_SEGMENT // r.width // 4 * 4)
    r.n_segments = ceil_div(r.n_rows, r.per_seg) + (1 if r.rem_cols else 0)
    return r


cdef inline void row_segment(const RowPlan *r, intp seg, intp *off, intp *nrows,
                             intp *ncols) noexcept nogil:
    """First element, rows and row length of segment seg."""
    cdef intp first = seg * r.per_seg
    if first < r.n_rows:
        off[0] = first * r.width
        nrows[0] = min(r.per_seg, r.n_rows - first)
        ncols[0] = r.width
    else:
        off[0] = r.n_rows * r.width
        nrows[0] = 1
        ncols[0] = r.rem_cols


cdef int replicate(const double **coef, double **rep, int n_coef, intp C, intp span) except -1 nogil:
    """rep[i] = coef[i] tiled to span * C elements (one buffer when span > 1, else coef)."""
    cdef intp i, j
    cdef double *buf
    if span == 1:
        for i in range(n_coef):
            rep[i] = <double *>coef[i]
        return 0
    buf = <double *>malloc(n_coef * span * C * sizeof(double))
    if buf == NULL:
        with gil:
            raise MemoryError()
    for i in range(n_coef):
        rep[i] = buf + i * span * C
        memcpy(rep[i], coef[i], C * sizeof(double))
        j = 1
        while j < span:  # double the filled part until it covers span copies
            memcpy(rep[i] + j * C, rep[i], min(j, span - j) * C * sizeof(double))
            j += min(j, span - j)
    return 0


# Outputs at least this large (bytes) are written with non-temporal stores, unless in place,
# which skips reading them before writing. Off by default: on the reference machine (2-core
# AMD EPYC VM, 32 MiB L3) streaming was 0-44% slower at 1 thread and 7% faster to 21% slower
# at 2 threads for 24-200 MiB outputs (python -m bnfast bench, same run). Tunable with
# set_stream_min_bytes() for machines where it pays.
cdef intp stream_min_bytes = (<intp>1) << 62


cdef inline bint streams(const void *out, const void *a, const void *b, intp nbytes) noexcept nogil:
    """Whether to write an output of nbytes with non-temporal stores (never in place)."""
    return nbytes >= stream_min_bytes and out != a and out != b


cdef inline void normalize_segment(const floating *x, floating *y, const Plan *p, intp seg,
                                   const double *mean, const double *scale, const double *shift,
                                   bint stream) noexcept nogil:
    """Segment seg of the runs layout: a piece of one (sample, channel) row."""
    cdef intp row = seg // p.pieces
    cdef intp c = row % p.C
    cdef intp start = (seg % p.pieces) * p.piece_len
    cdef intp length = min(p.piece_len, p.inner - start)
    if floating is float:
        run_normalize_f32(x + row * p.inner + start, y + row * p.inner + start, length,
                          mean[c], scale[c], shift[c], stream)
    else:
        run_normalize_f64(x + row * p.inner + start, y + row * p.inner + start, length,
                          mean[c], scale[c], shift[c], stream)


cdef inline void normalize_rows(const floating *x, floating *y, const RowPlan *r, intp seg,
                                double **rep, bint stream) noexcept nogil:
    """Segment seg of the tiled layout: whole rows of r.span samples."""
    cdef intp off, nrows, ncols
    row_segment(r, seg, &off, &nrows, &ncols)
    if floating is float:
        row_normalize_f32(x + off, y + off, nrows, ncols, rep[0], rep[1], rep[2], stream)
    else:
        row_normalize_f64(x + off, y + off, nrows, ncols, rep[0], rep[1], rep[2], stream)


cdef int normalize(const floating *x, floating *y, const Plan *p, const double *mean,
                   const double *scale, const double *shift, int n_threads) except -1 nogil:
    """y = (x - mean) * scale + shift per channel (y may be x)."""
    cdef intp seg, n_segments
    cdef RowPlan r
    cdef int nt
    cdef bint stream = streams(y, x, x, p.outer * p.C * p.inner * sizeof(floating))
    cdef const double *coef[3]
    cdef double *rep[3]
    if not p.tiled:
        n_segments = p.outer * p.C * p.pieces
        nt = n_threads_for(n_threads, p.outer * p.C * p.inner, n_segments)
        if nt > 1:
            for seg in prange(n_segments, num_threads=nt, schedule='guided'):
                normalize_segment(x, y, p, seg, mean, scale, shift, stream)
        else:
            for seg in range(n_segments):
                normalize_segment(x, y, p, seg, mean, scale, shift, stream)
        return 0
    # Tiled: rows of `span` samples, with the coefficients repeated span times.
    r = row_plan(p)
    coef[0] = mean
    coef[1] = scale
    coef[2] = shift
    replicate(coef, rep, 3, p.C, r.span)
    nt = n_threads_for(n_threads, p.outer * p.C, r.n_segments)
    if nt > 1:
        for seg in prange(r.n_segments, num_threads=nt, schedule='guided'):
            normalize_rows(x, y, &r, seg, rep, stream)
    else:
        for seg in range(r.n_segments):
            normalize_rows(x, y, &r, seg, rep, stream)
    if r.span > 1:
        free(rep[0])
    return 0


cdef inline void forward_channel(const floating *x, floating *y, const Plan *p, intp c,
                                 const double *gamma, const double *beta, double eps,
                                 double *st_n, double *mean, double *m2, double *invstd,
                                 bint stream) noexcept nogil:
    """Statistics of channel c, then its normalized rows, while they sit in cache."""
    cdef intp o
    cdef double scale, shift
    moments_task(x, p, 0, c, st_n, mean, m2)
    invstd[c] = 1.0 / sqrt(m2[c] / <double>(p.outer * p.inner) + eps)
    scale = invstd[c] * gamma[c] if gamma != NULL else invstd[c]
    shift = beta[c] if beta != NULL else 0.0
    for o in range(p.outer):
        if floating is float:
            run_normalize_f32(x + (o * p.C + c) * p.inner, y + (o * p.C + c) * p.inner,
                              p.inner, mean[c], scale, shift, stream)
        else:
            run_normalize_f64(x + (o * p.C + c) * p.inner, y + (o * p.C + c) * p.inner,
                              p.inner, mean[c], scale, shift, stream)


cdef int forward_fused(const floating *x, floating *y, const Plan *p, const double *gamma,
                       const double *beta, double eps, double *mean, double *m2,
                       double *invstd, int n_threads) except -1 nogil:
    """Training forward one channel at a time: statistics, then normalize from cache."""
    cdef intp c
    cdef double *st_n = <double *>malloc(p.C * sizeof(double))
    cdef int nt = n_threads_for(n_threads, p.outer * p.C * p.inner, p.C)
    cdef bint stream = streams(y, x, x, p.outer * p.C * p.inner * sizeof(floating))
    if st_n == NULL:
        with gil:
            raise MemoryError()
    if nt > 1:
        for c in prange(p.C, num_threads=nt, schedule='dynamic'):
            forward_channel(x, y, p, c, gamma, beta, eps, st_n, mean, m2, invstd, stream)
    else:
        for c in range(p.C):
            forward_channel(x, y, p, c, gamma, beta, eps, st_n, mean, m2, invstd, stream)
    free(st_n)
    return 0


# --- Backward -------------------------------------------------------------------------------

cdef void grad_sums_task(const floating *dy, const floating *x, const Plan *p, const double *mean,
                         intp k, intp t, double *st_a, double *st_b) noexcept nogil:
    """sum(dy) and sum(dy * (x - mean)) of chunk k of channel task t, at st_*[k * C + c]
    (t < 0: every tile of a tiled layout, block by block, with the same bits)."""
    cdef intp b, b1, row0, nrows, start, length, c0, nc, j, t0, t1, tt
    cdef double ba, bb
    cdef double ta[GRAD_TILE_C]
    cdef double tb[GRAD_TILE_C]
    cdef double *sa = st_a + k * p.C
    cdef double *sb = st_b + k * p.C
    b1 = min((k + 1) * p.blocks_per_chunk, p.n_blocks)
    if not p.tiled:
        sa[t] = 0.0
        sb[t] = 0.0
        for b in range(k * p.blocks_per_chunk, b1):
            run_block(p, b, &row0, &nrows, &start, &length)
            if floating is float:
                run_grad_sums_f32(dy + (row0 * p.C + t) * p.inner + start,
                                  x + (row0 * p.C + t) * p.inner + start, nrows, length,
                                  p.C * p.inner, mean[t], &ba, &bb)
            else:
                run_grad_sums_f64(dy + (row0 * p.C + t) * p.inner + start,
                                  x + (row0 * p.C + t) * p.inner + start, nrows, length,
                                  p.C * p.inner, mean[t], &ba, &bb)
            sa[t] += ba
            sb[t] += bb
        return
    t0 = 0 if t < 0 else t
    t1 = p.n_ctasks if t < 0 else t + 1
    for j in range(t0 * p.ctile, min(t1 * p.ctile, p.C)):
        sa[j] = 0.0
        sb[j] = 0.0
    for b in range(k * p.blocks_per_chunk, b1):
        row0 = b * p.rows_per_block
        nrows = min(p.rows_per_block, p.outer - row0)
        for tt in range(t0, t1):
            c0 = tt * p.ctile
            nc = min(p.ctile, p.C - c0)
            if floating is float:
                tile_grad_sums_f32(dy + row0 * p.C + c0, x + row0 * p.C + c0, nrows, nc, p.C,
                                   mean + c0, ta, tb)
            else:
                tile_grad_sums_f64(dy + row0 * p.C + c0, x + row0 * p.C + c0, nrows, nc, p.C,
                                   mean + c0, ta, tb)
            for j in range(nc):
                sa[c0 + j] += ta[j]
                sb[c0 + j] += tb[j]


cdef int grad_sums(const floating *dy, const floating *x, const Plan *p, const double *mean,
                   double *sum_dy, double *sum_dy_xmu, int n_threads) except -1 nogil:
    """Per-channel sum(dy) and sum(dy * (x - mean)); bit-identical for any n_threads."""
    cdef intp per = 1 if p.whole_rows else p.n_ctasks
    cdef intp n_tasks = p.n_chunks * per, task, c, k
    cdef intp states = p.n_chunks * p.C
    cdef int nt = n_threads_for(n_threads, 2 * p.outer * p.C * p.inner, n_tasks)
    cdef double *st = sum_dy
    cdef double *st_a
    cdef double *st_b
    if p.n_chunks == 1:
        st_a = sum_dy
        st_b = sum_dy_xmu
    else:
        st = <double *>malloc(2 * states * sizeof(double))
        if st == NULL:
            with gil:
                raise MemoryError()
        st_a = st
        st_b = st + states
    if nt > 1:
        for task in prange(n_tasks, num_threads=nt, schedule='dynamic'):
            grad_sums_task(dy, x, p, mean, task // per, -1 if p.whole_rows else task % per, st_a,
                           st_b)
    else:
        for task in range(n_tasks):
            grad_sums_task(dy, x, p, mean, task // per, -1 if p.whole_rows else task % per, st_a,
                           st_b)
    if p.n_chunks > 1:
        for c in range(p.C):
            sum_dy[c] = st_a[c]
            sum_dy_xmu[c] = st_b[c]
            for k in range(1, p.n_chunks):
                sum_dy[c] += st_a[k * p.C + c]
                sum_dy_xmu[c] += st_b[k * p.C + c]
        free(st)
    return 0


cdef inline void grad_input_segment(const floating *dy, const floating *x, floating *dx,
                                    const Plan *p, intp seg, const double *mean, const double *a,
                                    const double *b, const double *k, bint stream) noexcept nogil:
    """Segment seg of the runs layout: a piece of one (sample, channel) row."""
    cdef intp row = seg // p.pieces
    cdef intp c = row % p.C
    cdef intp off = row * p.inner + (seg % p.pieces) * p.piece_len
    cdef intp length = min(p.piece_len, p.inner - (seg % p.pieces) * p.piece_len)
    if floating is float:
        run_grad_input_f32(dy + off, x + off, dx + off, length, mean[c], a[c], b[c], k[c], stream)
    else:
        run_grad_input_f64(dy + off, x + off, dx + off, length, mean[c], a[c], b[c], k[c], stream)


cdef inline void grad_input_rows(const floating *dy, const floating *x, floating *dx,
                                 const RowPlan *r, intp seg, double **rep,
                                 bint stream) noexcept nogil:
    """Segment seg of the tiled layout: whole rows of r.span samples."""
    cdef intp off, nrows, ncols
    row_segment(r, seg, &off, &nrows, &ncols)
    if floating is float:
        row_grad_input_f32(dy + off, x + off, dx + off, nrows, ncols, rep[0], rep[1], rep[2],
                           rep[3], stream)
    else:
        row_grad_input_f64(dy + off, x + off, dx + off, nrows, ncols, rep[0], rep[1], rep[2],
                           rep[3], stream)


cdef int grad_input(const floating *dy, const floating *x, floating *dx, const Plan *p,
                    const double *mean, const double *a, const double *b, const double *k,
                    int n_threads) except -1 nogil:
    """dx = ((dy - a) - (x - mean) * b) * k per channel (dx may be dy or x)."""
    cdef intp seg, n_segments
    cdef RowPlan r
    cdef int nt
    cdef bint stream = streams(dx, dy, x, p.outer * p.C * p.inner * sizeof(floating))
    cdef const double *coef[4]
    cdef double *rep[4]
    if not p.tiled:
        n_segments = p.outer * p.C * p.pieces
        nt = n_threads_for(n_threads, 2 * p.outer * p.C * p.inner, n_segments)
        if nt > 1:
            for seg in prange(n_segments, num_threads=nt, schedule='guided'):
                grad_input_segment(dy, x, dx, p, seg, mean, a, b, k, stream)
        else:
            for seg in range(n_segments):
                grad_input_segment(dy, x, dx, p, seg, mean, a, b, k, stream)
        return 0
    r = row_plan(p)
    coef[0] = mean
    coef[1] = a
    coef[2] = b
    coef[3] = k
    replicate(coef, rep, 4, p.C, r.span)
    nt = n_threads_for(n_threads, 2 * p.outer * p.C, r.n_segments)
    if nt > 1:
        for seg in prange(r.n_segments, num_threads=nt, schedule='guided'):
            grad_input_rows(dy, x, dx, &r, seg, rep, stream)
    else:
        for seg in range(r.n_segments):
            grad_input_rows(dy, x, dx, &r, seg, rep, stream)
    if r.span > 1:
        free(rep[0])
    return 0


cdef inline void backward_channel(const floating *dy, const floating *x, floating *dx,
                                  const Plan *p, intp c, const double *mean, const double *invstd,
                                  const double *gamma, double *dgamma, double *dbeta,
                                  bint stream) noexcept nogil:
    """Both sums of channel c, then its dx rows, while dy and x sit in cache."""
    cdef intp o, off
    cdef double m = <double>(p.outer * p.inner), a, b, k
    grad_sums_task(dy, x, p, mean, 0, c, dbeta, dgamma)
    dgamma[c] = dgamma[c] * invstd[c]
    a = dbeta[c] / m
    b = invstd[c] * dgamma[c] / m
    k = invstd[c] * gamma[c] if gamma != NULL else invstd[c]
    for o in range(p.outer):
        off = (o * p.C + c) * p.inner
        if floating is float:
            run_grad_input_f32(dy + off, x + off, dx + off, p.inner, mean[c], a, b, k, stream)
        else:
            run_grad_input_f64(dy + off, x + off, dx + off, p.inner, mean[c], a, b, k, stream)


cdef int backward_fused(const floating *dy, const floating *x, floating *dx, const Plan *p,
                        const double *mean, const double *invstd, const double *gamma,
                        double *dgamma, double *dbeta, int n_threads) except -1 nogil:
    """Backward one channel at a time: both sums, then dx while dy and x sit in cache."""
    cdef intp c
    cdef int nt = n_threads_for(n_threads, 2 * p.outer * p.C * p.inner, p.C)
    cdef bint stream = streams(dx, dy, x, p.outer * p.C * p.inner * sizeof(floating))
    if nt > 1:
        for c in prange(p.C, num_threads=nt, schedule='dynamic'):
            backward_channel(dy, x, dx, p, c, mean, invstd, gamma, dgamma, dbeta, stream)
    else:
        for c in range(p.C):
            backward_channel(dy, x, dx, p, c, mean, invstd, gamma, dgamma, dbeta, stream)
    return 0


# --- Entry points ---------------------------------------------------------------------------

cdef int working_type(cnp.ndarray a, str name) except -1:
    """NPY_FLOAT32 or NPY_FLOAT64 for a C-contiguous 3-D array; TypeError otherwise."""
    cdef int typenum = cnp.PyArray_TYPE(a)
    if cnp.PyArray_NDIM(a) != 3 or not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{name}: expected a C-contiguous 3-D (outer, C, inner) view")
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        raise TypeError(f"{name}: expected float32 or float64, got {a.dtype}")
    if not cnp.PyArray_ISNOTSWAPPED(a):
        raise ValueError(f"{name}: expected native byte order")
    return typenum


cdef void check_like(cnp.ndarray a, cnp.ndarray ref, int typenum, str name, bint write) except *:
    if (cnp.PyArray_TYPE(a) != typenum or cnp.PyArray_NDIM(a) != 3
            or not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_ISNOTSWAPPED(a)
            or a.shape[0] != ref.shape[0] or a.shape[1] != ref.shape[1]
            or a.shape[2] != ref.shape[2]):
        raise ValueError(f"{name}: expected a C-contiguous array like x, of x's dtype")
    if write and not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{name}: expected a writeable array")


cdef double *vec_ptr(object a, intp C, str name, bint write) except? NULL:
    """Data pointer of a C-contiguous float64 vector of length C, or NULL for None."""
    cdef cnp.ndarray arr
    if a is None:
        return NULL
    if not isinstance(a, cnp.ndarray):
        raise TypeError(f"{name}: expected an ndarray")
    arr = <cnp.ndarray>a
    if (cnp.PyArray_TYPE(arr) != cnp.NPY_FLOAT64 or cnp.PyArray_NDIM(arr) != 1
            or arr.shape[0] != C or not cnp.PyArray_IS_C_CONTIGUOUS(arr)
            or not cnp.PyArray_ISNOTSWAPPED(arr)):
        raise ValueError(f"{name}: expected a C-contiguous float64 array of shape ({C},)")
    if write and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{name}: expected a writeable array")
    return <double *>cnp.PyArray_DATA(arr)


cdef void update_running(object running, const double *batch, intp C, double momentum,
                         double factor) except *:
    """running = (1 - momentum) * running + momentum * factor * batch, for float32/float64."""
    cdef cnp.ndarray r
    cdef float *rf
    cdef double *rd
    cdef intp c
    if running is None:
        return
    r = <cnp.ndarray>running
    if cnp.PyArray_TYPE(r) == cnp.NPY_FLOAT32:
        rf = <float *>cnp.PyArray_DATA(r)
        for c in range(C):
            rf[c] = <float>((1.0 - momentum) * rf[c] + momentum * (factor * batch[c]))
    else:
        rd = <double *>cnp.PyArray_DATA(r)
        for c in range(C):
            rd[c] = (1.0 - momentum) * rd[c] + momentum * (factor * batch[c])


cdef void check_running(object running, intp C, str name) except *:
    cdef cnp.ndarray r
    if running is None:
        return
    if not isinstance(running, cnp.ndarray):
        raise TypeError(f"{name}: expected an ndarray")
    r = <cnp.ndarray>running
    if ((cnp.PyArray_TYPE(r) != cnp.NPY_FLOAT32 and cnp.PyArray_TYPE(r) != cnp.NPY_FLOAT64)
            or cnp.PyArray_NDIM(r) != 1 or r.shape[0] != C
            or not cnp.PyArray_IS_C_CONTIGUOUS(r) or not cnp.PyArray_ISNOTSWAPPED(r)
            or not cnp.PyArray_ISWRITEABLE(r)):
        raise ValueError(f"{name}: expected a writeable C-contiguous float32 or float64 "
                         f"array of shape ({C},)")


def moments(cnp.ndarray x, cnp.ndarray mean, cnp.ndarray m2, int n_threads):
    """Fill mean[C] and m2[C] (sum of squared deviations) of the (outer, C, inner) view x."""
    cdef int typenum = working_type(x, "x")
    cdef intp outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef double *pm = vec_ptr(mean, C, "mean", True)
    cdef double *pm2 = vec_ptr(m2, C, "m2", True)
    cdef Plan p = make_plan(outer, C, inner, x.itemsize)
    if outer * inner == 0 or C == 0:
        raise ValueError("moments of an empty channel")
    with nogil:
        if typenum == cnp.NPY_FLOAT32:
            channel_moments(<const float *>cnp.PyArray_DATA(x), &p, pm, pm2, n_threads)
        else:
            channel_moments(<const double *>cnp.PyArray_DATA(x), &p, pm, pm2, n_threads)


def moments_masked(cnp.ndarray x, object weights, cnp.ndarray count, cnp.ndarray mean,
                   cnp.ndarray m2, int n_threads):
    """Per-column weighted Welford state of a 2-D (N, C) sample matrix, NaN skipped.

    x is C-contiguous 2-D float32/float64; weights None or float64 (N,). Fills count (sum of
    the weights of the non-NaN values), mean and m2 of every column.
    """
    cdef int typenum = cnp.PyArray_TYPE(x)
    cdef intp N, C, c
    cdef double *pw
    cdef double *pn
    cdef double *pm
    cdef double *pm2
    cdef Plan p
    if (cnp.PyArray_NDIM(x) != 2 or not cnp.PyArray_IS_C_CONTIGUOUS(x)
            or not cnp.PyArray_ISNOTSWAPPED(x)
            or (typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64)):
        raise ValueError("x: expected a C-contiguous 2-D float32 or float64 array")
    N = x.shape[0]
    C = x.shape[1]
    pw = vec_ptr(weights, N, "weights", False)
    pn = vec_ptr(count, C, "count", True)
    pm = vec_ptr(mean, C, "mean", True)
    pm2 = vec_ptr(m2, C, "m2", True)
    if C == 0:
        return
    p = make_plan(N, C, 1, x.itemsize, True)
    with nogil:
        if N == 0:
            for c in range(C):
                pn[c] = 0.0
                pm[c] = 0.0
                pm2[c] = 0.0
        elif typenum == cnp.NPY_FLOAT32:
            masked_moments(<const float *>cnp.PyArray_DATA(x), pw, &p, pn, pm, pm2, n_threads)
        else:
            masked_moments(<const double *>cnp.PyArray_DATA(x), pw, &p, pn, pm, pm2, n_threads)


cdef int forward_split(const void *x, void *out, const Plan *p, int typenum,
                       const double *gamma, const double *beta, double eps, double *mean,
                       double *m2, double *invstd, double *scale, double *shift,
                       int n_threads) except -1 nogil:
    """Training forward in two sweeps: all statistics, then all of y."""
    cdef intp c
    cdef double m = <double>(p.outer * p.inner)
    if typenum == cnp.NPY_FLOAT32:
        channel_moments(<const float *>x, p, mean, m2, n_threads)
    else:
        channel_moments(<const double *>x, p, mean, m2, n_threads)
    for c in range(p.C):
        invstd[c] = 1.0 / sqrt(m2[c] / m + eps)
        scale[c] = invstd[c] * gamma[c] if gamma != NULL else invstd[c]
        shift[c] = beta[c] if beta != NULL else 0.0
    if typenum == cnp.NPY_FLOAT32:
        normalize(<const float *>x, <float *>out, p, mean, scale, shift, n_threads)
    else:
        normalize(<const double *>x, <double *>out, p, mean, scale, shift, n_threads)
    return 0


cdef int train_impl(const void *x, void *y, int typenum, intp outer, intp C, intp inner,
                    const double *gamma, const double *beta, double eps, double *mean,
                    double *invstd, object running_mean, object running_var, double momentum,
                    int n_threads) except -1:
    """Training forward on raw buffers (outer * inner >= 2, C >= 1), running stats updated."""
    cdef double m = <double>(outer * inner)
    cdef intp itemsize = 4 if typenum == cnp.NPY_FLOAT32 else 8
    cdef Plan p = make_plan(outer, C, inner, itemsize)
    cdef double *scratch = <double *>malloc(3 * C * sizeof(double))
    cdef double *m2 = scratch
    if scratch == NULL:
        raise MemoryError()
    try:
        with nogil:
            if p.fused and typenum == cnp.NPY_FLOAT32:
                forward_fused(<const float *>x, <float *>y, &p, gamma, beta, eps, mean, m2,
                              invstd, n_threads)
            elif p.fused:
                forward_fused(<const double *>x, <double *>y, &p, gamma, beta, eps, mean, m2,
                              invstd, n_threads)
            else:
                forward_split(x, y, &p, typenum, gamma, beta, eps, mean, m2, invstd,
                              scratch + C, scratch + 2 * C, n_threads)
        # Unbiased variance m2 / (m - 1) goes into running_var (PyTorch's convention).
        update_running(running_mean, mean, C, momentum, 1.0)
        update_running(running_var, m2, C, momentum, 1.0 / (m - 1.0))
    finally:
        free(scratch)
    return 0


def forward_train(cnp.ndarray x, cnp.ndarray out, object gamma, object beta, double eps,
                  cnp.ndarray mean, cnp.ndarray invstd, object running_mean,
                  object running_var, double momentum, int n_threads):
    """Training forward: batch statistics into mean/invstd, y into out, running stats updated.

    Requires at least 2 elements per channel (checked by the Python layer).
    """
    cdef int typenum = working_type(x, "x")
    cdef intp outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef double *pmean = vec_ptr(mean, C, "mean", True)
    cdef double *pinv = vec_ptr(invstd, C, "invstd", True)
    cdef double *pg = vec_ptr(gamma, C, "gamma", False)
    cdef double *pb = vec_ptr(beta, C, "beta", False)
    check_like(out, x, typenum, "out", True)
    check_running(running_mean, C, "running_mean")
    check_running(running_var, C, "running_var")
    if outer * inner < 2:
        raise ValueError("training needs more than 1 value per channel")
    if C == 0:
        return
    train_impl(cnp.PyArray_DATA(x), cnp.PyArray_DATA(out), typenum, outer, C, inner, pg, pb,
               eps, pmean, pinv, running_mean, running_var, momentum, n_threads)


cdef bint plain_array(object a, int typenum, intp ndim) noexcept:
    """a is exactly an ndarray of typenum, ndim dimensions, C-contiguous, aligned, native."""
    cdef cnp.ndarray arr
    if type(a) is not cnp.ndarray:
        return False
    arr = <cnp.ndarray>a
    return (cnp.PyArray_TYPE(arr) == typenum and cnp.PyArray_NDIM(arr) == ndim
            and cnp.PyArray_IS_C_CONTIGUOUS(arr) and cnp.PyArray_ISALIGNED(arr)
            and cnp.PyArray_ISNOTSWAPPED(arr))


cdef bint plain_vector(object a, intp C, bint write) noexcept:
    """a is None, or a plain float32/float64 vector of length C (writeable if write)."""
    if a is None:
        return True
    if not (plain_array(a, cnp.NPY_FLOAT64, 1) or plain_array(a, cnp.NPY_FLOAT32, 1)):
        return False
    if (<cnp.ndarray>a).shape[0] != C:
        return False
    return not write or cnp.PyArray_ISWRITEABLE(<cnp.ndarray>a)


cdef const double *as_doubles(object a, double *buf, intp C) noexcept:
    """A plain vector's values as doubles: its own data, or converted into buf."""
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


cdef int plain_call(object x, object axis, object n_threads, intp *outer, intp *C,
                    intp *inner, int *nt) noexcept:
    """typenum of x when x, axis and n_threads are the plain case, else -1 (see below)."""
    cdef cnp.ndarray arr
    cdef int typenum, ndim, ax, i
    if type(x) is not cnp.ndarray:
        return -1
    arr = <cnp.ndarray>x
    typenum = cnp.PyArray_TYPE(arr)
    if typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64:
        return -1
    ndim = cnp.PyArray_NDIM(arr)
    if not plain_array(x, typenum, ndim) or ndim < 2 or type(axis) is not int:
        return -1
    nt[0] = 0
    if n_threads is not None:
        if type(n_threads) is not int or not 1 <= n_threads <= 65536:
            return -1
        nt[0] = n_threads
    if not -ndim <= axis < ndim:
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
    return typenum


cdef object plain_out(object out, cnp.ndarray like, object other):
    """A new array like `like`, or `out` when it is plain, writeable, of like's type and shape,
    and either identical to or disjoint from `like` and `other`; None otherwise."""
    cdef cnp.ndarray y, a
    cdef int i
    cdef intp nbytes
    cdef char *ys
    cdef char *xs
    if out is None:
        return cnp.PyArray_EMPTY(cnp.PyArray_NDIM(like), like.shape, cnp.PyArray_TYPE(like), 0)
    if (not plain_array(out, cnp.PyArray_TYPE(like), cnp.PyArray_NDIM(like))
            or not cnp.PyArray_ISWRITEABLE(<cnp.ndarray>out)):
        return None
    y = <cnp.ndarray>out
    for i in range(cnp.PyArray_NDIM(like)):
        if y.shape[i] != like.shape[i]:
            return None
    nbytes = cnp.PyArray_NBYTES(like)
    ys = <char *>cnp.PyArray_DATA(y)
    for a in (like, other):
        xs = <char *>cnp.PyArray_DATA(a)
        if xs != ys and xs < ys + nbytes and ys < xs + nbytes:
            return None  # partial overlap: the validating path copies
    return y


# The fast paths below recognize the plain case of a public function (C-contiguous native
# float32/float64 arrays, an int axis in range, float eps/momentum in range, per-channel
# arguments None or plain float32/64 vectors of length C, out None or a plain writeable
# array that is an input itself or disjoint from them, n_threads None or an int >= 1) and
# compute it with no Python in between. Anything else returns None and the caller takes the
# validating path, which also produces every error message: they recognize, never reject.

def forward_train_fast(object x, object gamma, object beta, object axis, object eps,
                       object running_mean, object running_var, object momentum, object out,
                       object n_threads):
    """batch_norm_forward for the plain case (see above), or None."""
    cdef intp outer, C, inner
    cdef int nt
    cdef int typenum = plain_call(x, axis, n_threads, &outer, &C, &inner, &nt)
    cdef double e, mom
    cdef double *buf
    cdef cnp.ndarray mean, invstd
    cdef object y
    if typenum < 0 or outer * inner < 2 or type(eps) is not float or type(momentum) is not float:
        return None
    e = eps
    mom = momentum
    if not (0.0 <= e < float("inf")) or not (0.0 <= mom <= 1.0):
        return None
    if not (plain_vector(gamma, C, False) and plain_vector(beta, C, False)
            and plain_vector(running_mean, C, True) and plain_vector(running_var, C, True)):
        return None
    y = plain_out(out, <cnp.ndarray>x, x)
    if y is None:
        return None
    mean = cnp.PyArray_EMPTY(1, &C, cnp.NPY_FLOAT64, 0)
    invstd = cnp.PyArray_EMPTY(1, &C, cnp.NPY_FLOAT64, 0)
    buf = <double *>malloc(2 * C * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    try:
        train_impl(cnp.PyArray_DATA(<cnp.ndarray>x), cnp.PyArray_DATA(<cnp.ndarray>y), typenum,
                   outer, C, inner, as_doubles(gamma, buf, C), as_doubles(beta, buf + C, C), e,
                   <double *>cnp.PyArray_DATA(mean), <double *>cnp.PyArray_DATA(invstd),
                   running_mean, running_var, mom, nt)
    finally:
        free(buf)
    return y, mean, invstd


def forward_infer_fast(object x, object running_mean, object running_var, object gamma,
                       object beta, object axis, object eps, object out, object n_threads):
    """batch_norm_inference for the plain case (see above), or None."""
    cdef intp outer, C, inner
    cdef int nt
    cdef int typenum = plain_call(x, axis, n_threads, &outer, &C, &inner, &nt)
    cdef double e
    cdef double *buf
    cdef object y
    if typenum < 0 or type(eps) is not float or running_mean is None or running_var is None:
        return None
    e = eps
    if not (0.0 <= e < float("inf")):
        return None
    if not (plain_vector(running_mean, C, False) and plain_vector(running_var, C, False)
            and plain_vector(gamma, C, False) and plain_vector(beta, C, False)):
        return None
    y = plain_out(out, <cnp.ndarray>x, x)
    if y is None:
        return None
    buf = <double *>malloc(4 * C * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    try:
        infer_impl(cnp.PyArray_DATA(<cnp.ndarray>x), cnp.PyArray_DATA(<cnp.ndarray>y), typenum,
                   outer, C, inner, as_doubles(running_mean, buf, C),
                   as_doubles(running_var, buf + C, C), as_doubles(gamma, buf + 2 * C, C),
                   as_doubles(beta, buf + 3 * C, C), e, nt)
    finally:
        free(buf)
    return y


def backward_fast(object dy, object x, object mean, object invstd, object gamma, object axis,
                  object out, object n_threads):
    """batch_norm_backward for the plain case (see above; dy plain like x), or None."""
    cdef intp outer, C, inner
    cdef int nt, i
    cdef int typenum = plain_call(x, axis, n_threads, &outer, &C, &inner, &nt)
    cdef double *buf
    cdef cnp.ndarray dgamma, dbeta
    cdef object dx
    if typenum < 0 or mean is None or invstd is None:
        return None
    if not plain_array(dy, typenum, cnp.PyArray_NDIM(<cnp.ndarray>x)):
        return None
    for i in range(cnp.PyArray_NDIM(<cnp.ndarray>x)):
        if (<cnp.ndarray>dy).shape[i] != (<cnp.ndarray>x).shape[i]:
            return None
    if not (plain_vector(mean, C, False) and plain_vector(invstd, C, False)
            and plain_vector(gamma, C, False)):
        return None
    dx = plain_out(out, <cnp.ndarray>x, dy)
    if dx is None:
        return None
    dgamma = cnp.PyArray_EMPTY(1, &C, cnp.NPY_FLOAT64, 0)
    dbeta = cnp.PyArray_EMPTY(1, &C, cnp.NPY_FLOAT64, 0)
    buf = <double *>malloc(3 * C * sizeof(double))
    if buf == NULL:
        raise MemoryError()
    try:
        backward_impl(cnp.PyArray_DATA(<cnp.ndarray>dy), cnp.PyArray_DATA(<cnp.ndarray>x),
                      cnp.PyArray_DATA(<cnp.ndarray>dx), typenum, outer, C, inner,
                      as_doubles(mean, buf, C), as_doubles(invstd, buf + C, C),
                      as_doubles(gamma, buf + 2 * C, C), <double *>cnp.PyArray_DATA(dgamma),
                      <double *>cnp.PyArray_DATA(dbeta), nt)
    finally:
        free(buf)
    return dx, dgamma, dbeta


cdef int infer_impl(const void *x, void *y, int typenum, intp outer, intp C, intp inner,
                    const double *rm, const double *rv, const double *gamma, const double *beta,
                    double eps, int n_threads) except -1:
    """Inference forward on raw buffers (outer * inner >= 1, C >= 1)."""
    cdef intp c
    cdef Plan p = make_plan(outer, C, inner, 4 if typenum == cnp.NPY_FLOAT32 else 8)
    cdef double *scratch = <double *>malloc(2 * C * sizeof(double))
    if scratch == NULL:
        raise MemoryError()
    try:
        with nogil:
            for c in range(C):
                scratch[c] = 1.0 / sqrt(rv[c] + eps)
                if gamma != NULL:
                    scratch[c] = scratch[c] * gamma[c]
                scratch[C + c] = beta[c] if beta != NULL else 0.0
            if typenum == cnp.NPY_FLOAT32:
                normalize(<const float *>x, <float *>y, &p, rm, scratch, scratch + C, n_threads)
            else:
                normalize(<const double *>x, <double *>y, &p, rm, scratch, scratch + C,
                          n_threads)
    finally:
        free(scratch)
    return 0


def forward_infer(cnp.ndarray x, cnp.ndarray out, cnp.ndarray running_mean,
                  cnp.ndarray running_var, object gamma, object beta, double eps, int n_threads):
    """Inference forward: y = (x - running_mean) / sqrt(running_var + eps) * gamma + beta."""
    cdef int typenum = working_type(x, "x")
    cdef intp outer = x.shape[0], C = x.shape[1], inner = x.shape[2]
    cdef double *prm = vec_ptr(running_mean, C, "running_mean", False)
    cdef double *prv = vec_ptr(running_var, C, "running_var", False)
    cdef double *pg = vec_ptr(gamma, C, "gamma", False)
    cdef double *pb = vec_ptr(beta, C, "beta", False)
    check_like(out, x, typenum, "out", True)
    if outer * inner == 0 or C == 0:
        return
    infer_impl(cnp.PyArray_DATA(x), cnp.PyArray_DATA(out), typenum, outer, C, inner, prm, prv,
               pg, pb, eps, n_threads)


cdef int backward_impl(const void *dy, const void *x, void *dx, int typenum, intp outer, intp C,
                       intp inner, const double *mean, const double *invstd,
                       const double *gamma, double *dgamma, double *dbeta,
                       int n_threads) except -1:
    """Backward on raw buffers (outer * inner >= 1, C >= 1); dx may be dy or x."""
    cdef intp c
    cdef double m = <double>(outer * inner)
    cdef Plan p = make_plan(outer, C, inner, 4 if typenum == cnp.NPY_FLOAT32 else 8, False,
                            GRAD_TILE_C)
    cdef double *scratch
    if p.fused:
        with nogil:
            if typenum == cnp.NPY_FLOAT32:
                backward_fused(<const float *>dy, <const float *>x, <float *>dx, &p, mean,
                               invstd, gamma, dgamma, dbeta, n_threads)
            else:
                backward_fused(<const double *>dy, <const double *>x, <double *>dx, &p, mean,
                               invstd, gamma, dgamma, dbeta, n_threads)
        return 0
    scratch = <double *>malloc(3 * C * sizeof(double))
    if scratch == NULL:
        raise MemoryError()
    try:
        with nogil:
            # dgamma holds sum(dy * (x - mean)) until it is scaled below.
            if typenum == cnp.NPY_FLOAT32:
                grad_sums(<const float *>dy, <const float *>x, &p, mean, dbeta, dgamma, n_threads)
            else:
                grad_sums(<const double *>dy, <const double *>x, &p, mean, dbeta, dgamma,
                          n_threads)
            for c in range(C):
                dgamma[c] = dgamma[c] * invstd[c]
                scratch[c] = dbeta[c] / m
                scratch[C + c] = invstd[c] * dgamma[c] / m
                scratch[2 * C + c] = invstd[c] * gamma[c] if gamma != NULL else invstd[c]
            if typenum == cnp.NPY_FLOAT32:
                grad_input(<const float *>dy, <const float *>x, <float *>dx, &p, mean, scratch,
                           scratch + C, scratch + 2 * C, n_threads)
            else:
                grad_input(<const double *>dy, <const double *>x, <double *>dx, &p, mean,
                           scratch, scratch + C, scratch + 2 * C, n_threads)
    finally:
        free(scratch)
    return 0


def backward(cnp.ndarray dy, cnp.ndarray x, cnp.ndarray dx, cnp.ndarray mean,
             cnp.ndarray invstd, object gamma, cnp.ndarray dgamma, cnp.ndarray dbeta,
             int n_threads):
    """Backward: dbeta = sum dy, dgamma = sum dy * xhat, dx (may alias dy or x)."""
    cdef int typenum = working_type(x, "x")
    cdef intp outer = x.shape[0], C = x.shape[1], inner = x.shape[2], c
    cdef double *pmean = vec_ptr(mean, C, "mean", False)
    cdef double *pinv = vec_ptr(invstd, C, "invstd", False)
    cdef double *pg = vec_ptr(gamma, C, "gamma", False)
    cdef double *pdg = vec_ptr(dgamma, C, "dgamma", True)
    cdef double *pdb = vec_ptr(dbeta, C, "dbeta", True)
    check_like(dy, x, typenum, "dy", False)
    check_like(dx, x, typenum, "dx", True)
    if C == 0:
        return
    if outer * inner == 0:
        for c in range(C):
            pdg[c] = 0.0
            pdb[c] = 0.0
        return
    backward_impl(cnp.PyArray_DATA(dy), cnp.PyArray_DATA(x), cnp.PyArray_DATA(dx), typenum,
                  outer, C, inner, pmean, pinv, pg, pdg, pdb, n_threads)


def merge_states(cnp.ndarray count, cnp.ndarray mean, cnp.ndarray m2, cnp.ndarray count_b,
                 cnp.ndarray mean_b, cnp.ndarray m2_b):
    """Merge the Welford states (count_b, mean_b, m2_b) into (count, mean, m2), in place.

    All six are C-contiguous float64 vectors of one length; entries with count_b == 0 are
    left as they are.  This is the merge the kernels use between blocks and chunks.
    """
    cdef intp C = count.shape[0], c
    cdef double *n = vec_ptr(count, C, "count", True)
    cdef double *mu = vec_ptr(mean, C, "mean", True)
    cdef double *s = vec_ptr(m2, C, "m2", True)
    cdef double *nb = vec_ptr(count_b, C, "count_b", False)
    cdef double *mub = vec_ptr(mean_b, C, "mean_b", False)
    cdef double *sb = vec_ptr(m2_b, C, "m2_b", False)
    cdef double wb, wab
    with nogil:
        for c in range(C):
            if nb[c] > 0:
                chan_weights(n[c], nb[c], &wb, &wab)
                chan_apply(&mu[c], &s[c], mub[c], sb[c], wb, wab)
                n[c] = n[c] + nb[c]


def plan(intp outer, intp C, intp inner, intp itemsize=4):
    """The blocking of a (outer, C, inner) array, as a dict (for tests and benchmarks)."""
    return make_plan(outer, C, inner, itemsize)


def set_stream_min_bytes(intp nbytes):
    """Set the output size from which non-temporal stores are used; returns the old value.

    Results do not depend on it (only speed does).
    """
    global stream_min_bytes
    old = stream_min_bytes
    stream_min_bytes = max(nbytes, 0)
    return old


def openmp_enabled():
    """True when the kernels were compiled with OpenMP."""
    return bool(bn_openmp_enabled())


def max_threads():
    """OpenMP's current default thread count (OMP_NUM_THREADS, threadpoolctl); 1 without it."""
    return bn_max_threads()


def compile_flags():
    """The C compiler flags the kernels were built with."""
    return bn_compile_flags().decode()
