# The C side (included by _kernels.pyx): OpenMP queries and the innermost loops of
# bn_loops.h, one function per dtype (_f32, _f64). The .pxi files pick between the two with
# `if floating is float`, resolved at compile time in each fused specialization.

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
