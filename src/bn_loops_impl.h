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
            BN_VLOAD(v0, row + i);
            BN_VLOAD(v1, row + i + 4);
            BN_VLOAD(v2, row + i + 8);
            BN_VLOAD(v3, row + i + 12);
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
                const double dev = (double)row[i + j] - shift;
                d[j] += dev;
                q[j] += dev * dev;
            }
#endif
        }
        for (; i < len; i++) {
            const double dev = (double)row[i] - shift;
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
 * algorithm, with the block still in cache. */
static void BN_FN(run_moments)(const BN_T *x, npy_intp nrows, npy_intp len, npy_intp stride,
                               double shift, double *mean, double *m2)
{
    const double n = (double)(nrows * len);
    double s, q;
    BN_FN(run_shifted_sums)(x, nrows, len, stride, shift, &s, &q);
    if (!bn_well_shifted(s, q, n)) {
        shift += s / n;
        BN_FN(run_shifted_sums)(x, nrows, len, stride, shift, &s, &q);
    }
    *mean = shift + s / n;
    *m2 = q - s * s / n;
}

/* How the tile loops walk their rows: four at a time (pairwise adds, a quarter of the loads
 * and stores of the per-channel accumulators), except for a tile that is a whole row of 512
 * bytes or more, which streams faster one row at a time: 0.70-0.74x the time for float32
 * C = 128 and 256, 0.5x for float64 C = 64, the same for float32 C = 512 (moments, 1 thread,
 * 2-core EPYC, same run); four rows at a time stays 1.5x faster for a part of a wider row. */
static inline int BN_FN(tile_by4)(npy_intp ncols, npy_intp stride)
{
    return ncols * (npy_intp)sizeof(BN_T) < 512 || ncols != stride;
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
            const double a = (double)x0[c] - k, b = (double)x1[c] - k;
            const double e = (double)x2[c] - k, f = (double)x3[c] - k;
            s[c] += (a + b) + (e + f);
            q[c] += (a * a + b * b) + (e * e + f * f);
        }
    }
    for (; r < nrows; r++) {
        const BN_T *row = x + r * stride;
        for (npy_intp c = 0; c < ncols; c++) {
            const double d = (double)row[c] - shift[c];
            s[c] += d;
            q[c] += d * d;
        }
    }
}

/* Per-channel mean and M2 of a block of tile rows, like run_moments: one shifted pass, and a
 * second pass for the channels whose shift was too far from their mean.  A channel's result
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
    for (npy_intp c = 0; c < ncols; c++) {
        const double sc = mean[c];
        mean[c] = shift[c] + sc / n;
        m2[c] = q[c] - sc * sc / n;
    }
}

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
            const double v = (double)row[c];
            const int ok = v == v;
            const double d = ok ? v - shift[c] : 0.0;
            count[c] += ok ? wr : 0.0;
            s[c] += wr * d;
            q[c] += wr * (d * d);
        }
    }
}

/* Weighted NaN-skipping count, mean and M2 of a block of tile rows, like tile_moments (the
 * second pass again covers only the channels that need it).
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
            mean[c] = shift[c] + s[c] / count[c];
            m2[c] -= s[c] * s[c] / count[c];
        } else {
            mean[c] = 0.0;
            m2[c] = 0.0;
        }
    }
}

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
            BN_VLOAD(g0, g + i);
            BN_VLOAD(g1, g + i + 4);
            BN_VLOAD(g2, g + i + 8);
            BN_VLOAD(g3, g + i + 12);
            BN_VLOAD(v0, v + i);
            BN_VLOAD(v1, v + i + 4);
            BN_VLOAD(v2, v + i + 8);
            BN_VLOAD(v3, v + i + 12);
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

BN_TARGET static void BN_FN(tile_grad_sums)(const BN_T *dy, const BN_T *x, npy_intp nrows,
                                            npy_intp ncols, npy_intp stride, const double *mean,
                                            double *sum_dy, double *sum_dy_xmu)
{
    npy_intp r = 0;
    for (npy_intp c = 0; c < ncols; c++) {
        sum_dy[c] = 0.0;
        sum_dy_xmu[c] = 0.0;
    }
    const int by4 = BN_FN(tile_by4)(ncols, stride);
    for (; by4 && r + 4 <= nrows; r += 4) {
        const BN_T *g0 = dy + r * stride, *g1 = g0 + stride, *g2 = g1 + stride, *g3 = g2 + stride;
        const BN_T *v0 = x + r * stride, *v1 = v0 + stride, *v2 = v1 + stride, *v3 = v2 + stride;
        npy_intp c = 0;
#ifdef BN_VECTOR_TYPES
        /* Four channels at a time in vector types, like tile_shifted_sums. */
        for (; c + 4 <= ncols; c += 4) {
            bn_vd m, a, b, e, f, va, vb, ve, vf, sa, sb;
            memcpy(&m, mean + c, sizeof m);
            BN_VLOAD(a, g0 + c);
            BN_VLOAD(b, g1 + c);
            BN_VLOAD(e, g2 + c);
            BN_VLOAD(f, g3 + c);
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
            const double a = (double)g0[c], b = (double)g1[c];
            const double e = (double)g2[c], f = (double)g3[c];
            sum_dy[c] += (a + b) + (e + f);
            sum_dy_xmu[c] += (a * ((double)v0[c] - m) + b * ((double)v1[c] - m))
                             + (e * ((double)v2[c] - m) + f * ((double)v3[c] - m));
        }
    }
    for (; r < nrows; r++) {
        const BN_T *g = dy + r * stride, *v = x + r * stride;
        for (npy_intp c = 0; c < ncols; c++) {
            const double gc = (double)g[c];
            sum_dy[c] += gc;
            sum_dy_xmu[c] += gc * ((double)v[c] - mean[c]);
        }
    }
}

/* ---- Elementwise passes -------------------------------------------------------------------
 *
 * Forward and inference: y = (x - mean) * scale + shift.  Backward: dx = ((dy - a) - (x - mean)
 * * b) * k, with a = sum(dy)/m, b = invstd * dgamma / m and k = gamma * invstd (the closed form
 * of the design note with the per-channel factors hoisted).  The coefficients come in float64.
 * float64 data is computed in float64.  float32 data is computed in float32, 8 AVX2 lanes
 * instead of 4, when the coefficients are in range (bn_f32_bad, bn_loops.h), else in float64
 * and rounded once at the end, like float64 data.  Tile rows: the Cython layer converts the
 * coefficients of a row to float32 once per operation (elementwise.pxi f32_coefficients) and
 * calls row_normalize_f32c / row_grad_input_f32c for rows of every width, or the float64 row
 * loop for the whole pass when one coefficient is out of range.  (Converted here on every
 * call, for a segment of 4 to 16 rows, they cost about 7 cycles a column: more than wide rows
 * save, so row_normalize_ep still takes the float32 loop only up to BN_F32_ROW_COLS columns.)
 *
 * Error of the float32 forward.  The mean is split into m_h = fl(mean) and m_l = fl(mean - m_h)
 * (mean - m_h is exact in float64), and
 *     y = fl(fl(fl(fl(x - m_h) - m_l) * fl(scale)) + fl(shift)).
 * u = 2^-24 (half an ulp of 1 in float32); D = x - mean, t = D * scale and y* = t + shift are
 * exact, with the float64 coefficients taken as exact.
 * (1) d = fl(fl(x - m_h) - m_l) has |d - D| <= (2u + 6u^2) |D|, whatever the offset.
 *     Let e = mean - m_h: x - m_h = D + e; |m_l - e| <= u |e| (the range of bn_loops.h keeps
 *     a nonzero e above 2^-113, a normal float); and since m_h is the float nearest the mean,
 *     |e| <= |D| for every float x.
 *     - When x - m_h is exact (Sterbenz: x and m_h of one sign and within a factor 2, the
 *       offset data case; or x or m_h zero; or a subnormal difference), the first subtraction
 *       adds nothing and the second rounds D + (e - m_l): |d - D| <= u|D| + u(1 + u)|D|.
 *     - Otherwise (x far from the mean: outliers, small-magnitude data, a mean near zero),
 *       |x - m_h| >= |m_h| / 2 while |e| <= u |m_h|, so |e| <= 2u |x - m_h| and
 *       |x - m_h| <= |D| / (1 - 2u): the first subtraction errs by at most u |D| (1 + 3u),
 *       m_l is about 2u^2 |D| or less off e, and the second subtraction rounds once: 2u |D|
 *       again, to first order.
 *     The split carries the accuracy, not Sterbenz alone: fl(x - fl(mean)) would be off by up
 *     to u |mean| (0.06 at an offset of 1e6).
 * (2) Times fl(scale) (u) and rounded (u): |p - t| <= (4u + O(u^2)) |t|.
 * (3) Plus fl(shift) (u |shift|) and rounded (u |y|):
 *         |y - y*| <= u (|y*| + 4 |t| + |shift|) + O(u^2)  <=  5u (|y*| + |shift|),
 *     as |t| <= |y*| + |shift|: at most five half-ulps of |y*| + |shift|, where the float64
 *     loop gives half an ulp of |y*|.  The bound is relative to |y*| + |shift|: where t cancels
 *     the shift, y keeps the absolute error of rounding them.  Gradual underflow adds at most
 *     2^-150 (the product; a subtraction or sum with a subnormal result is exact), and an
 *     output within the bound of the overflow threshold may round to inf instead of FLT_MAX.
 * What the tests ask: tests/test_accuracy.py (float32 1e4..1e6 + N(0, 1), every layout) wants
 * y within 1e-5 with shift 0 and |y| < 6: the bound is 5u * 6 = 1.8e-6.  The reference,
 * functional, parity and fuzz tests allow OUTPUT_RTOL = 2e-6 = 33.5u of float32 relative plus
 * 33.5u of the largest |y*| absolute; the shift is at most max |y*| (within a channel t has mean
 * 0, so some y* has the sign of the shift and |y*| >= |shift|), so the bound is 10u max |y*|.
 *
 * Error of the float32 backward.  a and the mean are split alike (a_h, a_l, m_h, m_l), k is
 * distributed over both terms with w = fl(b * k) (the product in float64), and
 *     dx = fl(fl(fl(fl(dy - a_h) - a_l) * fl(k)) - fl(fl(fl(x - m_h) - m_l) * w)),
 * so every intermediate is of the size of a term of dx.  With G = dy - a, H = D * b * k and
 * dx* = G k - H: each difference errs by 2u of itself as in (1), each product adds 2u (the
 * rounding of k or w, and its own), and the last difference rounds once:
 *     |dx - dx*| <= 4u (|G k| + |H|) + u |dx*| + O(u^2)  <=  5u (|G k| + |H|).
 * The terms cancel where dy is nearly a linear function of x (the float64 loop then has half
 * an ulp of dx*, plus 2^-52 of the terms).  The tests scale dx's tolerance by the terms:
 * OUTPUT_RTOL times |k| max|dy| (2 + max xhat^2) (tests/_helpers.py backward_scales and the
 * fuzz test), where |G k| <= 2 |k| max|dy| and |H| = |k xhat mean(dy xhat)| <= |k| max|dy|
 * max xhat^2: the bound is 5u of that scale, against 33.5u allowed.  A term of dx beyond
 * FLT_MAX overflows here (inf, or NaN from inf - inf) where the float64 loop may still give a
 * finite dx.
 *
 * Same bits for every thread count: each element goes through the same operations whatever
 * the split of the work.  The vector body and the scalar tail round alike (IEEE float32 or
 * float64 operations, no reassociation, no FMA contraction: the build uses -ffp-contract=off),
 * and the float32/float64 choice is made per call, from the row width and the coefficients
 * (of the run's channel, or of every channel of the tiles layout), which the shape fixes.  A
 * channel's y depends on its own coefficients only, except that one out-of-range coefficient
 * sends a whole tiles-layout pass to the float64 loop (a more accurate result, other bits).
 *
 * Epilogues.  The loops are inline bodies parameterized by what a fused pass adds: forward
 * res (a residual of x's shape) and act (1: max(v, 0), NaN kept), and backward relu_y (the
 * forward output: dy counts where relu_y > 0, else 0) and dres (where that masked dy is
 * written: the residual's gradient).  The residual is added to v rounded to BN_T (the plain
 * pass's output, bit for bit) and the sum is rounded to BN_T, in the float32 and the float64
 * loop alike: a sum of two floats made in float64 and rounded to float32 is the correctly
 * rounded float32 sum (53 >= 2 * 24 + 2).  So y = relu(fl(bn(x) + res)) with bn(x) the plain
 * output: the bits of the unfused sequence, whichever loop runs.  The plain functions pass
 * NULL and 0 as constants, which the inlined bodies fold away; the fused variants below
 * instantiate the bodies once per combination, so no test is left in the inner loops.
 */

#define BN_FORWARD_EPILOGUE(v, res, act, i)                                                  \
    do {                                                                                     \
        if (res)                                                                             \
            (v) = (BN_T)(v) + (res)[i];                                                      \
        if ((act) && (v) < 0)                                                                \
            (v) = 0;                                                                         \
    } while (0)

#define BN_BACKWARD_PROLOGUE(g, relu_y, dres, i)                                             \
    do {                                                                                     \
        if (relu_y)                                                                          \
            (g) = BN_RELU_MASK((g), (relu_y)[i]);                                            \
        if (dres)                                                                            \
            (dres)[i] = (BN_T)(g);                                                           \
    } while (0)

#if BN_F32
BN_INLINE void bn_normalize_span_f32(const float *x, float *y, npy_intp len, float mh, float ml,
                                     float s, float b, const float *res, int act)
{
    BN_IVDEP
    for (npy_intp i = 0; i < len; i++) {
        float v = ((x[i] - mh) - ml) * s + b;
        BN_FORWARD_EPILOGUE(v, res, act, i);
        y[i] = v;
    }
}

BN_INLINE void bn_normalize_row_span_f32(const float *x, float *y, npy_intp ncols,
                                         const float *mh, const float *ml, const float *s,
                                         const float *b, const float *res, int act)
{
    BN_IVDEP
    for (npy_intp c = 0; c < ncols; c++) {
        float v = ((x[c] - mh[c]) - ml[c]) * s[c] + b[c];
        BN_FORWARD_EPILOGUE(v, res, act, c);
        y[c] = v;
    }
}

BN_INLINE void bn_grad_input_span_f32(const float *dy, const float *x, float *dx, npy_intp len,
                                      float ah, float al, float k, float mh, float ml, float w,
                                      const float *relu_y, float *dres)
{
    BN_IVDEP
    for (npy_intp i = 0; i < len; i++) {
        float g = dy[i];
        BN_BACKWARD_PROLOGUE(g, relu_y, dres, i);
        dx[i] = ((g - ah) - al) * k - ((x[i] - mh) - ml) * w;
    }
}

BN_INLINE void bn_grad_input_row_span_f32(const float *dy, const float *x, float *dx,
                                          npy_intp ncols, const float *ah, const float *al,
                                          const float *k, const float *mh, const float *ml,
                                          const float *w, const float *relu_y, float *dres)
{
    BN_IVDEP
    for (npy_intp c = 0; c < ncols; c++) {
        float g = dy[c];
        BN_BACKWARD_PROLOGUE(g, relu_y, dres, c);
        dx[c] = ((g - ah[c]) - al[c]) * k[c] - ((x[c] - mh[c]) - ml[c]) * w[c];
    }
}
#endif

/* The float64 loops (float64 data; float32 data with coefficients out of the float32 range).
 * The subtraction comes first, so that a large offset cancels exactly instead of being folded
 * into the shift. */
BN_INLINE void BN_FN(normalize_span)(const BN_T *x, BN_T *y, npy_intp len, double mean,
                                     double scale, double shift, const BN_T *res, int act)
{
    BN_IVDEP
    for (npy_intp i = 0; i < len; i++) {
        double v = ((double)x[i] - mean) * scale + shift;
        BN_FORWARD_EPILOGUE(v, res, act, i);
        y[i] = (BN_T)v;
    }
}

BN_INLINE void BN_FN(normalize_row_span)(const BN_T *x, BN_T *y, npy_intp ncols,
                                         const double *mean, const double *scale,
                                         const double *shift, const BN_T *res, int act)
{
    BN_IVDEP
    for (npy_intp c = 0; c < ncols; c++) {
        double v = ((double)x[c] - mean[c]) * scale[c] + shift[c];
        BN_FORWARD_EPILOGUE(v, res, act, c);
        y[c] = (BN_T)v;
    }
}

BN_INLINE void BN_FN(grad_input_span)(const BN_T *dy, const BN_T *x, BN_T *dx, npy_intp len,
                                      double mean, double a, double b, double k,
                                      const BN_T *relu_y, BN_T *dres)
{
    BN_IVDEP
    for (npy_intp i = 0; i < len; i++) {
        double g = (double)dy[i];
        BN_BACKWARD_PROLOGUE(g, relu_y, dres, i);
        dx[i] = (BN_T)(((g - a) - ((double)x[i] - mean) * b) * k);
    }
}

BN_INLINE void BN_FN(grad_input_row_span)(const BN_T *dy, const BN_T *x, BN_T *dx,
                                          npy_intp ncols, const double *mean, const double *a,
                                          const double *b, const double *k, const BN_T *relu_y,
                                          BN_T *dres)
{
    BN_IVDEP
    for (npy_intp c = 0; c < ncols; c++) {
        double g = (double)dy[c];
        BN_BACKWARD_PROLOGUE(g, relu_y, dres, c);
        dx[c] = (BN_T)(((g - a[c]) - ((double)x[c] - mean[c]) * b[c]) * k[c]);
    }
}

/* The passes over a run (one channel) or over nrows contiguous tile rows of ncols channels
 * (coefficients of ncols entries).  With `stream`, results are staged in a cache-resident
 * buffer and written with non-temporal stores: an output far larger than the cache is then
 * written without first being read (a third of the traffic of a plain store loop). */
BN_INLINE void BN_FN(run_normalize_ep)(const BN_T *x, BN_T *y, npy_intp len, double mean,
                                       double scale, double shift, const BN_T *res, int act,
                                       int stream)
{
    BN_T buf[BN_STREAM_BUF];
    const npy_intp step = stream ? BN_STREAM_BUF : len;
#if BN_F32
    float mh, ml, s, b;
    const int f32 = bn_f32_norm_coefs(&mean, &scale, &shift, 1, &mh, &ml, &s, &b);
#endif
    for (npy_intp i = 0; i < len; i += step) {
        const npy_intp n = len - i < step ? len - i : step;
        BN_T *dst = stream ? buf : y + i;
        const BN_T *r = res ? res + i : NULL;
#if BN_F32
        if (f32)
            bn_normalize_span_f32(x + i, dst, n, mh, ml, s, b, r, act);
        else
#endif
            BN_FN(normalize_span)(x + i, dst, n, mean, scale, shift, r, act);
        if (stream)
            BN_FN(bn_stream_store)(y + i, buf, n);
    }
    if (stream)
        bn_stream_fence();
}

BN_INLINE void BN_FN(row_normalize_ep)(const BN_T *x, BN_T *y, npy_intp nrows, npy_intp ncols,
                                       const double *mean, const double *scale,
                                       const double *shift, const BN_T *res, int act,
                                       int stream)
{
    BN_T buf[BN_STREAM_BUF];
    npy_intp r = 0;
#if BN_F32
    float mh[BN_F32_ROW_COLS], ml[BN_F32_ROW_COLS], s[BN_F32_ROW_COLS], b[BN_F32_ROW_COLS];
    if (ncols <= BN_F32_ROW_COLS && bn_f32_norm_coefs(mean, scale, shift, ncols, mh, ml, s, b)) {
        for (; r < nrows; r++) {
            const npy_intp o = r * ncols;
            bn_normalize_row_span_f32(x + o, stream ? buf : y + o, ncols, mh, ml, s, b,
                                      res ? res + o : NULL, act);
            if (stream)
                BN_FN(bn_stream_store)(y + o, buf, ncols);
        }
        if (stream)
            bn_stream_fence();
        return;
    }
#endif
    if (!stream) {
        for (; r < nrows; r++)
            BN_FN(normalize_row_span)(x + r * ncols, y + r * ncols, ncols, mean, scale, shift,
                                      res ? res + r * ncols : NULL, act);
        return;
    }
    for (; r < nrows; r++) {
        const BN_T *xr = x + r * ncols;
        BN_T *yr = y + r * ncols;
        for (npy_intp i = 0; i < ncols; i += BN_STREAM_BUF) {
            const npy_intp n = ncols - i < BN_STREAM_BUF ? ncols - i : BN_STREAM_BUF;
            BN_FN(normalize_row_span)(xr + i, buf, n, mean + i, scale + i, shift + i,
                                      res ? res + r * ncols + i : NULL, act);
            BN_FN(bn_stream_store)(yr + i, buf, n);
        }
    }
    bn_stream_fence();
}

BN_INLINE void BN_FN(run_grad_input_ep)(const BN_T *dy, const BN_T *x, BN_T *dx, npy_intp len,
                                        double mean, double a, double b, double k,
                                        const BN_T *relu_y, BN_T *dres, int stream)
{
    BN_T buf[BN_STREAM_BUF];
    const npy_intp step = stream ? BN_STREAM_BUF : len;
#if BN_F32
    float ah, al, kf, mh, ml, w;
    const int f32 = bn_f32_grad_coefs(&mean, &a, &b, &k, 1, &ah, &al, &kf, &mh, &ml, &w);
#endif
    for (npy_intp i = 0; i < len; i += step) {
        const npy_intp n = len - i < step ? len - i : step;
        BN_T *dst = stream ? buf : dx + i;
        const BN_T *ry = relu_y ? relu_y + i : NULL;
        BN_T *dr = dres ? dres + i : NULL;
#if BN_F32
        if (f32)
            bn_grad_input_span_f32(dy + i, x + i, dst, n, ah, al, kf, mh, ml, w, ry, dr);
        else
#endif
            BN_FN(grad_input_span)(dy + i, x + i, dst, n, mean, a, b, k, ry, dr);
        if (stream)
            BN_FN(bn_stream_store)(dx + i, buf, n);
    }
    if (stream)
        bn_stream_fence();
}

BN_INLINE void BN_FN(row_grad_input_ep)(const BN_T *dy, const BN_T *x, BN_T *dx, npy_intp nrows,
                                        npy_intp ncols, const double *mean, const double *a,
                                        const double *b, const double *k, const BN_T *relu_y,
                                        BN_T *dres, int stream)
{
    BN_T buf[BN_STREAM_BUF];
    npy_intp r = 0;
#if BN_F32
    float ah[BN_F32_ROW_COLS], al[BN_F32_ROW_COLS], kf[BN_F32_ROW_COLS], mh[BN_F32_ROW_COLS],
        ml[BN_F32_ROW_COLS], w[BN_F32_ROW_COLS];
    if (ncols <= BN_F32_ROW_COLS
        && bn_f32_grad_coefs(mean, a, b, k, ncols, ah, al, kf, mh, ml, w)) {
        for (; r < nrows; r++) {
            const npy_intp o = r * ncols;
            bn_grad_input_row_span_f32(dy + o, x + o, stream ? buf : dx + o, ncols, ah, al, kf,
                                       mh, ml, w, relu_y ? relu_y + o : NULL,
                                       dres ? dres + o : NULL);
            if (stream)
                BN_FN(bn_stream_store)(dx + o, buf, ncols);
        }
        if (stream)
            bn_stream_fence();
        return;
    }
#endif
    if (!stream) {
        for (; r < nrows; r++) {
            const npy_intp o = r * ncols;
            BN_FN(grad_input_row_span)(dy + o, x + o, dx + o, ncols, mean, a, b, k,
                                       relu_y ? relu_y + o : NULL, dres ? dres + o : NULL);
        }
        return;
    }
    for (; r < nrows; r++) {
        const npy_intp o = r * ncols;
        for (npy_intp i = 0; i < ncols; i += BN_STREAM_BUF) {
            const npy_intp n = ncols - i < BN_STREAM_BUF ? ncols - i : BN_STREAM_BUF;
            BN_FN(grad_input_row_span)(dy + o + i, x + o + i, buf, n, mean + i, a + i, b + i,
                                       k + i, relu_y ? relu_y + o + i : NULL,
                                       dres ? dres + o + i : NULL);
            BN_FN(bn_stream_store)(dx + o + i, buf, n);
        }
    }
    bn_stream_fence();
}

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

#if BN_F32
/* Tile rows of any width with coefficients already in float32 (bn_f32_norm_coefs /
 * bn_f32_grad_coefs, called once per operation by the Cython layer, which runs the float64
 * row loop instead when they report a coefficient out of range). */
BN_INLINE void bn_row_normalize_f32c_ep(const float *x, float *y, npy_intp nrows,
                                        npy_intp ncols, const float *mh, const float *ml,
                                        const float *s, const float *b, const float *res,
                                        int act, int stream)
{
    float buf[BN_STREAM_BUF];
    for (npy_intp r = 0; r < nrows; r++) {
        const npy_intp o = r * ncols;
        if (!stream) {
            bn_normalize_row_span_f32(x + o, y + o, ncols, mh, ml, s, b, res ? res + o : NULL,
                                      act);
            continue;
        }
        for (npy_intp i = 0; i < ncols; i += BN_STREAM_BUF) {
            const npy_intp n = ncols - i < BN_STREAM_BUF ? ncols - i : BN_STREAM_BUF;
            bn_normalize_row_span_f32(x + o + i, buf, n, mh + i, ml + i, s + i, b + i,
                                      res ? res + o + i : NULL, act);
            bn_stream_store_f32(y + o + i, buf, n);
        }
    }
    if (stream)
        bn_stream_fence();
}

BN_TARGET static void row_normalize_f32c(const float *x, float *y, npy_intp nrows,
                                         npy_intp ncols, const float *mh, const float *ml,
                                         const float *s, const float *b, const float *res,
                                         int act, int stream)
{
#define BN_CALL(R, A) bn_row_normalize_f32c_ep(x, y, nrows, ncols, mh, ml, s, b, R, A, stream)
    BN_FWD_DISPATCH(BN_CALL);
#undef BN_CALL
}

BN_INLINE void bn_row_grad_input_f32c_ep(const float *dy, const float *x, float *dx,
                                         npy_intp nrows, npy_intp ncols, const float *ah,
                                         const float *al, const float *kf, const float *mh,
                                         const float *ml, const float *w, const float *relu_y,
                                         float *dres, int stream)
{
    float buf[BN_STREAM_BUF];
    for (npy_intp r = 0; r < nrows; r++) {
        const npy_intp o = r * ncols;
        if (!stream) {
            bn_grad_input_row_span_f32(dy + o, x + o, dx + o, ncols, ah, al, kf, mh, ml, w,
                                       relu_y ? relu_y + o : NULL, dres ? dres + o : NULL);
            continue;
        }
        for (npy_intp i = 0; i < ncols; i += BN_STREAM_BUF) {
            const npy_intp n = ncols - i < BN_STREAM_BUF ? ncols - i : BN_STREAM_BUF;
            bn_grad_input_row_span_f32(dy + o + i, x + o + i, buf, n, ah + i, al + i, kf + i,
                                       mh + i, ml + i, w + i,
                                       relu_y ? relu_y + o + i : NULL,
                                       dres ? dres + o + i : NULL);
            bn_stream_store_f32(dx + o + i, buf, n);
        }
    }
    if (stream)
        bn_stream_fence();
}

BN_TARGET static void row_grad_input_f32c(const float *dy, const float *x, float *dx,
                                          npy_intp nrows, npy_intp ncols, const float *ah,
                                          const float *al, const float *kf, const float *mh,
                                          const float *ml, const float *w,
                                          const float *relu_y, float *dres, int stream)
{
#define BN_CALL(R, D) \
    bn_row_grad_input_f32c_ep(dy, x, dx, nrows, ncols, ah, al, kf, mh, ml, w, R, D, stream)
    BN_BWD_DISPATCH(BN_CALL);
#undef BN_CALL
}
#endif

/* Backward sums of the fused ReLU: run_grad_sums and tile_grad_sums with dy replaced by
 * g = (relu_y > 0 ? dy : +0), in the same lanes and the same order, so they give the bits of
 * the plain sums of np.where(relu_y > 0, dy, 0).  (Twins of the plain sums, kept apart from
 * them; a change to the arithmetic of one belongs in the other.) */
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
            gm[j] = BN_RELU_MASK((g)[j], (y)[j]);                                            \
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
            BN_VLOAD(g0, gm);
            BN_VLOAD(g1, gm + 4);
            BN_VLOAD(g2, gm + 8);
            BN_VLOAD(g3, gm + 12);
            BN_VLOAD(v0, v + i);
            BN_VLOAD(v1, v + i + 4);
            BN_VLOAD(v2, v + i + 8);
            BN_VLOAD(v3, v + i + 12);
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
                const double gj = (double)BN_RELU_MASK(g[i + j], yy[i + j]);
                a[j] += gj;
                b[j] += gj * ((double)v[i + j] - mean);
            }
#endif
        }
        for (; i < len; i++) {
            const double gi = (double)BN_RELU_MASK(g[i], yy[i]);
            tail_a += gi;
            tail_b += gi * ((double)v[i] - mean);
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

BN_TARGET static void BN_FN(tile_grad_sums_masked)(const BN_T *dy, const BN_T *x,
                                                   const BN_T *relu_y, npy_intp nrows,
                                                   npy_intp ncols, npy_intp stride,
                                                   const double *mean, double *sum_dy,
                                                   double *sum_dy_xmu)
{
    npy_intp r = 0;
    for (npy_intp c = 0; c < ncols; c++) {
        sum_dy[c] = 0.0;
        sum_dy_xmu[c] = 0.0;
    }
    const int by4 = BN_FN(tile_by4)(ncols, stride);
    for (; by4 && r + 4 <= nrows; r += 4) {
        const BN_T *g0 = dy + r * stride, *g1 = g0 + stride, *g2 = g1 + stride, *g3 = g2 + stride;
        const BN_T *v0 = x + r * stride, *v1 = v0 + stride, *v2 = v1 + stride, *v3 = v2 + stride;
        const BN_T *y0 = relu_y + r * stride, *y1 = y0 + stride, *y2 = y1 + stride,
                   *y3 = y2 + stride;
        for (npy_intp c = 0; c < ncols; c++) {
            const double m = mean[c];
            const double a = (double)BN_RELU_MASK(g0[c], y0[c]);
            const double b = (double)BN_RELU_MASK(g1[c], y1[c]);
            const double e = (double)BN_RELU_MASK(g2[c], y2[c]);
            const double f = (double)BN_RELU_MASK(g3[c], y3[c]);
            sum_dy[c] += (a + b) + (e + f);
            sum_dy_xmu[c] += (a * ((double)v0[c] - m) + b * ((double)v1[c] - m))
                             + (e * ((double)v2[c] - m) + f * ((double)v3[c] - m));
        }
    }
    for (; r < nrows; r++) {
        const BN_T *g = dy + r * stride, *v = x + r * stride, *yy = relu_y + r * stride;
        for (npy_intp c = 0; c < ncols; c++) {
            const double gc = (double)BN_RELU_MASK(g[c], yy[c]);
            sum_dy[c] += gc;
            sum_dy_xmu[c] += gc * ((double)v[c] - mean[c]);
        }
    }
}

#undef BN_FWD_DISPATCH
#undef BN_BWD_DISPATCH
#undef BN_FORWARD_EPILOGUE
#undef BN_BACKWARD_PROLOGUE

#undef BN_IVDEP
