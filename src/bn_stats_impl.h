/* Reductions of bn_loops.h, a template body: included once per element type, BN_T = float,
 * double, bn_f16 or bn_bf16 (after the elementwise passes of bn_elementwise_impl.h).  Values
 * are read with BN_LD and BN_VLOAD, exactly widened to double.
 *
 * Vocabulary: a "run" is `len` contiguous elements of one channel (the inner > 1 layout);
 * a block of runs is `nrows` such runs, `stride` elements apart.  A "tile row" is `ncols`
 * contiguous channels of one sample (the inner == 1 layout); a block of tile rows is `nrows`
 * of them, `stride` elements apart.  Sums are float64 lanes in a fixed order (bn_loops.h).
 */

/* Sixteen consecutive values as four vectors of four doubles: the element type's own load
 * where it has one (bfloat16 on x86-64-v3), else four BN_VLOAD. */
#ifdef BN_VECTOR_TYPES
#ifdef BN_H_VLOAD16
#define BN_VLOAD16(a, b, c, d, p) BN_H_VLOAD16((p), &(a), &(b), &(c), &(d))
#else
#define BN_VLOAD16(a, b, c, d, p) \
    (BN_VLOAD(a, p), BN_VLOAD(b, (p) + 4), BN_VLOAD(c, (p) + 8), BN_VLOAD(d, (p) + 12))
#endif
#endif

/* Sums of d = x - shift and of d^2 over a block of runs, in 16 float64 lanes (four vectors of
 * four, enough independent chains to hide the latency of the adds) added up in a fixed order. */
BN_TARGET static void BN_FN(run_shifted_sums)(const BN_T *x, npy_intp nrows, npy_intp len,
                                              npy_intp stride, double shift, double *dsum,
                                              double *sqsum)
{
    double tail_d = 0.0, tail_q = 0.0;
#ifdef BN_VECTOR_TYPES
    const bn_vd k = BN_VSPLAT(shift);
    bn_vd d0 = BN_VZERO, d1 = BN_VZERO, d2 = BN_VZERO, d3 = BN_VZERO;
    bn_vd q0 = BN_VZERO, q1 = BN_VZERO, q2 = BN_VZERO, q3 = BN_VZERO;
    bn_vd v0, v1, v2, v3;
#else
    double d[BN_LANES] = {0}, q[BN_LANES] = {0};
#endif
    for (npy_intp r = 0; r < nrows; r++) {
        const BN_T *row = x + r * stride;
        npy_intp i = 0;
        for (; i + BN_LANES <= len; i += BN_LANES) {
#ifdef BN_VECTOR_TYPES
            BN_VLOAD16(v0, v1, v2, v3, row + i);
            v0 -= k;
            v1 -= k;
            v2 -= k;
            v3 -= k;
            d0 += v0;
            d1 += v1;
            d2 += v2;
            d3 += v3;
            q0 += v0 * v0;
            q1 += v1 * v1;
            q2 += v2 * v2;
            q3 += v3 * v3;
#else
            for (int j = 0; j < BN_LANES; j++) {
                const double dev = BN_LD(row[i + j]) - shift;
                d[j] += dev;
                q[j] += dev * dev;
            }
#endif
        }
        for (; i < len; i++) {
            const double dev = BN_LD(row[i]) - shift;
            tail_d += dev;
            tail_q += dev * dev;
        }
    }
#ifdef BN_VECTOR_TYPES
    *dsum = BN_VTOTAL((d0 + d1) + (d2 + d3)) + tail_d;
    *sqsum = BN_VTOTAL((q0 + q1) + (q2 + q3)) + tail_q;
#else
    double dv[4], qv[4];
    for (int j = 0; j < 4; j++) {
        dv[j] = (d[j] + d[j + 4]) + (d[j + 8] + d[j + 12]);
        qv[j] = (q[j] + q[j + 4]) + (q[j + 8] + q[j + 12]);
    }
    *dsum = ((dv[0] + dv[1]) + (dv[2] + dv[3])) + tail_d;
    *sqsum = ((qv[0] + qv[1]) + (qv[2] + qv[3])) + tail_q;
#endif
}

/* Mean and M2 (sum of squared deviations) of a block of runs, in one pass of sums shifted by
 * `shift` (a guess of the mean: the chunk's mean so far, or the block's first value).  When the
 * guess is too far off, one more pass around the first pass's mean: the corrected two-pass
 * algorithm, with the block still in cache.  The mean is returned unevaluated, as
 * *mean + *dmean (the shift used and the mean's offset from it): rounded into one double
 * near a large offset it would lose the digits that the merges of the blocks' states need
 * (docs/design.md §1, "Offsets"). */
static void BN_FN(run_moments)(const BN_T *x, npy_intp nrows, npy_intp len, npy_intp stride,
                               double shift, double *mean, double *dmean, double *m2)
{
    const double n = (double)(nrows * len);
    double s, q;
    BN_FN(run_shifted_sums)(x, nrows, len, stride, shift, &s, &q);
    if (!bn_well_shifted(s, q, n)) {
        shift += s / n;
        BN_FN(run_shifted_sums)(x, nrows, len, stride, shift, &s, &q);
    }
    *mean = shift;
    *dmean = s / n;
    *m2 = q - s * s / n;
}

/* How the tile loops walk their rows: four at a time (pairwise adds, a quarter of the loads
 * and stores of the per-channel accumulators), except for a tile that is a whole row of
 * 512 bytes up to 4 KiB, which streams faster one row at a time: 0.70-0.74x the time for
 * float32 C = 128 and 256, 0.5x for float64 C = 64, the same for float32 C = 512 (moments,
 * 1 thread, 2-core EPYC, same run).  Four rows at a time stays 1.5x faster for a part of a
 * wider row, and for whole rows of 4 KiB and more (float32 C = 1024: one row at a time
 * took 1.7x the time, C harness, 1 thread). */
static inline int BN_FN(tile_by4)(npy_intp ncols, npy_intp stride)
{
    const npy_intp bytes = ncols * (npy_intp)sizeof(BN_T);
    return bytes < 512 || bytes >= 4096 || ncols != stride;
}

/* Per-channel shifted sums over a block of tile rows; s and q are set, not accumulated.
 * With by4, four rows at a time (pairwise adds, and a quarter of the loads and stores of s
 * and q), else one row at a time: a channel's arithmetic depends on by4 and nothing else. */
BN_TARGET static void BN_FN(tile_shifted_sums)(const BN_T *x, npy_intp nrows, npy_intp ncols,
                                               npy_intp stride, const double *shift,
                                               double *s, double *q, int by4)
{
    npy_intp r = 0;
    for (npy_intp c = 0; c < ncols; c++) {
        s[c] = 0.0;
        q[c] = 0.0;
    }
    for (; by4 && r + 4 <= nrows; r += 4) {
        const BN_T *x0 = x + r * stride, *x1 = x0 + stride, *x2 = x1 + stride, *x3 = x2 + stride;
        npy_intp c = 0;
#ifdef BN_VECTOR_TYPES
        /* Four channels at a time in vector types: each value converted straight from
         * memory (GCC otherwise loads eight and splits them); the same arithmetic per
         * channel as the scalar loop below. */
        for (; c + 4 <= ncols; c += 4) {
            bn_vd k, a, b, e, f, sv, qv;
            memcpy(&k, shift + c, sizeof k);
            BN_VLOAD(a, x0 + c);
            BN_VLOAD(b, x1 + c);
            BN_VLOAD(e, x2 + c);
            BN_VLOAD(f, x3 + c);
            a -= k;
            b -= k;
            e -= k;
            f -= k;
            memcpy(&sv, s + c, sizeof sv);
            memcpy(&qv, q + c, sizeof qv);
            sv += (a + b) + (e + f);
            qv += (a * a + b * b) + (e * e + f * f);
            memcpy(s + c, &sv, sizeof sv);
            memcpy(q + c, &qv, sizeof qv);
        }
#endif
        for (; c < ncols; c++) {
            const double k = shift[c];
            const double a = BN_LD(x0[c]) - k, b = BN_LD(x1[c]) - k;
            const double e = BN_LD(x2[c]) - k, f = BN_LD(x3[c]) - k;
            s[c] += (a + b) + (e + f);
            q[c] += (a * a + b * b) + (e * e + f * f);
        }
    }
    for (; r < nrows; r++) {
        const BN_T *row = x + r * stride;
        npy_intp c = 0;
#if BN_HALF && defined(BN_VECTOR_TYPES)
        /* Half types: four channels a vector (the compiler does not vectorize their scalar
         * conversions); the scalar loop's arithmetic per channel. */
        for (; c + 4 <= ncols; c += 4) {
            bn_vd k, d, sv, qv;
            memcpy(&k, shift + c, sizeof k);
            BN_VLOAD(d, row + c);
            d -= k;
            memcpy(&sv, s + c, sizeof sv);
            memcpy(&qv, q + c, sizeof qv);
            sv += d;
            qv += d * d;
            memcpy(s + c, &sv, sizeof sv);
            memcpy(q + c, &qv, sizeof qv);
        }
#endif
        for (; c < ncols; c++) {
            const double d = BN_LD(row[c]) - shift[c];
            s[c] += d;
            q[c] += d * d;
        }
    }
}

/* Per-channel mean and M2 of a block of tile rows, like run_moments: one shifted pass, and a
 * second pass for the channels whose shift was too far from their mean.  The mean is
 * shift[c] + mean[c] (unevaluated, as in run_moments).  A channel's result
 * depends on its own values only: the second pass re-runs exactly the same per-channel
 * arithmetic, over the one channel when few need it, else over the span of columns from the
 * first to the last that need it (the others in that span get their first-pass sums again,
 * bit for bit, since their shift is unchanged).
 * shift[ncols] is the guess and is overwritten; q is scratch of ncols doubles. */
static void BN_FN(tile_moments)(const BN_T *x, npy_intp nrows, npy_intp ncols, npy_intp stride,
                                double *shift, double *mean, double *m2, double *q)
{
    const double n = (double)nrows;
    npy_intp lo = ncols, hi = -1, again = 0;
    const int by4 = BN_FN(tile_by4)(ncols, stride);
    BN_FN(tile_shifted_sums)(x, nrows, ncols, stride, shift, mean, q, by4);
    for (npy_intp c = 0; c < ncols; c++) {
        if (!bn_well_shifted(mean[c], q[c], n)) {
            shift[c] += mean[c] / n;
            lo = c < lo ? c : lo;
            hi = c;
            again++;
        }
    }
    if (again * 8 > hi - lo + 1) {
        BN_FN(tile_shifted_sums)(x + lo, nrows, hi - lo + 1, stride, shift + lo, mean + lo,
                                 q + lo, by4);
    } else if (again) {
        for (npy_intp c = lo; c <= hi; c++)
            if (!bn_well_shifted(mean[c], q[c], n))
                BN_FN(tile_shifted_sums)(x + c, nrows, 1, stride, shift + c, mean + c, q + c,
                                         by4);
    }
    /* One reciprocal for the block (every channel has n values): a multiplication per
     * channel instead of two divisions, one more rounding on the small corrections. */
    const double inv_n = 1.0 / n;
    for (npy_intp c = 0; c < ncols; c++) {
        const double sc = mean[c];
        mean[c] = sc * inv_n;
        m2[c] = q[c] - sc * (sc * inv_n);
    }
}

#if !BN_HALF /* the scaler's statistics: float32 and float64 data only */
/* Weighted, NaN-skipping shifted sums over a block of tile rows (the scaler's statistics):
 * count[c] = sum of the weights of the non-NaN values, s[c] and q[c] the weighted sums of
 * d = x - shift[c] and d^2 over them.  w is the per-row weight (NULL: all ones). */
BN_TARGET static void BN_FN(tile_shifted_sums_masked)(const BN_T *x, const double *w,
                                                      npy_intp nrows, npy_intp ncols,
                                                      npy_intp stride, const double *shift,
                                                      double *count, double *s, double *q)
{
    for (npy_intp c = 0; c < ncols; c++) {
        count[c] = 0.0;
        s[c] = 0.0;
        q[c] = 0.0;
    }
    for (npy_intp r = 0; r < nrows; r++) {
        const BN_T *row = x + r * stride;
        const double wr = w ? w[r] : 1.0;
        for (npy_intp c = 0; c < ncols; c++) {
            const double v = BN_LD(row[c]);
            const int ok = v == v;
            const double d = ok ? v - shift[c] : 0.0;
            count[c] += ok ? wr : 0.0;
            s[c] += wr * d;
            q[c] += wr * (d * d);
        }
    }
}

/* Weighted NaN-skipping count, mean and M2 of a block of tile rows, like tile_moments (the
 * second pass again covers only the channels that need it; the mean is shift[c] + mean[c]).
 * shift[ncols] is the guess (overwritten); s is scratch of ncols doubles. */
static void BN_FN(tile_moments_masked)(const BN_T *x, const double *w, npy_intp nrows,
                                       npy_intp ncols, npy_intp stride, double *shift,
                                       double *count, double *mean, double *m2, double *s)
{
    npy_intp lo = ncols, hi = -1, again = 0;
    BN_FN(tile_shifted_sums_masked)(x, w, nrows, ncols, stride, shift, count, s, m2);
    for (npy_intp c = 0; c < ncols; c++) {
        if (count[c] != 0.0 && !bn_well_shifted(s[c], m2[c], count[c])) {
            shift[c] += s[c] / count[c];
            lo = c < lo ? c : lo;
            hi = c;
            again++;
        }
    }
    if (again * 8 > hi - lo + 1) {
        BN_FN(tile_shifted_sums_masked)(x + lo, w, nrows, hi - lo + 1, stride, shift + lo,
                                        count + lo, s + lo, m2 + lo);
    } else if (again) {
        for (npy_intp c = lo; c <= hi; c++)
            if (count[c] != 0.0 && !bn_well_shifted(s[c], m2[c], count[c]))
                BN_FN(tile_shifted_sums_masked)(x + c, w, nrows, 1, stride, shift + c,
                                                count + c, s + c, m2 + c);
    }
    for (npy_intp c = 0; c < ncols; c++) {
        if (count[c] != 0.0) {
            mean[c] = s[c] / count[c];
            m2[c] -= s[c] * s[c] / count[c];
        } else {
            mean[c] = 0.0;
            m2[c] = 0.0;
        }
    }
}

#endif

/* Backward reductions of a block of runs: sum(dy) and sum(dy * (x - mean)), in one pass and
 * 16 lanes, like run_shifted_sums. */
BN_TARGET static void BN_FN(run_grad_sums)(const BN_T *dy, const BN_T *x, npy_intp nrows,
                                           npy_intp len, npy_intp stride, double mean,
                                           double *sum_dy, double *sum_dy_xmu)
{
    double tail_a = 0.0, tail_b = 0.0;
#ifdef BN_VECTOR_TYPES
    const bn_vd m = BN_VSPLAT(mean);
    bn_vd a0 = BN_VZERO, a1 = BN_VZERO, a2 = BN_VZERO, a3 = BN_VZERO;
    bn_vd b0 = BN_VZERO, b1 = BN_VZERO, b2 = BN_VZERO, b3 = BN_VZERO;
    bn_vd g0, g1, g2, g3, v0, v1, v2, v3;
#else
    double a[BN_LANES] = {0}, b[BN_LANES] = {0};
#endif
    for (npy_intp r = 0; r < nrows; r++) {
        const BN_T *g = dy + r * stride, *v = x + r * stride;
        npy_intp i = 0;
        for (; i + BN_LANES <= len; i += BN_LANES) {
#ifdef BN_VECTOR_TYPES
            BN_VLOAD16(g0, g1, g2, g3, g + i);
            BN_VLOAD16(v0, v1, v2, v3, v + i);
            a0 += g0;
            a1 += g1;
            a2 += g2;
            a3 += g3;
            b0 += g0 * (v0 - m);
            b1 += g1 * (v1 - m);
            b2 += g2 * (v2 - m);
            b3 += g3 * (v3 - m);
#else
            for (int j = 0; j < BN_LANES; j++) {
                const double gj = BN_LD(g[i + j]);
                a[j] += gj;
                b[j] += gj * (BN_LD(v[i + j]) - mean);
            }
#endif
        }
        for (; i < len; i++) {
            const double gi = BN_LD(g[i]);
            tail_a += gi;
            tail_b += gi * (BN_LD(v[i]) - mean);
        }
    }
#ifdef BN_VECTOR_TYPES
    *sum_dy = BN_VTOTAL((a0 + a1) + (a2 + a3)) + tail_a;
    *sum_dy_xmu = BN_VTOTAL((b0 + b1) + (b2 + b3)) + tail_b;
#else
    double av[4], bv[4];
    for (int j = 0; j < 4; j++) {
        av[j] = (a[j] + a[j + 4]) + (a[j + 8] + a[j + 12]);
        bv[j] = (b[j] + b[j + 4]) + (b[j + 8] + b[j + 12]);
    }
    *sum_dy = ((av[0] + av[1]) + (av[2] + av[3])) + tail_a;
    *sum_dy_xmu = ((bv[0] + bv[1]) + (bv[2] + bv[3])) + tail_b;
#endif
}

/* Backward sums of the fused ReLU over runs: run_grad_sums with dy replaced by
 * g = (relu_y > 0 ? dy : +0), in the same lanes and the same order, so they give the bits of
 * the plain sums of np.where(relu_y > 0, dy, 0).  (A twin of run_grad_sums, kept apart from
 * it; a change to the arithmetic of one belongs in the other.  The tile sums share one body,
 * tile_grad_sums_body, below.) */
BN_TARGET static void BN_FN(run_grad_sums_masked)(const BN_T *dy, const BN_T *x,
                                                  const BN_T *relu_y, npy_intp nrows,
                                                  npy_intp len, npy_intp stride, double mean,
                                                  double *sum_dy, double *sum_dy_xmu)
{
    double tail_a = 0.0, tail_b = 0.0;
#ifdef BN_VECTOR_TYPES
    const bn_vd m = BN_VSPLAT(mean);
    bn_vd a0 = BN_VZERO, a1 = BN_VZERO, a2 = BN_VZERO, a3 = BN_VZERO;
    bn_vd b0 = BN_VZERO, b1 = BN_VZERO, b2 = BN_VZERO, b3 = BN_VZERO;
    bn_vd g0, g1, g2, g3, v0, v1, v2, v3;
    BN_T gm[BN_LANES];
    /* The masked gradient of 16 values, as a select of values loaded unconditionally (a
     * conditional load would keep the loop scalar and branchy). */
#define BN_VLOAD_MASKED_ALL(g, y)                                                            \
    do {                                                                                     \
        for (int j = 0; j < BN_LANES; j++) {                                                 \
            gm[j] = BN_MASKED((g)[j], (y)[j]);                                            \
        }                                                                                    \
    } while (0)
#else
    double a[BN_LANES] = {0}, b[BN_LANES] = {0};
#endif
    for (npy_intp r = 0; r < nrows; r++) {
        const BN_T *g = dy + r * stride, *v = x + r * stride, *yy = relu_y + r * stride;
        npy_intp i = 0;
        for (; i + BN_LANES <= len; i += BN_LANES) {
#ifdef BN_VECTOR_TYPES
            /* Selected in BN_T before the conversion: masking the converted vector with a
             * comparison's bits makes GCC 12 fail (internal error) in the AVX2 clone. */
            BN_VLOAD_MASKED_ALL(g + i, yy + i);
            BN_VLOAD16(g0, g1, g2, g3, gm);
            BN_VLOAD16(v0, v1, v2, v3, v + i);
            a0 += g0;
            a1 += g1;
            a2 += g2;
            a3 += g3;
            b0 += g0 * (v0 - m);
            b1 += g1 * (v1 - m);
            b2 += g2 * (v2 - m);
            b3 += g3 * (v3 - m);
#else
            for (int j = 0; j < BN_LANES; j++) {
                const double gj = BN_LD(BN_MASKED(g[i + j], yy[i + j]));
                a[j] += gj;
                b[j] += gj * (BN_LD(v[i + j]) - mean);
            }
#endif
        }
        for (; i < len; i++) {
            const double gi = BN_LD(BN_MASKED(g[i], yy[i]));
            tail_a += gi;
            tail_b += gi * (BN_LD(v[i]) - mean);
        }
    }
#ifdef BN_VECTOR_TYPES
    *sum_dy = BN_VTOTAL((a0 + a1) + (a2 + a3)) + tail_a;
    *sum_dy_xmu = BN_VTOTAL((b0 + b1) + (b2 + b3)) + tail_b;
#undef BN_VLOAD_MASKED_ALL
#else
    double av[4], bv[4];
    for (int j = 0; j < 4; j++) {
        av[j] = (a[j] + a[j + 4]) + (a[j + 8] + a[j + 12]);
        bv[j] = (b[j] + b[j + 4]) + (b[j + 8] + b[j + 12]);
    }
    *sum_dy = ((av[0] + av[1]) + (av[2] + av[3])) + tail_a;
    *sum_dy_xmu = ((bv[0] + bv[1]) + (bv[2] + bv[3])) + tail_b;
#endif
}

/* Per-channel backward sums over a block of tile rows, of dy (masked = 0) or of
 * g = (relu_y > 0 ? dy : +0) (masked = 1; a constant at each call, so each caller compiles
 * to its own loops): the paths of tile_shifted_sums, four rows at a time or one, four
 * channels a vector; a channel's arithmetic depends on by4 and nothing else, so the masked
 * sums are the bits of the plain sums of the masked dy. */
BN_INLINE void BN_FN(tile_grad_sums_body)(const BN_T *dy, const BN_T *x, const BN_T *relu_y,
                                          int masked, npy_intp nrows, npy_intp ncols,
                                          npy_intp stride, const double *mean,
                                          double *sum_dy, double *sum_dy_xmu)
{
    npy_intp r = 0;
    for (npy_intp c = 0; c < ncols; c++) {
        sum_dy[c] = 0.0;
        sum_dy_xmu[c] = 0.0;
    }
    /* The gradient at g[j] (y: the ReLU output beside it), as a value or four as a vector;
     * masked in the element type before the conversion (as in run_grad_sums_masked). */
#define BN_G(g, y, j) (masked ? BN_MASKED((g)[j], (y)[j]) : (g)[j])
#ifdef BN_VECTOR_TYPES
#define BN_VLOAD_G(dst, g, y)                                                                \
    do {                                                                                     \
        BN_T t_[4];                                                                          \
        for (int j_ = 0; j_ < 4; j_++)                                                       \
            t_[j_] = BN_G(g, y, j_);                                                         \
        BN_VLOAD(dst, t_);                                                                   \
    } while (0)
#endif
    const int by4 = BN_FN(tile_by4)(ncols, stride);
    for (; by4 && r + 4 <= nrows; r += 4) {
        const BN_T *g0 = dy + r * stride, *g1 = g0 + stride, *g2 = g1 + stride, *g3 = g2 + stride;
        const BN_T *v0 = x + r * stride, *v1 = v0 + stride, *v2 = v1 + stride, *v3 = v2 + stride;
        const BN_T *y0 = masked ? relu_y + r * stride : g0;
        const BN_T *y1 = y0 + stride, *y2 = y1 + stride, *y3 = y2 + stride;
        npy_intp c = 0;
#ifdef BN_VECTOR_TYPES
        for (; c + 4 <= ncols; c += 4) {
            bn_vd m, a, b, e, f, va, vb, ve, vf, sa, sb;
            memcpy(&m, mean + c, sizeof m);
            if (masked) {
                BN_VLOAD_G(a, g0 + c, y0 + c);
                BN_VLOAD_G(b, g1 + c, y1 + c);
                BN_VLOAD_G(e, g2 + c, y2 + c);
                BN_VLOAD_G(f, g3 + c, y3 + c);
            } else {
                BN_VLOAD(a, g0 + c);
                BN_VLOAD(b, g1 + c);
                BN_VLOAD(e, g2 + c);
                BN_VLOAD(f, g3 + c);
            }
            BN_VLOAD(va, v0 + c);
            BN_VLOAD(vb, v1 + c);
            BN_VLOAD(ve, v2 + c);
            BN_VLOAD(vf, v3 + c);
            memcpy(&sa, sum_dy + c, sizeof sa);
            memcpy(&sb, sum_dy_xmu + c, sizeof sb);
            sa += (a + b) + (e + f);
            sb += (a * (va - m) + b * (vb - m)) + (e * (ve - m) + f * (vf - m));
            memcpy(sum_dy + c, &sa, sizeof sa);
            memcpy(sum_dy_xmu + c, &sb, sizeof sb);
        }
#endif
        for (; c < ncols; c++) {
            const double m = mean[c];
            const double a = BN_LD(BN_G(g0, y0, c)), b = BN_LD(BN_G(g1, y1, c));
            const double e = BN_LD(BN_G(g2, y2, c)), f = BN_LD(BN_G(g3, y3, c));
            sum_dy[c] += (a + b) + (e + f);
            sum_dy_xmu[c] += (a * (BN_LD(v0[c]) - m) + b * (BN_LD(v1[c]) - m))
                             + (e * (BN_LD(v2[c]) - m) + f * (BN_LD(v3[c]) - m));
        }
    }
    for (; r < nrows; r++) {
        const BN_T *g = dy + r * stride, *v = x + r * stride;
        const BN_T *yy = masked ? relu_y + r * stride : g;
        npy_intp c = 0;
#if BN_HALF && defined(BN_VECTOR_TYPES)
        for (; c + 4 <= ncols; c += 4) {
            bn_vd m, gv, vv, sa, sb;
            memcpy(&m, mean + c, sizeof m);
            if (masked)
                BN_VLOAD_G(gv, g + c, yy + c);
            else
                BN_VLOAD(gv, g + c);
            BN_VLOAD(vv, v + c);
            memcpy(&sa, sum_dy + c, sizeof sa);
            memcpy(&sb, sum_dy_xmu + c, sizeof sb);
            sa += gv;
            sb += gv * (vv - m);
            memcpy(sum_dy + c, &sa, sizeof sa);
            memcpy(sum_dy_xmu + c, &sb, sizeof sb);
        }
#endif
        for (; c < ncols; c++) {
            const double gc = BN_LD(BN_G(g, yy, c));
            sum_dy[c] += gc;
            sum_dy_xmu[c] += gc * (BN_LD(v[c]) - mean[c]);
        }
    }
#undef BN_G
#ifdef BN_VECTOR_TYPES
#undef BN_VLOAD_G
#endif
}

BN_TARGET static void BN_FN(tile_grad_sums)(const BN_T *dy, const BN_T *x, npy_intp nrows,
                                            npy_intp ncols, npy_intp stride, const double *mean,
                                            double *sum_dy, double *sum_dy_xmu)
{
    BN_FN(tile_grad_sums_body)(dy, x, NULL, 0, nrows, ncols, stride, mean, sum_dy, sum_dy_xmu);
}

BN_TARGET static void BN_FN(tile_grad_sums_masked)(const BN_T *dy, const BN_T *x,
                                                   const BN_T *relu_y, npy_intp nrows,
                                                   npy_intp ncols, npy_intp stride,
                                                   const double *mean, double *sum_dy,
                                                   double *sum_dy_xmu)
{
    BN_FN(tile_grad_sums_body)(dy, x, relu_y, 1, nrows, ncols, stride, mean, sum_dy,
                               sum_dy_xmu);
}

#undef BN_VLOAD16
