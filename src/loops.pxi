# The C side (included by _kernels.pyx): OpenMP queries and the innermost loops of
# bn_loops.h, one function per dtype (_f32, _f64). The .pxi files pick between the two with
# `if floating is float`, resolved at compile time in each fused specialization.

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
    void bn_call_f32(void *ctx, intp i)
    void bn_call_f64(void *ctx, intp i)

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
    void row_normalize_f32c(const float *x, float *y, intp nrows, intp ncols, const float *mh,
                            const float *ml, const float *s, const float *b, const float *res,
                            int act, int stream)
    void row_grad_input_f32c(const float *dy, const float *x, float *dx, intp nrows,
                             intp ncols, const float *ah, const float *al, const float *kf,
                             const float *mh, const float *ml, const float *w,
                             const float *relu_y, float *dres, int stream)
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
