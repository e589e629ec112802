/* Template body of bn_loops.h: included once with BN_T = float, once with BN_T = double.
 *
 * Vocabulary: a "run" is `len` contiguous elements of one channel (the inner > 1 layout);
 * a block of runs is `nrows` such runs, `stride` elements apart.  A "tile row" is `ncols`
 * contiguous channels of one sample (the inner == 1 layout); a block of tile rows is `nrows`
 * of them, `stride` elements apart.
 *
 * Elementwise loops may run in place (y == x exactly); the Python layer never passes
 * partially overlapping buffers, so they carry no dependence between iterations.
 */

#if defined(__clang__)
#define BN_IVDEP _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define BN_IVDEP _Pragma("GCC ivdep")
#else
#define BN_IVDEP
#endif

/* Sum of a block of runs, in 8 float64 lanes added up in a fixed order. */
BN_TARGET static double BN_FN(run_sum)(const BN_T *x, npy_intp nrows, npy_intp len,
                                       npy_intp stride)
{
    double tail = 0.0;
#ifdef BN_VECTOR_TYPES
    bn_vd s0 = BN_VZERO, s1 = BN_VZERO, v0, v1;
#else
    double s[BN_LANES] = {0};
#endif
    for (npy_intp r = 0; r < nrows; r++) {
        const BN_T *row = x + r * stride;
        npy_intp i = 0;
        for (; i + BN_LANES <= len; i += BN_LANES) {
#ifdef BN_VECTOR_TYPES
            BN_VLOAD(v0, row + i);
            BN_VLOAD(v1, row + i + 4);
            s0 += v0;
            s1 += v1;
#else
            for (int j = 0; j < BN_LANES; j++)
                s[j] += (double)row[i + j];
#endif
        }
        for (; i < len; i++)
            tail += (double)row[i];
    }
#ifdef BN_VECTOR_TYPES
    return (BN_VTOTAL(s0) + BN_VTOTAL(s1)) + tail;
#else
    return (((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))) + tail;
#endif
}

/* Sums of (x - mu) and (x - mu)^2 over a block of runs. */
BN_TARGET static void BN_FN(run_dev_sums)(const BN_T *x, npy_intp nrows, npy_intp len,
                                          npy_intp stride, double mu, double *dsum,
                                          double *sqsum)
{
    double tail_d = 0.0, tail_q = 0.0;
#ifdef BN_VECTOR_TYPES
    const bn_vd m = BN_VSPLAT(mu);
    bn_vd d0 = BN_VZERO, d1 = BN_VZERO, q0 = BN_VZERO, q1 = BN_VZERO, v0, v1;
#else
    double d[BN_LANES] = {0}, q[BN_LANES] = {0};
#endif
    for (npy_intp r = 0; r < nrows; r++) {
        const BN_T *row = x + r * stride;
        npy_intp i = 0;
        for (; i + BN_LANES <= len; i += BN_LANES) {
#ifdef BN_VECTOR_TYPES
            BN_VLOAD(v0, row + i);
            BN_VLOAD(v1, row + i + 4);
            v0 -= m;
            v1 -= m;
            d0 += v0;
            d1 += v1;
            q0 += v0 * v0;
            q1 += v1 * v1;
#else
            for (int j = 0; j < BN_LANES; j++) {
                const double dev = (double)row[i + j] - mu;
                d[j] += dev;
                q[j] += dev * dev;
            }
#endif
        }
        for (; i < len; i++) {
            const double dev = (double)row[i] - mu;
            tail_d += dev;
            tail_q += dev * dev;
        }
    }
#ifdef BN_VECTOR_TYPES
    *dsum = (BN_VTOTAL(d0) + BN_VTOTAL(d1)) + tail_d;
    *sqsum = (BN_VTOTAL(q0) + BN_VTOTAL(q1)) + tail_q;
#else
    *dsum = (((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7]))) + tail_d;
    *sqsum = (((q[0] + q[1]) + (q[2] + q[3])) + ((q[4] + q[5]) + (q[6] + q[7]))) + tail_q;
#endif
}

/* Mean and M2 (sum of squared deviations) of a block of runs, by the corrected two-pass
 * algorithm; the second pass reads the block from cache. */
static void BN_FN(run_moments)(const BN_T *x, npy_intp nrows, npy_intp len, npy_intp stride,
                               double *mean, double *m2)
{
    const double n = (double)(nrows * len);
    const double mu = BN_FN(run_sum)(x, nrows, len, stride) / n;
    double ds, sq;
    BN_FN(run_dev_sums)(x, nrows, len, stride, mu, &ds, &sq);
    /* ds is n times the rounding error of mu: subtracting ds^2/n makes M2 exact to rounding. */
    *mean = mu;
    *m2 = sq - ds * ds / n;
}

/* Per-channel mean and M2 of a block of tile rows; dsum is scratch of ncols doubles. */
BN_TARGET static void BN_FN(tile_moments)(const BN_T *x, npy_intp nrows, npy_intp ncols,
                                          npy_intp stride, double *mean, double *m2,
                                          double *dsum)
{
    const double n = (double)nrows;
    for (npy_intp c = 0; c < ncols; c++) {
        mean[c] = 0.0;
        m2[c] = 0.0;
        dsum[c] = 0.0;
    }
    for (npy_intp r = 0; r < nrows; r++) {
        const BN_T *row = x + r * stride;
        for (npy_intp c = 0; c < ncols; c++)
            mean[c] += (double)row[c];
    }
    for (npy_intp c = 0; c < ncols; c++)
        mean[c] /= n;
    for (npy_intp r = 0; r < nrows; r++) {
        const BN_T *row = x + r * stride;
        for (npy_intp c = 0; c < ncols; c++) {
            const double d = (double)row[c] - mean[c];
            dsum[c] += d;
            m2[c] += d * d;
        }
    }
    for (npy_intp c = 0; c < ncols; c++)
        m2[c] -= dsum[c] * dsum[c] / n;
}

/* Weighted, NaN-skipping moments of a block of tile rows (the scaler's statistics):
 * count[c] = sum of the weights of the non-NaN values, mean and M2 weighted likewise.
 * w is the per-row weight (NULL: all ones); dsum is scratch of ncols doubles. */
BN_TARGET static void BN_FN(tile_moments_masked)(const BN_T *x, const double *w,
                                                 npy_intp nrows, npy_intp ncols,
                                                 npy_intp stride, double *count, double *mean,
                                                 double *m2, double *dsum)
{
    for (npy_intp c = 0; c < ncols; c++) {
        count[c] = 0.0;
        mean[c] = 0.0;
        m2[c] = 0.0;
        dsum[c] = 0.0;
    }
    for (npy_intp r = 0; r < nrows; r++) {
        const BN_T *row = x + r * stride;
        const double wr = w ? w[r] : 1.0;
        for (npy_intp c = 0; c < ncols; c++) {
            const double v = (double)row[c];
            const int ok = v == v;
            count[c] += ok ? wr : 0.0;
            mean[c] += ok ? wr * v : 0.0;
        }
    }
    for (npy_intp c = 0; c < ncols; c++)
        mean[c] = count[c] > 0.0 ? mean[c] / count[c] : 0.0;
    for (npy_intp r = 0; r < nrows; r++) {
        const BN_T *row = x + r * stride;
        const double wr = w ? w[r] : 1.0;
        for (npy_intp c = 0; c < ncols; c++) {
            const double v = (double)row[c];
            const double d = v == v ? v - mean[c] : 0.0;
            dsum[c] += wr * d;
            m2[c] += wr * d * d;
        }
    }
    for (npy_intp c = 0; c < ncols; c++)
        if (count[c] > 0.0)
            m2[c] -= dsum[c] * dsum[c] / count[c];
}

/* y = (x - mean) * scale + shift over one run; the subtraction comes first so that a large
 * offset cancels exactly instead of being folded into the shift. */
BN_TARGET static void BN_FN(run_normalize)(const BN_T *x, BN_T *y, npy_intp len, double mean,
                                           double scale, double shift)
{
    BN_IVDEP
    for (npy_intp i = 0; i < len; i++)
        y[i] = (BN_T)(((double)x[i] - mean) * scale + shift);
}

BN_TARGET static void BN_FN(row_normalize)(const BN_T *x, BN_T *y, npy_intp ncols,
                                           const double *mean, const double *scale,
                                           const double *shift)
{
    BN_IVDEP
    for (npy_intp c = 0; c < ncols; c++)
        y[c] = (BN_T)(((double)x[c] - mean[c]) * scale[c] + shift[c]);
}

/* Backward reductions of a block of runs: sum(dy) and sum(dy * (x - mean)), in one pass. */
BN_TARGET static void BN_FN(run_grad_sums)(const BN_T *dy, const BN_T *x, npy_intp nrows,
                                           npy_intp len, npy_intp stride, double mean,
                                           double *sum_dy, double *sum_dy_xmu)
{
    double tail_a = 0.0, tail_b = 0.0;
#ifdef BN_VECTOR_TYPES
    const bn_vd m = BN_VSPLAT(mean);
    bn_vd a0 = BN_VZERO, a1 = BN_VZERO, b0 = BN_VZERO, b1 = BN_VZERO, g0, g1, v0, v1;
#else
    double a[BN_LANES] = {0}, b[BN_LANES] = {0};
#endif
    for (npy_intp r = 0; r < nrows; r++) {
        const BN_T *g = dy + r * stride, *v = x + r * stride;
        npy_intp i = 0;
        for (; i + BN_LANES <= len; i += BN_LANES) {
#ifdef BN_VECTOR_TYPES
            BN_VLOAD(g0, g + i);
            BN_VLOAD(g1, g + i + 4);
            BN_VLOAD(v0, v + i);
            BN_VLOAD(v1, v + i + 4);
            a0 += g0;
            a1 += g1;
            b0 += g0 * (v0 - m);
            b1 += g1 * (v1 - m);
#else
            for (int j = 0; j < BN_LANES; j++) {
                const double gj = (double)g[i + j];
                a[j] += gj;
                b[j] += gj * ((double)v[i + j] - mean);
            }
#endif
        }
        for (; i < len; i++) {
            const double gi = (double)g[i];
            tail_a += gi;
            tail_b += gi * ((double)v[i] - mean);
        }
    }
#ifdef BN_VECTOR_TYPES
    *sum_dy = (BN_VTOTAL(a0) + BN_VTOTAL(a1)) + tail_a;
    *sum_dy_xmu = (BN_VTOTAL(b0) + BN_VTOTAL(b1)) + tail_b;
#else
    *sum_dy = (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))) + tail_a;
    *sum_dy_xmu = (((b[0] + b[1]) + (b[2] + b[3])) + ((b[4] + b[5]) + (b[6] + b[7]))) + tail_b;
#endif
}

BN_TARGET static void BN_FN(tile_grad_sums)(const BN_T *dy, const BN_T *x, npy_intp nrows,
                                            npy_intp ncols, npy_intp stride, const double *mean,
                                            double *sum_dy, double *sum_dy_xmu)
{
    for (npy_intp c = 0; c < ncols; c++) {
        sum_dy[c] = 0.0;
        sum_dy_xmu[c] = 0.0;
    }
    for (npy_intp r = 0; r < nrows; r++) {
        const BN_T *g = dy + r * stride, *v = x + r * stride;
        for (npy_intp c = 0; c < ncols; c++) {
            const double gc = (double)g[c];
            sum_dy[c] += gc;
            sum_dy_xmu[c] += gc * ((double)v[c] - mean[c]);
        }
    }
}

/* dx = ((dy - a) - (x - mean) * b) * k, with a = sum(dy)/m, b = invstd * dgamma / m and
 * k = gamma * invstd: the closed form of DESIGN §1 with the per-channel factors hoisted. */
BN_TARGET static void BN_FN(run_grad_input)(const BN_T *dy, const BN_T *x, BN_T *dx,
                                            npy_intp len, double mean, double a, double b,
                                            double k)
{
    BN_IVDEP
    for (npy_intp i = 0; i < len; i++)
        dx[i] = (BN_T)((((double)dy[i] - a) - ((double)x[i] - mean) * b) * k);
}

BN_TARGET static void BN_FN(row_grad_input)(const BN_T *dy, const BN_T *x, BN_T *dx,
                                            npy_intp ncols, const double *mean, const double *a,
                                            const double *b, const double *k)
{
    BN_IVDEP
    for (npy_intp c = 0; c < ncols; c++)
        dx[c] = (BN_T)((((double)dy[c] - a[c]) - ((double)x[c] - mean[c]) * b[c]) * k[c]);
}

#undef BN_IVDEP
