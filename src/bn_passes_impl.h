/* The passes _kernels.pyx calls, of bn_loops.h, a template body included right after
 * bn_elementwise_impl.h for each element type: the plain passes, the fused variants
 * (activation, residual) and the tile-row passes with float32 coefficients, each a
 * dispatch to the inline bodies of bn_elementwise_impl.h. */

/* The plain passes, called by _kernels.pyx. */
BN_TARGET static void BN_FN(run_normalize)(const BN_T *x, BN_T *y, npy_intp len, double mean,
                                           double scale, double shift, int stream)
{
    BN_FN(run_normalize_ep)(x, y, len, mean, scale, shift, NULL, 0, stream);
}

BN_TARGET static void BN_FN(row_normalize)(const BN_T *x, BN_T *y, npy_intp nrows,
                                           npy_intp ncols, const double *mean,
                                           const double *scale, const double *shift,
                                           int stream)
{
    BN_FN(row_normalize_ep)(x, y, nrows, ncols, mean, scale, shift, NULL, 0, stream);
}

BN_TARGET static void BN_FN(run_grad_input)(const BN_T *dy, const BN_T *x, BN_T *dx,
                                            npy_intp len, double mean, double a, double b,
                                            double k, int stream)
{
    BN_FN(run_grad_input_ep)(dy, x, dx, len, mean, a, b, k, NULL, NULL, stream);
}

BN_TARGET static void BN_FN(row_grad_input)(const BN_T *dy, const BN_T *x, BN_T *dx,
                                            npy_intp nrows, npy_intp ncols, const double *mean,
                                            const double *a, const double *b, const double *k,
                                            int stream)
{
    BN_FN(row_grad_input_ep)(dy, x, dx, nrows, ncols, mean, a, b, k, NULL, NULL, stream);
}

/* ---- Fused variants (activation, residual; docs/design.md §1) -------------------------------
 * Each dispatches once on (res, act) / (relu_y, dres) to an instance of the inline body with
 * those as constants: the plain combination is the plain pass, bit for bit. */
#define BN_FWD_DISPATCH(call_res_act)                                                        \
    do {                                                                                     \
        if (res && act) {                                                                    \
            call_res_act(res, 1);                                                            \
        } else if (res) {                                                                    \
            call_res_act(res, 0);                                                            \
        } else if (act) {                                                                    \
            call_res_act((const BN_T *)NULL, 1);                                             \
        } else {                                                                             \
            call_res_act((const BN_T *)NULL, 0);                                             \
        }                                                                                    \
    } while (0)

#define BN_BWD_DISPATCH(call_ry_dr)                                                          \
    do {                                                                                     \
        if (relu_y && dres) {                                                                \
            call_ry_dr(relu_y, dres);                                                        \
        } else if (relu_y) {                                                                 \
            call_ry_dr(relu_y, (BN_T *)NULL);                                                \
        } else if (dres) {                                                                   \
            call_ry_dr((const BN_T *)NULL, dres);                                            \
        } else {                                                                             \
            call_ry_dr((const BN_T *)NULL, (BN_T *)NULL);                                    \
        }                                                                                    \
    } while (0)

BN_TARGET static void BN_FN(run_normalize_fused)(const BN_T *x, BN_T *y, npy_intp len,
                                                 double mean, double scale, double shift,
                                                 const BN_T *res, int act, int stream)
{
#define BN_CALL(R, A) BN_FN(run_normalize_ep)(x, y, len, mean, scale, shift, R, A, stream)
    BN_FWD_DISPATCH(BN_CALL);
#undef BN_CALL
}

BN_TARGET static void BN_FN(row_normalize_fused)(const BN_T *x, BN_T *y, npy_intp nrows,
                                                 npy_intp ncols, const double *mean,
                                                 const double *scale, const double *shift,
                                                 const BN_T *res, int act, int stream)
{
#define BN_CALL(R, A) \
    BN_FN(row_normalize_ep)(x, y, nrows, ncols, mean, scale, shift, R, A, stream)
    BN_FWD_DISPATCH(BN_CALL);
#undef BN_CALL
}

BN_TARGET static void BN_FN(run_grad_input_fused)(const BN_T *dy, const BN_T *x, BN_T *dx,
                                                  npy_intp len, double mean, double a,
                                                  double b, double k, const BN_T *relu_y,
                                                  BN_T *dres, int stream)
{
#define BN_CALL(R, D) BN_FN(run_grad_input_ep)(dy, x, dx, len, mean, a, b, k, R, D, stream)
    BN_BWD_DISPATCH(BN_CALL);
#undef BN_CALL
}

BN_TARGET static void BN_FN(row_grad_input_fused)(const BN_T *dy, const BN_T *x, BN_T *dx,
                                                  npy_intp nrows, npy_intp ncols,
                                                  const double *mean, const double *a,
                                                  const double *b, const double *k,
                                                  const BN_T *relu_y, BN_T *dres, int stream)
{
#define BN_CALL(R, D) \
    BN_FN(row_grad_input_ep)(dy, x, dx, nrows, ncols, mean, a, b, k, R, D, stream)
    BN_BWD_DISPATCH(BN_CALL);
#undef BN_CALL
}

#if BN_LOWP
/* Tile rows of any width with coefficients already in float32 (bn_f32_norm_coefs /
 * bn_f32_grad_coefs, called once per operation by the Cython layer, which runs the float64
 * row loop instead when they report a coefficient out of range). */
BN_INLINE void BN_FN(row_normalize_c_ep)(const BN_T *x, BN_T *y, npy_intp nrows,
                                        npy_intp ncols, const float *mh, const float *ml,
                                        const float *s, const float *b, const BN_T *res,
                                        int act, int stream)
{
    BN_T buf[BN_STREAM_BUF];
    for (npy_intp r = 0; r < nrows; r++) {
        const npy_intp o = r * ncols;
        if (!stream) {
            BN_FN(normalize_row_span_lp)(x + o, y + o, ncols, mh, ml, s, b, res ? res + o : NULL,
                                      act);
            continue;
        }
        for (npy_intp i = 0; i < ncols; i += BN_STREAM_BUF) {
            const npy_intp n = ncols - i < BN_STREAM_BUF ? ncols - i : BN_STREAM_BUF;
            BN_FN(normalize_row_span_lp)(x + o + i, buf, n, mh + i, ml + i, s + i, b + i,
                                      res ? res + o + i : NULL, act);
            BN_FN(bn_stream_store)(y + o + i, buf, n);
        }
    }
    if (stream)
        bn_stream_fence();
}

BN_TARGET static void BN_FN(row_normalize_c)(const BN_T *x, BN_T *y, npy_intp nrows,
                                         npy_intp ncols, const float *mh, const float *ml,
                                         const float *s, const float *b, const BN_T *res,
                                         int act, int stream)
{
#define BN_CALL(R, A) BN_FN(row_normalize_c_ep)(x, y, nrows, ncols, mh, ml, s, b, R, A, stream)
    BN_FWD_DISPATCH(BN_CALL);
#undef BN_CALL
}

BN_INLINE void BN_FN(row_grad_input_c_ep)(const BN_T *dy, const BN_T *x, BN_T *dx,
                                         npy_intp nrows, npy_intp ncols, const float *ah,
                                         const float *al, const float *kf, const float *mh,
                                         const float *ml, const float *w, const BN_T *relu_y,
                                         BN_T *dres, int stream)
{
    BN_T buf[BN_STREAM_BUF];
    for (npy_intp r = 0; r < nrows; r++) {
        const npy_intp o = r * ncols;
        if (!stream) {
            BN_FN(grad_input_row_span_lp)(dy + o, x + o, dx + o, ncols, ah, al, kf, mh, ml, w,
                                       relu_y ? relu_y + o : NULL, dres ? dres + o : NULL);
            continue;
        }
        for (npy_intp i = 0; i < ncols; i += BN_STREAM_BUF) {
            const npy_intp n = ncols - i < BN_STREAM_BUF ? ncols - i : BN_STREAM_BUF;
            BN_FN(grad_input_row_span_lp)(dy + o + i, x + o + i, buf, n, ah + i, al + i, kf + i,
                                       mh + i, ml + i, w + i,
                                       relu_y ? relu_y + o + i : NULL,
                                       dres ? dres + o + i : NULL);
            BN_FN(bn_stream_store)(dx + o + i, buf, n);
        }
    }
    if (stream)
        bn_stream_fence();
}

BN_TARGET static void BN_FN(row_grad_input_c)(const BN_T *dy, const BN_T *x, BN_T *dx,
                                          npy_intp nrows, npy_intp ncols, const float *ah,
                                          const float *al, const float *kf, const float *mh,
                                          const float *ml, const float *w,
                                          const BN_T *relu_y, BN_T *dres, int stream)
{
#define BN_CALL(R, D) \
    BN_FN(row_grad_input_c_ep)(dy, x, dx, nrows, ncols, ah, al, kf, mh, ml, w, R, D, stream)
    BN_BWD_DISPATCH(BN_CALL);
#undef BN_CALL
}
#endif

#undef BN_FWD_DISPATCH
#undef BN_BWD_DISPATCH
