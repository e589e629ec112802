/* The half-type loops _kernels.pyx calls, as BN_EXPORT(name, (parameters), (arguments)) with
 * T the element type: bn_half_inst.h includes this list once per type to make each name pick
 * its x86-64-v3 or baseline loop.  (No include guard: included twice.) */
BN_EXPORT(run_moments, (const T *x, npy_intp nrows, npy_intp len, npy_intp stride, double shift,
                        double *mean, double *dmean, double *m2),
          (x, nrows, len, stride, shift, mean, dmean, m2))
BN_EXPORT(tile_moments, (const T *x, npy_intp nrows, npy_intp ncols, npy_intp stride,
                         double *shift, double *mean, double *m2, double *q),
          (x, nrows, ncols, stride, shift, mean, m2, q))
BN_EXPORT(run_grad_sums, (const T *dy, const T *x, npy_intp nrows, npy_intp len, npy_intp stride,
                          double mean, double *sum_dy, double *sum_dy_xmu),
          (dy, x, nrows, len, stride, mean, sum_dy, sum_dy_xmu))
BN_EXPORT(tile_grad_sums, (const T *dy, const T *x, npy_intp nrows, npy_intp ncols,
                           npy_intp stride, const double *mean, double *sum_dy,
                           double *sum_dy_xmu),
          (dy, x, nrows, ncols, stride, mean, sum_dy, sum_dy_xmu))
BN_EXPORT(run_grad_sums_masked, (const T *dy, const T *x, const T *relu_y, npy_intp nrows,
                                 npy_intp len, npy_intp stride, double mean, double *sum_dy,
                                 double *sum_dy_xmu),
          (dy, x, relu_y, nrows, len, stride, mean, sum_dy, sum_dy_xmu))
BN_EXPORT(tile_grad_sums_masked, (const T *dy, const T *x, const T *relu_y, npy_intp nrows,
                                  npy_intp ncols, npy_intp stride, const double *mean,
                                  double *sum_dy, double *sum_dy_xmu),
          (dy, x, relu_y, nrows, ncols, stride, mean, sum_dy, sum_dy_xmu))
BN_EXPORT(run_normalize_fused, (const T *x, T *y, npy_intp len, double mean, double scale,
                                double shift, const T *res, int act, int stream),
          (x, y, len, mean, scale, shift, res, act, stream))
BN_EXPORT(row_normalize_fused, (const T *x, T *y, npy_intp nrows, npy_intp ncols,
                                const double *mean, const double *scale, const double *shift,
                                const T *res, int act, int stream),
          (x, y, nrows, ncols, mean, scale, shift, res, act, stream))
BN_EXPORT(run_grad_input_fused, (const T *dy, const T *x, T *dx, npy_intp len, double mean,
                                 double a, double b, double k, const T *relu_y, T *dres,
                                 int stream),
          (dy, x, dx, len, mean, a, b, k, relu_y, dres, stream))
BN_EXPORT(row_grad_input_fused, (const T *dy, const T *x, T *dx, npy_intp nrows, npy_intp ncols,
                                 const double *mean, const double *a, const double *b,
                                 const double *k, const T *relu_y, T *dres, int stream),
          (dy, x, dx, nrows, ncols, mean, a, b, k, relu_y, dres, stream))
BN_EXPORT(row_normalize_c, (const T *x, T *y, npy_intp nrows, npy_intp ncols, const float *mh,
                            const float *ml, const float *s, const float *b, const T *res,
                            int act, int stream),
          (x, y, nrows, ncols, mh, ml, s, b, res, act, stream))
BN_EXPORT(row_grad_input_c, (const T *dy, const T *x, T *dx, npy_intp nrows, npy_intp ncols,
                             const float *ah, const float *al, const float *kf,
                             const float *mh, const float *ml, const float *w,
                             const T *relu_y, T *dres, int stream),
          (dy, x, dx, nrows, ncols, ah, al, kf, mh, ml, w, relu_y, dres, stream))
