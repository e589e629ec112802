# Backward (included by _kernels.pyx): the per-channel sums sum(dy) and sum(dy * (x - mean)),
# then dx = ((dy - a) - (x - mean) * b) * k per channel, the closed form of docs/design.md §1
# with the per-channel factors a, b, k hoisted.

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
            k_run_grad_sums(dy + (row0 * p.C + t) * p.inner + start,
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
            k_tile_grad_sums(dy + row0 * p.C + c0, x + row0 * p.C + c0, nrows, nc, p.C,
                             mean + c0, ta, tb)
            for j in range(nc):
                sa[c0 + j] += ta[j]
                sb[c0 + j] += tb[j]


cdef void grad_sums_body(const floating *x, void *job, intp task) noexcept nogil:
    cdef Reduction *j = <Reduction *>job
    grad_sums_task(<const floating *>j.dy, x, j.p, j.mean, task // j.per,
                   -1 if j.p.whole_rows else task % j.per, j.st[0], j.st[1])


cdef int grad_sums(const floating *dy, const floating *x, const Plan *p, const double *mean,
                   double *sum_dy, double *sum_dy_xmu, int n_threads) except -1 nogil:
    """Per-channel sum(dy) and sum(dy * (x - mean)); bit-identical for any n_threads."""
    cdef Reduction j
    cdef intp n_tasks, states = p.n_chunks * p.C, c, k
    j.p = p
    j.dy = dy
    j.mean = mean
    j.per = 1 if p.whole_rows else p.n_ctasks
    n_tasks = p.n_chunks * j.per
    if p.n_chunks == 1:
        j.st[0] = sum_dy
        j.st[1] = sum_dy_xmu
    else:
        j.st[0] = <double *>malloc(2 * states * sizeof(double))
        if j.st[0] == NULL:
            with gil:
                raise MemoryError()
        j.st[1] = j.st[0] + states
    run_tasks(grad_sums_body[floating], x, &j, n_tasks,
              n_threads_for(n_threads, 2 * p.outer * p.C * p.inner, n_tasks), DYNAMIC)
    if p.n_chunks > 1:
        for c in range(p.C):
            sum_dy[c] = j.st[0][c]
            sum_dy_xmu[c] = j.st[1][c]
            for k in range(1, p.n_chunks):
                sum_dy[c] += j.st[0][k * p.C + c]
                sum_dy_xmu[c] += j.st[1][k * p.C + c]
        free(j.st[0])
    return 0


cdef void grad_input_body(const floating *x, void *job, intp seg) noexcept nogil:
    """Segment seg of dx = ((g - a) - (x - mean) * b) * k, g = dy (masked by relu_y > 0, and
    written to dres, when given)."""
    cdef Elementwise *j = <Elementwise *>job
    cdef const Plan *p = j.p
    cdef const floating *dy = <const floating *>j.dy
    cdef floating *dx = <floating *>j.y
    cdef const floating *ry = <const floating *>j.relu_y
    cdef floating *dr = <floating *>j.dres
    cdef intp row, c, off, length, nrows, ncols
    if p.tiled:
        row_segment(&j.r, seg, &off, &nrows, &ncols)
    else:
        row = seg // p.pieces
        c = row % p.C
        off = (seg % p.pieces) * p.piece_len
        length = min(p.piece_len, p.inner - off)
        off += row * p.inner
    if ry != NULL:
        ry = ry + off
    if dr != NULL:
        dr = dr + off
    if p.tiled:
        if floating is not double and j.f32:
            k_row_grad_input_c(dy + off, x + off, dx + off, nrows, ncols, j.frep[0], j.frep[1],
                               j.frep[2], j.frep[3], j.frep[4], j.frep[5], ry, dr, j.stream)
        else:
            k_row_grad_input(dy + off, x + off, dx + off, nrows, ncols, j.rep[0], j.rep[1],
                             j.rep[2], j.rep[3], ry, dr, j.stream)
        return
    k_run_grad_input(dy + off, x + off, dx + off, length, j.coef[0][c], j.coef[1][c],
                     j.coef[2][c], j.coef[3][c], ry, dr, j.stream)


cdef inline void grad_coefficients(double count, double dbeta, double dgamma, double invstd,
                                   const double *gamma, intp c, double *a, double *b,
                                   double *k) noexcept nogil:
    """a, b, k of channel c from the sums dbeta = sum(dy), dgamma = sum(dy * xhat) over
    count elements: the one place they are written."""
    a[0] = dbeta / count
    b[0] = invstd * dgamma / count
    k[0] = invstd * gamma[c] if gamma != NULL else invstd


cdef int grad_input(const floating *dy, const floating *x, floating *dx, const Plan *p,
                    const double *mean, const double *invstd, const double *gamma,
                    const double *dgamma, const double *dbeta, double count, double *scratch,
                    int n_threads, const floating *relu_y=NULL,
                    floating *dres=NULL) except -1 nogil:
    """dx from the per-channel sums (dx may be dy or x), with dy masked by relu_y > 0 and the
    masked dy written to dres when given. scratch: room for 3 * C doubles."""
    cdef Elementwise j
    cdef intp c
    for c in range(p.C):
        grad_coefficients(count, dbeta[c], dgamma[c], invstd[c], gamma, c, &scratch[c],
                          &scratch[p.C + c], &scratch[2 * p.C + c])
    j.p = p
    j.dy = dy
    j.y = dx
    j.relu_y, j.dres = relu_y, dres
    j.coef[0], j.coef[1], j.coef[2], j.coef[3] = mean, scratch, scratch + p.C, scratch + 2 * p.C
    j.stream = (streams(dx, dy, x, p.outer * p.C * p.inner * sizeof(floating))
                and <const void *>dx != <const void *>relu_y)
    return elementwise(grad_input_body[floating], x, &j, 4, 2 * p.outer * p.C * p.inner,
                       n_threads)


cdef int backward_sums_impl(const floating *dy, const floating *x, const Plan *p,
                            const double *mean, const double *invstd, double *dgamma,
                            double *dbeta, int n_threads,
                            const floating *relu_y=NULL) except -1 nogil:
    """dbeta = sum(dy) and dgamma = sum(dy * xhat) per channel (a fused plan: one chunk per
    channel, as backward_channel sums it); dy masked by relu_y > 0 when given."""
    cdef intp c
    if relu_y != NULL:
        masked_grad_sums(dy, x, relu_y, p, mean, dbeta, dgamma, n_threads)
    else:
        grad_sums(dy, x, p, mean, dbeta, dgamma, n_threads)
    for c in range(p.C):
        dgamma[c] = dgamma[c] * invstd[c]
    return 0


cdef struct FusedBackward:
    const Plan *p
    const void *dy
    void *dx
    const double *mean      # per channel inputs
    const double *invstd
    const double *gamma     # or NULL
    double *dgamma          # per channel results
    double *dbeta
    const void *relu_y      # the fused ReLU's forward output, or NULL
    void *dres              # the residual's gradient (masked dy), or NULL
    bint stream


cdef void backward_channel(const floating *x, void *job, intp c) noexcept nogil:
    """Both sums of channel c, then its dx rows, while dy and x sit in cache."""
    cdef FusedBackward *j = <FusedBackward *>job
    cdef const Plan *p = j.p
    cdef const floating *dy = <const floating *>j.dy
    cdef floating *dx = <floating *>j.dx
    cdef const floating *ry = <const floating *>j.relu_y
    cdef floating *dr = <floating *>j.dres
    cdef intp o, off
    cdef double a, b, k
    if ry != NULL:
        masked_sums_task(dy, x, ry, p, j.mean, 0, c, j.dbeta, j.dgamma)
    else:
        grad_sums_task(dy, x, p, j.mean, 0, c, j.dbeta, j.dgamma)
    j.dgamma[c] = j.dgamma[c] * j.invstd[c]
    grad_coefficients(<double>(p.outer * p.inner), j.dbeta[c], j.dgamma[c], j.invstd[c],
                      j.gamma, c, &a, &b, &k)
    for o in range(p.outer):
        off = (o * p.C + c) * p.inner
        k_run_grad_input(dy + off, x + off, dx + off, p.inner, j.mean[c], a, b, k,
                         ry + off if ry != NULL else ry, dr + off if dr != NULL else dr,
                         j.stream)


cdef int backward_impl(const floating *dy, const floating *x, floating *dx, const Plan *p,
                       const double *mean, const double *invstd, const double *gamma,
                       double *dgamma, double *dbeta, double *scratch,
                       int n_threads, const floating *relu_y=NULL,
                       floating *dres=NULL) except -1 nogil:
    """Backward (outer * inner >= 1, C >= 1); dx may be dy or x. scratch: 3 * C doubles.

    Fused plans go one channel at a time (both sums, then dx while dy and x sit in cache);
    the others are backward_sums_impl and then grad_input, as a caller with the sums of several
    processes makes them.
    """
    cdef FusedBackward j
    if p.fused:
        j.p = p
        j.dy, j.dx = dy, dx
        j.mean, j.invstd, j.gamma = mean, invstd, gamma
        j.dgamma, j.dbeta = dgamma, dbeta
        j.relu_y, j.dres = relu_y, dres
        j.stream = (streams(dx, dy, x, p.outer * p.C * p.inner * sizeof(floating))
                    and <const void *>dx != <const void *>relu_y)
        run_tasks(backward_channel[floating], x, &j, p.C,
                  n_threads_for(n_threads, 2 * p.outer * p.C * p.inner, p.C), DYNAMIC)
        return 0
    backward_sums_impl(dy, x, p, mean, invstd, dgamma, dbeta, n_threads, relu_y)
    return grad_input(dy, x, dx, p, mean, invstd, gamma, dgamma, dbeta,
                      <double>(p.outer * p.inner), scratch, n_threads, relu_y, dres)


# --- The fused ReLU's masked sums -----------------------------------------------------------
# Twins of grad_sums_task and grad_sums with the masked loops (bn_stats_impl.h
# run/tile_grad_sums_masked): the same blocks, chunks and merge order, so the masked sums are
# the plain sums of np.where(relu_y > 0, dy, 0), bit for bit. Kept apart from the plain ones,
# which stay as they are; a change of the blocking there belongs here too.

cdef struct MaskedSums:
    const Plan *p
    const void *dy
    const void *relu_y
    const double *mean
    double *st[2]
    intp per


cdef void masked_sums_task(const floating *dy, const floating *x, const floating *ry,
                           const Plan *p, const double *mean, intp k, intp t, double *st_a,
                           double *st_b) noexcept nogil:
    """grad_sums_task of g = (ry > 0 ? dy : 0)."""
    cdef intp b, b1, row0, nrows, start, length, c0, nc, j, t0, t1, tt, o
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
            o = (row0 * p.C + t) * p.inner + start
            k_run_grad_sums_masked(dy + o, x + o, ry + o, nrows, length, p.C * p.inner,
                                   mean[t], &ba, &bb)
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
            o = row0 * p.C + c0
            k_tile_grad_sums_masked(dy + o, x + o, ry + o, nrows, nc, p.C, mean + c0, ta, tb)
            for j in range(nc):
                sa[c0 + j] += ta[j]
                sb[c0 + j] += tb[j]


cdef void masked_sums_body(const floating *x, void *job, intp task) noexcept nogil:
    cdef MaskedSums *j = <MaskedSums *>job
    masked_sums_task(<const floating *>j.dy, x, <const floating *>j.relu_y, j.p, j.mean,
                     task // j.per, -1 if j.p.whole_rows else task % j.per, j.st[0], j.st[1])


cdef int masked_grad_sums(const floating *dy, const floating *x, const floating *relu_y,
                          const Plan *p, const double *mean, double *sum_dy,
                          double *sum_dy_xmu, int n_threads) except -1 nogil:
    """grad_sums of the masked dy; bit-identical for any n_threads."""
    cdef MaskedSums j
    cdef intp n_tasks, states = p.n_chunks * p.C, c, k
    j.p = p
    j.dy = dy
    j.relu_y = relu_y
    j.mean = mean
    j.per = 1 if p.whole_rows else p.n_ctasks
    n_tasks = p.n_chunks * j.per
    if p.n_chunks == 1:
        j.st[0] = sum_dy
        j.st[1] = sum_dy_xmu
    else:
        j.st[0] = <double *>malloc(2 * states * sizeof(double))
        if j.st[0] == NULL:
            with gil:
                raise MemoryError()
        j.st[1] = j.st[0] + states
    run_tasks(masked_sums_body[floating], x, &j, n_tasks,
              n_threads_for(n_threads, 3 * p.outer * p.C * p.inner, n_tasks), DYNAMIC)
    if p.n_chunks > 1:
        for c in range(p.C):
            sum_dy[c] = j.st[0][c]
            sum_dy_xmu[c] = j.st[1][c]
            for k in range(1, p.n_chunks):
                sum_dy[c] += j.st[0][k * p.C + c]
                sum_dy_xmu[c] += j.st[1][k * p.C + c]
        free(j.st[0])
    return 0
