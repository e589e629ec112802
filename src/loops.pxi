# The C side (included by _kernels.pyx): thread queries, the pool, and the innermost loops of
# bn_loops.h, one function per element type (_f32, _f64, _f16, _bf16). The k_* wrappers at
# the end pick one by the fused type `floating`, resolved at compile time in each
# specialization, so the .pxi files call one name for every type.

cdef extern from "bn_openmp.h":
    int bn_openmp_enabled() noexcept nogil
    int bn_max_threads() noexcept nogil
    int bn_num_procs() noexcept nogil
    int bn_default_threads() noexcept nogil
    void bn_set_cpus(int procs, int share, int explicit_count) noexcept nogil
    const char *bn_compile_flags() noexcept nogil

cdef extern from "bn_pool.h" nogil:
    ctypedef void (*bn_task_fn)(void *ctx, intp i) noexcept nogil
    ctypedef void (*bn_any_fn)() noexcept nogil
    ctypedef struct bn_task_call:
        bn_any_fn task
        const void *x
        void *job
    void bn_pool_run(bn_task_fn fn, void *ctx, intp n_tasks, int nt, intp per)
    int bn_pool_enabled()
    int bn_pool_helpers()
    long long bn_pool_backoffs()
    long long bn_pool_helped()
    void bn_call_f32(void *ctx, intp i)
    void bn_call_f64(void *ctx, intp i)
    void bn_call_f16(void *ctx, intp i)
    void bn_call_bf16(void *ctx, intp i)

cdef extern from "bn_loops.h" nogil:
    const char *bn_simd_clone()
    void run_moments_f32(const float *x, intp nrows, intp len, intp stride, double shift,
                         double *mean, double *dmean, double *m2)
    void run_moments_f64(const double *x, intp nrows, intp len, intp stride, double shift,
                         double *mean, double *dmean, double *m2)
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
    # The fused variants (activation, residual; bn_elementwise_impl.h "Fused variants"): res / relu_y
    # / dres NULL and act 0 give the plain passes' bits.
    void run_normalize_fused_f32(const float *x, float *y, intp len, double mean, double scale,
                                 double shift, const float *res, int act, int stream)
    void run_normalize_fused_f64(const double *x, double *y, intp len, double mean,
                                 double scale, double shift, const double *res, int act,
                                 int stream)
    void row_normalize_fused_f32(const float *x, float *y, intp nrows, intp ncols,
                                 const double *mean, const double *scale, const double *shift,
                                 const float *res, int act, int stream)
    void row_normalize_fused_f64(const double *x, double *y, intp nrows, intp ncols,
                                 const double *mean, const double *scale, const double *shift,
                                 const double *res, int act, int stream)
    void run_grad_input_fused_f32(const float *dy, const float *x, float *dx, intp len,
                                  double mean, double a, double b, double k,
                                  const float *relu_y, float *dres, int stream)
    void run_grad_input_fused_f64(const double *dy, const double *x, double *dx, intp len,
                                  double mean, double a, double b, double k,
                                  const double *relu_y, double *dres, int stream)
    void row_grad_input_fused_f32(const float *dy, const float *x, float *dx, intp nrows,
                                  intp ncols, const double *mean, const double *a,
                                  const double *b, const double *k, const float *relu_y,
                                  float *dres, int stream)
    void row_grad_input_fused_f64(const double *dy, const double *x, double *dx, intp nrows,
                                  intp ncols, const double *mean, const double *a,
                                  const double *b, const double *k, const double *relu_y,
                                  double *dres, int stream)
    void run_grad_sums_masked_f32(const float *dy, const float *x, const float *relu_y,
                                  intp nrows, intp len, intp stride, double mean,
                                  double *sum_dy, double *sum_dy_xmu)
    void run_grad_sums_masked_f64(const double *dy, const double *x, const double *relu_y,
                                  intp nrows, intp len, intp stride, double mean,
                                  double *sum_dy, double *sum_dy_xmu)
    void tile_grad_sums_masked_f32(const float *dy, const float *x, const float *relu_y,
                                   intp nrows, intp ncols, intp stride, const double *mean,
                                   double *sum_dy, double *sum_dy_xmu)
    void tile_grad_sums_masked_f64(const double *dy, const double *x, const double *relu_y,
                                   intp nrows, intp ncols, intp stride, const double *mean,
                                   double *sum_dy, double *sum_dy_xmu)
    int bn_f32_norm_coefs(const double *mean, const double *scale, const double *shift,
                          intp n, float *mh, float *ml, float *s, float *b)
    int bn_f32_grad_coefs(const double *mean, const double *a, const double *b,
                          const double *k, intp n, float *ah, float *al, float *kf,
                          float *mh, float *ml, float *w)
    void run_moments_f16(const bn_f16 *x, intp nrows, intp len, intp stride, double shift,
                         double *mean, double *dmean, double *m2)
    void run_moments_bf16(const bn_bf16 *x, intp nrows, intp len, intp stride, double shift,
                         double *mean, double *dmean, double *m2)
    void tile_moments_f16(const bn_f16 *x, intp nrows, intp ncols, intp stride, double *shift,
                          double *mean, double *m2, double *q)
    void tile_moments_bf16(const bn_bf16 *x, intp nrows, intp ncols, intp stride, double *shift,
                          double *mean, double *m2, double *q)
    void run_grad_sums_f16(const bn_f16 *dy, const bn_f16 *x, intp nrows, intp len, intp stride,
                           double mean, double *sum_dy, double *sum_dy_xmu)
    void run_grad_sums_bf16(const bn_bf16 *dy, const bn_bf16 *x, intp nrows, intp len, intp stride,
                           double mean, double *sum_dy, double *sum_dy_xmu)
    void tile_grad_sums_f16(const bn_f16 *dy, const bn_f16 *x, intp nrows, intp ncols,
                            intp stride, const double *mean, double *sum_dy,
                            double *sum_dy_xmu)
    void tile_grad_sums_bf16(const bn_bf16 *dy, const bn_bf16 *x, intp nrows, intp ncols,
                            intp stride, const double *mean, double *sum_dy,
                            double *sum_dy_xmu)
    void run_normalize_fused_f16(const bn_f16 *x, bn_f16 *y, intp len, double mean, double scale,
                                 double shift, const bn_f16 *res, int act, int stream)
    void run_normalize_fused_bf16(const bn_bf16 *x, bn_bf16 *y, intp len, double mean, double scale,
                                 double shift, const bn_bf16 *res, int act, int stream)
    void row_normalize_fused_f16(const bn_f16 *x, bn_f16 *y, intp nrows, intp ncols,
                                 const double *mean, const double *scale, const double *shift,
                                 const bn_f16 *res, int act, int stream)
    void row_normalize_fused_bf16(const bn_bf16 *x, bn_bf16 *y, intp nrows, intp ncols,
                                 const double *mean, const double *scale, const double *shift,
                                 const bn_bf16 *res, int act, int stream)
    void run_grad_input_fused_f16(const bn_f16 *dy, const bn_f16 *x, bn_f16 *dx, intp len,
                                  double mean, double a, double b, double k,
                                  const bn_f16 *relu_y, bn_f16 *dres, int stream)
    void run_grad_input_fused_bf16(const bn_bf16 *dy, const bn_bf16 *x, bn_bf16 *dx, intp len,
                                  double mean, double a, double b, double k,
                                  const bn_bf16 *relu_y, bn_bf16 *dres, int stream)
    void row_grad_input_fused_f16(const bn_f16 *dy, const bn_f16 *x, bn_f16 *dx, intp nrows,
                                  intp ncols, const double *mean, const double *a,
                                  const double *b, const double *k, const bn_f16 *relu_y,
                                  bn_f16 *dres, int stream)
    void row_grad_input_fused_bf16(const bn_bf16 *dy, const bn_bf16 *x, bn_bf16 *dx, intp nrows,
                                  intp ncols, const double *mean, const double *a,
                                  const double *b, const double *k, const bn_bf16 *relu_y,
                                  bn_bf16 *dres, int stream)
    void run_grad_sums_masked_f16(const bn_f16 *dy, const bn_f16 *x, const bn_f16 *relu_y,
                                  intp nrows, intp len, intp stride, double mean,
                                  double *sum_dy, double *sum_dy_xmu)
    void run_grad_sums_masked_bf16(const bn_bf16 *dy, const bn_bf16 *x, const bn_bf16 *relu_y,
                                  intp nrows, intp len, intp stride, double mean,
                                  double *sum_dy, double *sum_dy_xmu)
    void tile_grad_sums_masked_f16(const bn_f16 *dy, const bn_f16 *x, const bn_f16 *relu_y,
                                   intp nrows, intp ncols, intp stride, const double *mean,
                                   double *sum_dy, double *sum_dy_xmu)
    void tile_grad_sums_masked_bf16(const bn_bf16 *dy, const bn_bf16 *x, const bn_bf16 *relu_y,
                                   intp nrows, intp ncols, intp stride, const double *mean,
                                   double *sum_dy, double *sum_dy_xmu)
    void row_normalize_c_f32(const float *x, float *y, intp nrows, intp ncols, const float *mh,
                            const float *ml, const float *s, const float *b, const float *res,
                            int act, int stream)
    void row_normalize_c_f16(const bn_f16 *x, bn_f16 *y, intp nrows, intp ncols, const float *mh,
                            const float *ml, const float *s, const float *b, const bn_f16 *res,
                            int act, int stream)
    void row_normalize_c_bf16(const bn_bf16 *x, bn_bf16 *y, intp nrows, intp ncols, const float *mh,
                            const float *ml, const float *s, const float *b, const bn_bf16 *res,
                            int act, int stream)
    void row_grad_input_c_f32(const float *dy, const float *x, float *dx, intp nrows,
                             intp ncols, const float *ah, const float *al, const float *kf,
                             const float *mh, const float *ml, const float *w,
                             const float *relu_y, float *dres, int stream)
    void row_grad_input_c_f16(const bn_f16 *dy, const bn_f16 *x, bn_f16 *dx, intp nrows,
                             intp ncols, const float *ah, const float *al, const float *kf,
                             const float *mh, const float *ml, const float *w,
                             const bn_f16 *relu_y, bn_f16 *dres, int stream)
    void row_grad_input_c_bf16(const bn_bf16 *dy, const bn_bf16 *x, bn_bf16 *dx, intp nrows,
                             intp ncols, const float *ah, const float *al, const float *kf,
                             const float *mh, const float *ml, const float *w,
                             const bn_bf16 *relu_y, bn_bf16 *dres, int stream)

cdef extern from "bn_half.h" nogil:
    float bn_f16_to_f32_bits(unsigned short h)
    float bn_bf16_to_f32_bits(unsigned short b)

cdef extern from "bn_half_inst.h" nogil:
    const char *bn_half_loops()
    int bn_half_choose(int decide)


# --- One name per loop for every element type ------------------------------------------------

cdef inline double to_double(floating v) noexcept nogil:
    """An element as a double (exactly)."""
    if floating is float or floating is double:
        return v
    elif floating is bn_f16:
        return bn_f16_to_f32_bits(v.bits)
    else:
        return bn_bf16_to_f32_bits(v.bits)


cdef inline void k_run_moments(const floating *x, intp nrows, intp len, intp stride,
                               double shift, double *mean, double *dmean,
                               double *m2) noexcept nogil:
    if floating is float:
        run_moments_f32(x, nrows, len, stride, shift, mean, dmean, m2)
    elif floating is double:
        run_moments_f64(x, nrows, len, stride, shift, mean, dmean, m2)
    elif floating is bn_f16:
        run_moments_f16(x, nrows, len, stride, shift, mean, dmean, m2)
    else:
        run_moments_bf16(x, nrows, len, stride, shift, mean, dmean, m2)


cdef inline void k_tile_moments(const floating *x, intp nrows, intp ncols, intp stride,
                                double *shift, double *mean, double *m2,
                                double *q) noexcept nogil:
    if floating is float:
        tile_moments_f32(x, nrows, ncols, stride, shift, mean, m2, q)
    elif floating is double:
        tile_moments_f64(x, nrows, ncols, stride, shift, mean, m2, q)
    elif floating is bn_f16:
        tile_moments_f16(x, nrows, ncols, stride, shift, mean, m2, q)
    else:
        tile_moments_bf16(x, nrows, ncols, stride, shift, mean, m2, q)


cdef inline void k_run_grad_sums(const floating *dy, const floating *x, intp nrows, intp len,
                                 intp stride, double mean, double *sum_dy,
                                 double *sum_dy_xmu) noexcept nogil:
    if floating is float:
        run_grad_sums_f32(dy, x, nrows, len, stride, mean, sum_dy, sum_dy_xmu)
    elif floating is double:
        run_grad_sums_f64(dy, x, nrows, len, stride, mean, sum_dy, sum_dy_xmu)
    elif floating is bn_f16:
        run_grad_sums_f16(dy, x, nrows, len, stride, mean, sum_dy, sum_dy_xmu)
    else:
        run_grad_sums_bf16(dy, x, nrows, len, stride, mean, sum_dy, sum_dy_xmu)


cdef inline void k_tile_grad_sums(const floating *dy, const floating *x, intp nrows, intp ncols,
                                  intp stride, const double *mean, double *sum_dy,
                                  double *sum_dy_xmu) noexcept nogil:
    if floating is float:
        tile_grad_sums_f32(dy, x, nrows, ncols, stride, mean, sum_dy, sum_dy_xmu)
    elif floating is double:
        tile_grad_sums_f64(dy, x, nrows, ncols, stride, mean, sum_dy, sum_dy_xmu)
    elif floating is bn_f16:
        tile_grad_sums_f16(dy, x, nrows, ncols, stride, mean, sum_dy, sum_dy_xmu)
    else:
        tile_grad_sums_bf16(dy, x, nrows, ncols, stride, mean, sum_dy, sum_dy_xmu)


cdef inline void k_run_grad_sums_masked(const floating *dy, const floating *x,
                                        const floating *ry, intp nrows, intp len, intp stride,
                                        double mean, double *sum_dy,
                                        double *sum_dy_xmu) noexcept nogil:
    if floating is float:
        run_grad_sums_masked_f32(dy, x, ry, nrows, len, stride, mean, sum_dy, sum_dy_xmu)
    elif floating is double:
        run_grad_sums_masked_f64(dy, x, ry, nrows, len, stride, mean, sum_dy, sum_dy_xmu)
    elif floating is bn_f16:
        run_grad_sums_masked_f16(dy, x, ry, nrows, len, stride, mean, sum_dy, sum_dy_xmu)
    else:
        run_grad_sums_masked_bf16(dy, x, ry, nrows, len, stride, mean, sum_dy, sum_dy_xmu)


cdef inline void k_tile_grad_sums_masked(const floating *dy, const floating *x,
                                         const floating *ry, intp nrows, intp ncols,
                                         intp stride, const double *mean, double *sum_dy,
                                         double *sum_dy_xmu) noexcept nogil:
    if floating is float:
        tile_grad_sums_masked_f32(dy, x, ry, nrows, ncols, stride, mean, sum_dy, sum_dy_xmu)
    elif floating is double:
        tile_grad_sums_masked_f64(dy, x, ry, nrows, ncols, stride, mean, sum_dy, sum_dy_xmu)
    elif floating is bn_f16:
        tile_grad_sums_masked_f16(dy, x, ry, nrows, ncols, stride, mean, sum_dy, sum_dy_xmu)
    else:
        tile_grad_sums_masked_bf16(dy, x, ry, nrows, ncols, stride, mean, sum_dy, sum_dy_xmu)


cdef inline void k_run_normalize(const floating *x, floating *y, intp len, double mean,
                                 double scale, double shift, const floating *res, int act,
                                 int stream) noexcept nogil:
    if floating is float:
        run_normalize_fused_f32(x, y, len, mean, scale, shift, res, act, stream)
    elif floating is double:
        run_normalize_fused_f64(x, y, len, mean, scale, shift, res, act, stream)
    elif floating is bn_f16:
        run_normalize_fused_f16(x, y, len, mean, scale, shift, res, act, stream)
    else:
        run_normalize_fused_bf16(x, y, len, mean, scale, shift, res, act, stream)


cdef inline void k_row_normalize(const floating *x, floating *y, intp nrows, intp ncols,
                                 const double *mean, const double *scale, const double *shift,
                                 const floating *res, int act, int stream) noexcept nogil:
    if floating is float:
        row_normalize_fused_f32(x, y, nrows, ncols, mean, scale, shift, res, act, stream)
    elif floating is double:
        row_normalize_fused_f64(x, y, nrows, ncols, mean, scale, shift, res, act, stream)
    elif floating is bn_f16:
        row_normalize_fused_f16(x, y, nrows, ncols, mean, scale, shift, res, act, stream)
    else:
        row_normalize_fused_bf16(x, y, nrows, ncols, mean, scale, shift, res, act, stream)


cdef inline void k_row_normalize_c(const floating *x, floating *y, intp nrows, intp ncols,
                                   const float *mh, const float *ml, const float *s,
                                   const float *b, const floating *res, int act,
                                   int stream) noexcept nogil:
    """The float32-coefficient row loop (not for double data, which never takes it)."""
    if floating is float:
        row_normalize_c_f32(x, y, nrows, ncols, mh, ml, s, b, res, act, stream)
    elif floating is bn_f16:
        row_normalize_c_f16(x, y, nrows, ncols, mh, ml, s, b, res, act, stream)
    elif floating is bn_bf16:
        row_normalize_c_bf16(x, y, nrows, ncols, mh, ml, s, b, res, act, stream)


cdef inline void k_run_grad_input(const floating *dy, const floating *x, floating *dx,
                                  intp len, double mean, double a, double b, double k,
                                  const floating *ry, floating *dr, int stream) noexcept nogil:
    if floating is float:
        run_grad_input_fused_f32(dy, x, dx, len, mean, a, b, k, ry, dr, stream)
    elif floating is double:
        run_grad_input_fused_f64(dy, x, dx, len, mean, a, b, k, ry, dr, stream)
    elif floating is bn_f16:
        run_grad_input_fused_f16(dy, x, dx, len, mean, a, b, k, ry, dr, stream)
    else:
        run_grad_input_fused_bf16(dy, x, dx, len, mean, a, b, k, ry, dr, stream)


cdef inline void k_row_grad_input(const floating *dy, const floating *x, floating *dx,
                                  intp nrows, intp ncols, const double *mean, const double *a,
                                  const double *b, const double *k, const floating *ry,
                                  floating *dr, int stream) noexcept nogil:
    if floating is float:
        row_grad_input_fused_f32(dy, x, dx, nrows, ncols, mean, a, b, k, ry, dr, stream)
    elif floating is double:
        row_grad_input_fused_f64(dy, x, dx, nrows, ncols, mean, a, b, k, ry, dr, stream)
    elif floating is bn_f16:
        row_grad_input_fused_f16(dy, x, dx, nrows, ncols, mean, a, b, k, ry, dr, stream)
    else:
        row_grad_input_fused_bf16(dy, x, dx, nrows, ncols, mean, a, b, k, ry, dr, stream)


cdef inline void k_row_grad_input_c(const floating *dy, const floating *x, floating *dx,
                                    intp nrows, intp ncols, const float *ah, const float *al,
                                    const float *kf, const float *mh, const float *ml,
                                    const float *w, const floating *ry, floating *dr,
                                    int stream) noexcept nogil:
    """The float32-coefficient row loop (not for double data, which never takes it)."""
    if floating is float:
        row_grad_input_c_f32(dy, x, dx, nrows, ncols, ah, al, kf, mh, ml, w, ry, dr, stream)
    elif floating is bn_f16:
        row_grad_input_c_f16(dy, x, dx, nrows, ncols, ah, al, kf, mh, ml, w, ry, dr, stream)
    elif floating is bn_bf16:
        row_grad_input_c_bf16(dy, x, dx, nrows, ncols, ah, al, kf, mh, ml, w, ry, dr, stream)
