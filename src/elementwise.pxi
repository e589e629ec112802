# Elementwise passes and the forward they make (included by _kernels.pyx): y = (x - mean) *
# scale + shift per channel, in memory order or, for small channels, fused with the
# statistics while the channel sits in cache.

# Outputs at least this large (bytes) are written with non-temporal stores, unless in place,
# which skips reading them before writing. Off by default: on the reference machine (2-core
# AMD EPYC VM, 32 MiB L3) streaming was 0-44% slower at 1 thread and 7% faster to 21% slower
# at 2 threads for 24-200 MiB outputs (python -m bnfast bench, same run). Tunable with
# set_stream_min_bytes() for machines where it pays.
cdef intp stream_min_bytes = (<intp>1) << 62


cdef inline bint streams(const void *out, const void *a, const void *b, intp nbytes) noexcept nogil:
    """Whether to write an output of nbytes with non-temporal stores (never in place)."""
    return nbytes >= stream_min_bytes and out != a and out != b


cdef struct Elementwise:
    # One elementwise pass (normalize, or the backward's grad_input).
    const Plan *p
    RowPlan r               # tiled layout: how rows of samples are walked
    const void *dy          # grad_input: the upstream gradient (x is the task's argument)
    void *y                 # the output (may be x or dy: in place)
    const double *coef[4]   # per channel: mean, scale, shift / mean, a, b, k (grad_input)
    double *rep[4]          # tiled layout: coef repeated r.span times side by side
    float *frep[6]          # float32 tiled layout: rep in float32 (bn_f32_norm_coefs /
                            # bn_f32_grad_coefs), converted once per operation
    bint f32                # frep is set: every coefficient in the float32 loops' range
    bint stream
    const void *res         # forward: residual added after the shift, or NULL
    int act                 # forward: 1 for the ReLU
    const void *relu_y      # grad_input: the forward's ReLU output (dy masked where <= 0)
    void *dres              # grad_input: where the masked dy goes (the residual's gradient)


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


cdef int elementwise(void (*task)(const floating *, void *, intp) noexcept nogil,
                     const floating *x, Elementwise *j, int n_coef, intp work,
                     int n_threads) except -1 nogil:
    """Run an elementwise task over every segment of the output, in memory order.

    Runs layout: a segment is a piece of one (sample, channel) run. Tiled layout: whole rows
    of j.r.span samples, with the n_coef coefficient vectors repeated span times to match.
    work: elements read, for the thread count.
    """
    cdef const Plan *p = j.p
    cdef intp n
    j.f32 = False
    if p.tiled:
        j.r = row_plan(p)
        replicate(j.coef, j.rep, n_coef, p.C, j.r.span)
        if floating is not double:
            f32_coefficients(j, n_coef)
    n = elementwise_tasks(p, &j.r)
    run_tasks(task, x, j, n, n_threads_for(n_threads, work, n), GUIDED)
    if p.tiled and j.r.span > 1:
        free(j.rep[0])
    if j.f32:
        free(j.frep[0])
    return 0


cdef int f32_coefficients(Elementwise *j, int n_coef) except -1 nogil:
    """The tiled layout's coefficient rows in float32, once per operation, for the float32
    row loops of every width: j.f32 is set when each is in range (bn_loops.h), else the
    float64 row loop runs. The choice depends on the shape and the coefficients only."""
    cdef intp w = j.r.width, i
    cdef int n_f = 4 if n_coef == 3 else 6
    cdef bint ok
    j.frep[0] = <float *>malloc(n_f * w * sizeof(float))
    if j.frep[0] == NULL:
        with gil:
            raise MemoryError()
    for i in range(1, n_f):
        j.frep[i] = j.frep[0] + i * w
    if n_coef == 3:
        ok = bn_f32_norm_coefs(j.rep[0], j.rep[1], j.rep[2], w, j.frep[0], j.frep[1],
                               j.frep[2], j.frep[3])
    else:
        ok = bn_f32_grad_coefs(j.rep[0], j.rep[1], j.rep[2], j.rep[3], w, j.frep[0],
                               j.frep[1], j.frep[2], j.frep[3], j.frep[4], j.frep[5])
    if not ok:
        free(j.frep[0])
    j.f32 = ok
    return 0


cdef void normalize_body(const floating *x, void *job, intp seg) noexcept nogil:
    """Segment seg of y = (x - mean) * scale + shift."""
    cdef Elementwise *j = <Elementwise *>job
    cdef const Plan *p = j.p
    cdef floating *y = <floating *>j.y
    cdef const floating *res = <const floating *>j.res
    cdef intp row, c, off, length, nrows, ncols
    if p.tiled:
        row_segment(&j.r, seg, &off, &nrows, &ncols)
        if res != NULL:
            res = res + off
        if floating is not double and j.f32:
            k_row_normalize_c(x + off, y + off, nrows, ncols, j.frep[0], j.frep[1], j.frep[2],
                              j.frep[3], res, j.act, j.stream)
        else:
            k_row_normalize(x + off, y + off, nrows, ncols, j.rep[0], j.rep[1], j.rep[2], res,
                            j.act, j.stream)
        return
    row = seg // p.pieces
    c = row % p.C
    off = (seg % p.pieces) * p.piece_len
    length = min(p.piece_len, p.inner - off)
    off += row * p.inner
    if res != NULL:
        res = res + off
    k_run_normalize(x + off, y + off, length, j.coef[0][c], j.coef[1][c], j.coef[2][c], res,
                    j.act, j.stream)


cdef int normalize(const floating *x, floating *y, const Plan *p, const double *mean,
                   const double *scale, const double *shift, const floating *res, int act,
                   int n_threads) except -1 nogil:
    """y = (x - mean) * scale + shift per channel (y may be x), then + res (NULL: none) and the
    ReLU with act (y may be res)."""
    cdef Elementwise j
    j.p = p
    j.y = y
    j.res = res
    j.act = act
    j.coef[0], j.coef[1], j.coef[2] = mean, scale, shift
    j.stream = streams(y, x, x, p.outer * p.C * p.inner * sizeof(floating))
    return elementwise(normalize_body[floating], x, &j, 3, p.outer * p.C * p.inner, n_threads)


# --- Forward --------------------------------------------------------------------------------

cdef inline void scale_shift(double invstd, const double *gamma, const double *beta, intp c,
                             double *scale, double *shift) noexcept nogil:
    """The per-channel coefficients of y = (x - mean) * scale + shift."""
    scale[0] = invstd * gamma[c] if gamma != NULL else invstd
    shift[0] = beta[c] if beta != NULL else 0.0


cdef struct FusedForward:
    const Plan *p
    void *y
    const double *gamma     # or NULL
    const double *beta      # or NULL
    double eps
    double *st_n            # the one chunk's count per channel
    double *st_lo           # and its mean's low part (moments_task)
    double *mean            # per channel results
    double *m2
    double *invstd
    const void *res         # or NULL
    int act
    bint stream


cdef void forward_channel(const floating *x, void *job, intp c) noexcept nogil:
    """Statistics of channel c, then its normalized rows, while they sit in cache."""
    cdef FusedForward *j = <FusedForward *>job
    cdef const Plan *p = j.p
    cdef floating *y = <floating *>j.y
    cdef const floating *res = <const floating *>j.res
    cdef intp o, off
    cdef double scale, shift
    moments_task(x, p, 0, c, j.st_n, j.mean, j.m2, j.st_lo)
    j.mean[c] = j.mean[c] + j.st_lo[c]
    j.invstd[c] = 1.0 / sqrt(j.m2[c] / <double>(p.outer * p.inner) + j.eps)
    scale_shift(j.invstd[c], j.gamma, j.beta, c, &scale, &shift)
    for o in range(p.outer):
        off = (o * p.C + c) * p.inner
        k_run_normalize(x + off, y + off, p.inner, j.mean[c], scale, shift,
                        res + off if res != NULL else res, j.act, j.stream)


cdef int train_impl(const floating *x, floating *y, const Plan *p, const double *gamma,
                    const double *beta, double eps, double *mean, double *m2, double *invstd,
                    double *scratch, const floating *res, int act,
                    int n_threads) except -1 nogil:
    """Training forward (outer * inner >= 2, C >= 1): batch mean, m2 and invstd, and y.

    Fused plans go one channel at a time (statistics, then y from cache); the others make
    two sweeps (all statistics, then all of y). scratch: room for 2 * C doubles.
    """
    cdef FusedForward j
    cdef intp c
    cdef double m = <double>(p.outer * p.inner)
    if p.fused:
        j.p = p
        j.y = y
        j.gamma, j.beta, j.eps = gamma, beta, eps
        j.st_n, j.mean, j.m2, j.invstd = scratch, mean, m2, invstd
        j.st_lo = scratch + p.C
        j.res, j.act = res, act
        j.stream = streams(y, x, x, p.outer * p.C * p.inner * sizeof(floating))
        run_tasks(forward_channel[floating], x, &j, p.C,
                  n_threads_for(n_threads, p.outer * p.C * p.inner, p.C), DYNAMIC)
        return 0
    channel_moments(x, p, mean, m2, n_threads)
    for c in range(p.C):
        invstd[c] = 1.0 / sqrt(m2[c] / m + eps)
        scale_shift(invstd[c], gamma, beta, c, &scratch[c], &scratch[p.C + c])
    return normalize(x, y, p, mean, scratch, scratch + p.C, res, act, n_threads)


cdef int infer_impl(const floating *x, floating *y, const Plan *p, const double *rm,
                    const double *rv, const double *gamma, const double *beta, double eps,
                    double *scratch, const floating *res, int act,
                    int n_threads) except -1 nogil:
    """Inference forward (outer * inner >= 1, C >= 1), then + res and the ReLU with act.
    scratch: room for 2 * C doubles."""
    cdef intp c
    for c in range(p.C):
        scale_shift(1.0 / sqrt(rv[c] + eps), gamma, beta, c, &scratch[c], &scratch[p.C + c])
    return normalize(x, y, p, rm, scratch, scratch + p.C, res, act, n_threads)


cdef void update_running_impl(real *running, const double *batch, intp C,
                              double momentum, double factor) noexcept nogil:
    """running = (1 - momentum) * running + momentum * (factor * batch), in float64 and then
    stored in running's dtype: the one place this rule's arithmetic is written."""
    cdef intp c
    for c in range(C):
        running[c] = <real>((1.0 - momentum) * running[c] + momentum * (factor * batch[c]))
