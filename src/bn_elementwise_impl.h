/* Elementwise passes of bn_loops.h, a template body: included once per element type, BN_T =
 * float, double, bn_f16 or bn_bf16 (before the reductions of bn_stats_impl.h).  Runs and tile
 * rows are as in bn_stats_impl.h.  Values are read with BN_LD (to double) or BN_LDF (to
 * float) and written with BN_STD / BN_STF, which are plain conversions for float and double
 * and the widening and rounding of bn_half.h for the half types.
 *
 * Elementwise loops may run in place (y == x exactly); the Python layer never passes
 * partially overlapping buffers, so they carry no dependence between iterations.
 */

/* ---- Elementwise passes -------------------------------------------------------------------
 *
 * Forward and inference: y = (x - mean) * scale + shift.  Backward: dx = ((dy - a) - (x - mean)
 * * b) * k, with a = sum(dy)/m, b = invstd * dgamma / m and k = gamma * invstd (the closed form
 * of the design note with the per-channel factors hoisted).  The coefficients come in float64.
 * float64 data is computed in float64.  float32 data is computed in float32, 8 AVX2 lanes
 * instead of 4, when the coefficients are in range (bn_f32_bad, bn_loops.h), else in float64
 * and rounded once at the end, like float64 data.  Tile rows: the Cython layer converts the
 * coefficients of a row to float32 once per operation (elementwise.pxi f32_coefficients) and
 * calls row_normalize_c / row_grad_input_c for rows of every width, or the float64 row
 * loop for the whole pass when one coefficient is out of range.  (Converted here on every
 * call, for a segment of 4 to 16 rows, they cost about 7 cycles a column: more than wide rows
 * save, so row_normalize_ep still takes the float32 loop only up to BN_F32_ROW_COLS columns.)
 *
 * Error of the float32 forward.  A channel whose scale is finite and nonzero and whose shift
 * is at least 2^-27 |mean * scale| is computed around its zero crossing
 * z = fl(mean - fl(shift / scale)) (float64; bn_f32_norm_coefs in bn_loops.h), split into
 * z_h = fl(z) and z_l = fl(z - z_h) (z - z_h is exact in float64):
 *     y = fl(fl(fl(fl(x - z_h) - z_l) * fl(scale)) + 0).
 * u = 2^-24 (half an ulp of 1 in float32); Z = mean - shift / scale, D = x - Z and
 * y* = D * scale = (x - mean) * scale + shift are exact, with the float64 coefficients taken as
 * exact; |z - Z| <= 2^-52 (|mean| + |shift / scale|), two float64 roundings.
 * (1) d = fl(fl(x - z_h) - z_l) has |d - (x - z)| <= (2u + 6u^2) |x - z|, whatever the offset.
 *     Let e = z - z_h: x - z_h = (x - z) + e; |z_l - e| <= u |e| (the range of bn_loops.h
 *     keeps a nonzero e above 2^-113, a normal float); and since z_h is the float nearest z,
 *     |e| <= |x - z| for every float x.
 *     - When x - z_h is exact (Sterbenz: x and z_h of one sign and within a factor 2, the
 *       offset data case; or x or z_h zero; or a subnormal difference), the first subtraction
 *       adds nothing and the second rounds (x - z) + (e - z_l): u|x - z| + u(1 + u)|x - z|.
 *     - Otherwise (x far from z: outliers, small-magnitude data, z near zero),
 *       |x - z_h| >= |z_h| / 2 while |e| <= u |z_h|, so |e| <= 2u |x - z_h| and
 *       |x - z_h| <= |x - z| / (1 - 2u): the first subtraction errs by at most u |x - z|
 *       (1 + 3u), z_l is about 2u^2 |x - z| or less off e, and the second subtraction rounds
 *       once: 2u |x - z| again, to first order.
 *     The split carries the accuracy, not Sterbenz alone: fl(x - fl(z)) would be off by up
 *     to u |z| (0.06 at an offset of 1e6).
 * (2) Times fl(scale) (u) and rounded (u), and the + 0 exact:
 *         |y - y*| <= (4u + O(u^2)) |y*| + 2^-51 (|mean * scale| + |shift|),
 *     the last term from z - Z.  At most four half-ulps of |y*| itself, where the float64 loop
 *     gives one: also where (x - mean) * scale cancels the shift and y* is near 0, which the
 *     plain form below would leave with the absolute error of rounding the shift.  Gradual
 *     underflow adds at most 2^-150 (the product), and an output within the bound of the
 *     overflow threshold may round to inf instead of FLT_MAX.
 *     With |mean * scale| <= 2^27 |shift| that last term is at most 1.01 u |shift|: never
 *     more than the plain form's shift term below.
 * (3) Any other channel (scale zero, infinite or out of range, z out of the split's range, or
 *     a shift below 2^-27 |mean * scale|, where z's float64 rounding could exceed the
 *     rounding of the shift: y* is then (x - mean) * scale but for a shift below its
 *     rounding errors, and no cancellation arises) takes the plain form, the mean split as z
 *     was, fl(shift) added and the sum rounded:
 *         |y - y*| <= u (|y*| + 4 |t| + |shift|) + O(u^2)  <=  5u (|y*| + |shift|),
 *     with t = (x - mean) * scale and |t| <= |y*| + |shift|; a zero scale gives the shift
 *     exactly (finite x).
 * What the tests ask: tests/test_accuracy.py (float32 1e4..1e6 + N(0, 1), every layout) wants
 * y within 1e-5 with shift 0 and |y| < 6: the bound is 4u * 6 = 1.4e-6; and, with shifts that
 * cancel, 4u |y*| plus 2^-50 of the terms.  The reference, functional, parity and fuzz tests
 * allow OUTPUT_RTOL = 2e-6 = 33.5u of float32 relative plus 33.5u of the largest |y*| absolute,
 * far above either bound.
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

/* LD / ST: the load and store conversions of the loop's arithmetic (BN_LDF and BN_STF in the
 * float32 loops, BN_LD and BN_STD in the float64 ones).  The residual is added to v rounded to
 * BN_T, and the sum rounded to BN_T, before the ReLU: for float and double the rounding of a
 * value already in BN_T is nothing and LD(ST(a) + ...) rounds as BN_T arithmetic does. */
#define BN_FORWARD_EPILOGUE(v, res, act, i, LD, ST)                                          \
    do {                                                                                     \
        if (res)                                                                             \
            (v) = LD(ST(LD(ST(v)) + LD((res)[i])));                                          \
        if ((act) && (v) < 0)                                                                \
            (v) = 0;                                                                         \
    } while (0)

#define BN_BACKWARD_PROLOGUE(g, relu_y, dres, i, ST)                                         \
    do {                                                                                     \
        if (relu_y)                                                                          \
            (g) = BN_ZERO_UNLESS((g), BN_POS((relu_y)[i]));                                  \
        if (dres)                                                                            \
            (dres)[i] = ST(g);                                                               \
    } while (0)

#if BN_LOWP
#if BN_HALF && defined(BN_HALF_VECTORS)
/* Half types: sixteen values a step in two float32 vectors (load16 / store16 of
 * bn_half_one.h; in a channel's run, where every value takes the same coefficients, in the
 * type's own order), then eight (bn_half.h's loads and stores), then the scalar loop; the
 * same float32 operations on each value, so the same bits whatever the step. */
#ifndef BN_VF8
#define BN_VF8(s) ((bn_vf8){(s), (s), (s), (s), (s), (s), (s), (s)})
#endif
/* The forward's epilogue on a vector: r, when given, is the residual's values in v's order. */
BN_INLINE bn_vf8 BN_FN(epilogue_v)(bn_vf8 v, const bn_vf8 *r, int act)
{
    if (r)
        v = BN_FN(round8)(BN_FN(round8)(v) + *r);
    if (act)
        v = bn_vu8_as_f32(bn_vsel((bn_vi8)(v < BN_VF8(0.0f)), BN_VU8(0u), bn_vf8_bits(v)));
    return v;
}

BN_INLINE bn_vf8 BN_FN(epilogue8)(bn_vf8 v, const BN_T *res, int act)
{
    bn_vf8 r;
    if (res)
        r = BN_FN(load8)(res);
    return BN_FN(epilogue_v)(v, res ? &r : NULL, act);
}

/* Sixteen values as load16 gives them (two vectors; x: in its own order). */
BN_INLINE void BN_FN(epilogue16)(bn_vf8 *a, bn_vf8 *b, const BN_T *res, int act, int x)
{
    bn_vf8 ra, rb;
    if (res)
        BN_FN(load16)(res, &ra, &rb, x);
    *a = BN_FN(epilogue_v)(*a, res ? &ra : NULL, act);
    *b = BN_FN(epilogue_v)(*b, res ? &rb : NULL, act);
}

/* The backward's prologue on a vector: y, when given, is the ReLU output's values in g's order. */
BN_INLINE bn_vf8 BN_FN(prologue_v)(bn_vf8 g, const bn_vf8 *y)
{
    if (y)
        g = bn_vu8_as_f32(bn_vsel((bn_vi8)(*y > BN_VF8(0.0f)), bn_vf8_bits(g), BN_VU8(0u)));
    return g;
}

BN_INLINE bn_vf8 BN_FN(prologue8)(bn_vf8 g, const BN_T *relu_y, BN_T *dres)
{
    bn_vf8 y;
    if (relu_y)
        y = BN_FN(load8)(relu_y);
    g = BN_FN(prologue_v)(g, relu_y ? &y : NULL);
    if (dres)
        BN_FN(store8)(dres, g);
    return g;
}

BN_INLINE void BN_FN(prologue16)(bn_vf8 *ga, bn_vf8 *gb, const BN_T *relu_y, BN_T *dres,
                                 int x)
{
    bn_vf8 ya, yb;
    if (relu_y)
        BN_FN(load16)(relu_y, &ya, &yb, x);
    *ga = BN_FN(prologue_v)(*ga, relu_y ? &ya : NULL);
    *gb = BN_FN(prologue_v)(*gb, relu_y ? &yb : NULL);
    if (dres)
        BN_FN(store16)(dres, *ga, *gb, x);
}
#define BN_SPAN8 1
#else
#define BN_SPAN8 0
#endif

BN_INLINE void BN_FN(normalize_span_lp)(const BN_T *x, BN_T *y, npy_intp len, float mh,
                                        float ml, float s, float b, const BN_T *res, int act)
{
    npy_intp i = 0;
#if BN_SPAN8
    for (; i + 16 <= len; i += 16) {
        bn_vf8 va, vb;
        BN_FN(load16)(x + i, &va, &vb, 1);
        va = ((va - BN_VF8(mh)) - BN_VF8(ml)) * BN_VF8(s) + BN_VF8(b);
        vb = ((vb - BN_VF8(mh)) - BN_VF8(ml)) * BN_VF8(s) + BN_VF8(b);
        BN_FN(epilogue16)(&va, &vb, res ? res + i : NULL, act, 1);
        BN_FN(store16)(y + i, va, vb, 1);
    }
    for (; i + 8 <= len; i += 8) {
        bn_vf8 v = ((BN_FN(load8)(x + i) - BN_VF8(mh)) - BN_VF8(ml)) * BN_VF8(s) + BN_VF8(b);
        BN_FN(store8)(y + i, BN_FN(epilogue8)(v, res ? res + i : NULL, act));
    }
#endif
    BN_IVDEP
    for (; i < len; i++) {
        float v = ((BN_LDF(x[i]) - mh) - ml) * s + b;
        BN_FORWARD_EPILOGUE(v, res, act, i, BN_LDF, BN_STF);
        y[i] = BN_STF(v);
    }
}

BN_INLINE void BN_FN(normalize_row_span_lp)(const BN_T *x, BN_T *y, npy_intp ncols,
                                            const float *mh, const float *ml, const float *s,
                                            const float *b, const BN_T *res, int act)
{
    npy_intp c = 0;
#if BN_SPAN8
    for (; c + 16 <= ncols; c += 16) {
        bn_vf8 v[2];
        BN_FN(load16)(x + c, &v[0], &v[1], 0);
        for (int h = 0; h < 2; h++) {
            const npy_intp j = c + 8 * h;
            v[h] = ((v[h] - bn_vf8_loadu(mh + j)) - bn_vf8_loadu(ml + j)) * bn_vf8_loadu(s + j)
                   + bn_vf8_loadu(b + j);
        }
        BN_FN(epilogue16)(&v[0], &v[1], res ? res + c : NULL, act, 0);
        BN_FN(store16)(y + c, v[0], v[1], 0);
    }
    for (; c + 8 <= ncols; c += 8) {
        bn_vf8 m_h, m_l, sc, sh;
        memcpy(&m_h, mh + c, sizeof m_h);
        memcpy(&m_l, ml + c, sizeof m_l);
        memcpy(&sc, s + c, sizeof sc);
        memcpy(&sh, b + c, sizeof sh);
        bn_vf8 v = ((BN_FN(load8)(x + c) - m_h) - m_l) * sc + sh;
        BN_FN(store8)(y + c, BN_FN(epilogue8)(v, res ? res + c : NULL, act));
    }
#endif
    BN_IVDEP
    for (; c < ncols; c++) {
        float v = ((BN_LDF(x[c]) - mh[c]) - ml[c]) * s[c] + b[c];
        BN_FORWARD_EPILOGUE(v, res, act, c, BN_LDF, BN_STF);
        y[c] = BN_STF(v);
    }
}

BN_INLINE void BN_FN(grad_input_span_lp)(const BN_T *dy, const BN_T *x, BN_T *dx, npy_intp len,
                                         float ah, float al, float k, float mh, float ml,
                                         float w, const BN_T *relu_y, BN_T *dres)
{
    npy_intp i = 0;
#if BN_SPAN8
    for (; i + 16 <= len; i += 16) {
        bn_vf8 g[2], v[2];
        BN_FN(load16)(dy + i, &g[0], &g[1], 1);
        BN_FN(prologue16)(&g[0], &g[1], relu_y ? relu_y + i : NULL, dres ? dres + i : NULL, 1);
        BN_FN(load16)(x + i, &v[0], &v[1], 1);
        for (int h = 0; h < 2; h++)
            v[h] = ((g[h] - BN_VF8(ah)) - BN_VF8(al)) * BN_VF8(k)
                   - ((v[h] - BN_VF8(mh)) - BN_VF8(ml)) * BN_VF8(w);
        BN_FN(store16)(dx + i, v[0], v[1], 1);
    }
    for (; i + 8 <= len; i += 8) {
        const bn_vf8 g = BN_FN(prologue8)(BN_FN(load8)(dy + i), relu_y ? relu_y + i : NULL,
                                          dres ? dres + i : NULL);
        BN_FN(store8)(dx + i, ((g - BN_VF8(ah)) - BN_VF8(al)) * BN_VF8(k)
                                  - ((BN_FN(load8)(x + i) - BN_VF8(mh)) - BN_VF8(ml))
                                        * BN_VF8(w));
    }
#endif
    BN_IVDEP
    for (; i < len; i++) {
        float g = BN_LDF(dy[i]);
        BN_BACKWARD_PROLOGUE(g, relu_y, dres, i, BN_STF);
        dx[i] = BN_STF(((g - ah) - al) * k - ((BN_LDF(x[i]) - mh) - ml) * w);
    }
}

BN_INLINE void BN_FN(grad_input_row_span_lp)(const BN_T *dy, const BN_T *x, BN_T *dx,
                                             npy_intp ncols, const float *ah, const float *al,
                                             const float *k, const float *mh, const float *ml,
                                             const float *w, const BN_T *relu_y, BN_T *dres)
{
    npy_intp c = 0;
#if BN_SPAN8
    for (; c + 16 <= ncols; c += 16) {
        bn_vf8 g[2], v[2];
        BN_FN(load16)(dy + c, &g[0], &g[1], 0);
        BN_FN(prologue16)(&g[0], &g[1], relu_y ? relu_y + c : NULL, dres ? dres + c : NULL, 0);
        BN_FN(load16)(x + c, &v[0], &v[1], 0);
        for (int h = 0; h < 2; h++) {
            const npy_intp j = c + 8 * h;
            v[h] = ((g[h] - bn_vf8_loadu(ah + j)) - bn_vf8_loadu(al + j)) * bn_vf8_loadu(k + j)
                   - ((v[h] - bn_vf8_loadu(mh + j)) - bn_vf8_loadu(ml + j)) * bn_vf8_loadu(w + j);
        }
        BN_FN(store16)(dx + c, v[0], v[1], 0);
    }
    for (; c + 8 <= ncols; c += 8) {
        bn_vf8 a_h, a_l, kv, m_h, m_l, wv;
        memcpy(&a_h, ah + c, sizeof a_h);
        memcpy(&a_l, al + c, sizeof a_l);
        memcpy(&kv, k + c, sizeof kv);
        memcpy(&m_h, mh + c, sizeof m_h);
        memcpy(&m_l, ml + c, sizeof m_l);
        memcpy(&wv, w + c, sizeof wv);
        const bn_vf8 g = BN_FN(prologue8)(BN_FN(load8)(dy + c), relu_y ? relu_y + c : NULL,
                                          dres ? dres + c : NULL);
        BN_FN(store8)(dx + c, ((g - a_h) - a_l) * kv - ((BN_FN(load8)(x + c) - m_h) - m_l) * wv);
    }
#endif
    BN_IVDEP
    for (; c < ncols; c++) {
        float g = BN_LDF(dy[c]);
        BN_BACKWARD_PROLOGUE(g, relu_y, dres, c, BN_STF);
        dx[c] = BN_STF(((g - ah[c]) - al[c]) * k[c] - ((BN_LDF(x[c]) - mh[c]) - ml[c]) * w[c]);
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
        double v = (BN_LD(x[i]) - mean) * scale + shift;
        BN_FORWARD_EPILOGUE(v, res, act, i, BN_LD, BN_STD);
        y[i] = BN_STD(v);
    }
}

BN_INLINE void BN_FN(normalize_row_span)(const BN_T *x, BN_T *y, npy_intp ncols,
                                         const double *mean, const double *scale,
                                         const double *shift, const BN_T *res, int act)
{
    BN_IVDEP
    for (npy_intp c = 0; c < ncols; c++) {
        double v = (BN_LD(x[c]) - mean[c]) * scale[c] + shift[c];
        BN_FORWARD_EPILOGUE(v, res, act, c, BN_LD, BN_STD);
        y[c] = BN_STD(v);
    }
}

BN_INLINE void BN_FN(grad_input_span)(const BN_T *dy, const BN_T *x, BN_T *dx, npy_intp len,
                                      double mean, double a, double b, double k,
                                      const BN_T *relu_y, BN_T *dres)
{
    BN_IVDEP
    for (npy_intp i = 0; i < len; i++) {
        double g = BN_LD(dy[i]);
        BN_BACKWARD_PROLOGUE(g, relu_y, dres, i, BN_STD);
        dx[i] = BN_STD(((g - a) - (BN_LD(x[i]) - mean) * b) * k);
    }
}

BN_INLINE void BN_FN(grad_input_row_span)(const BN_T *dy, const BN_T *x, BN_T *dx,
                                          npy_intp ncols, const double *mean, const double *a,
                                          const double *b, const double *k, const BN_T *relu_y,
                                          BN_T *dres)
{
    BN_IVDEP
    for (npy_intp c = 0; c < ncols; c++) {
        double g = BN_LD(dy[c]);
        BN_BACKWARD_PROLOGUE(g, relu_y, dres, c, BN_STD);
        dx[c] = BN_STD(((g - a[c]) - (BN_LD(x[c]) - mean[c]) * b[c]) * k[c]);
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
#if BN_LOWP
    float mh, ml, s, b;
    const int f32 = bn_f32_norm_coefs(&mean, &scale, &shift, 1, &mh, &ml, &s, &b);
#endif
    for (npy_intp i = 0; i < len; i += step) {
        const npy_intp n = len - i < step ? len - i : step;
        BN_T *dst = stream ? buf : y + i;
        const BN_T *r = res ? res + i : NULL;
#if BN_LOWP
        if (f32)
            BN_FN(normalize_span_lp)(x + i, dst, n, mh, ml, s, b, r, act);
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
#if BN_LOWP
    float mh[BN_F32_ROW_COLS], ml[BN_F32_ROW_COLS], s[BN_F32_ROW_COLS], b[BN_F32_ROW_COLS];
    if (ncols <= BN_F32_ROW_COLS && bn_f32_norm_coefs(mean, scale, shift, ncols, mh, ml, s, b)) {
        for (; r < nrows; r++) {
            const npy_intp o = r * ncols;
            BN_FN(normalize_row_span_lp)(x + o, stream ? buf : y + o, ncols, mh, ml, s, b,
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
#if BN_LOWP
    float ah, al, kf, mh, ml, w;
    const int f32 = bn_f32_grad_coefs(&mean, &a, &b, &k, 1, &ah, &al, &kf, &mh, &ml, &w);
#endif
    for (npy_intp i = 0; i < len; i += step) {
        const npy_intp n = len - i < step ? len - i : step;
        BN_T *dst = stream ? buf : dx + i;
        const BN_T *ry = relu_y ? relu_y + i : NULL;
        BN_T *dr = dres ? dres + i : NULL;
#if BN_LOWP
        if (f32)
            BN_FN(grad_input_span_lp)(dy + i, x + i, dst, n, ah, al, kf, mh, ml, w, ry, dr);
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
#if BN_LOWP
    float ah[BN_F32_ROW_COLS], al[BN_F32_ROW_COLS], kf[BN_F32_ROW_COLS], mh[BN_F32_ROW_COLS],
        ml[BN_F32_ROW_COLS], w[BN_F32_ROW_COLS];
    if (ncols <= BN_F32_ROW_COLS
        && bn_f32_grad_coefs(mean, a, b, k, ncols, ah, al, kf, mh, ml, w)) {
        for (; r < nrows; r++) {
            const npy_intp o = r * ncols;
            BN_FN(grad_input_row_span_lp)(dy + o, x + o, stream ? buf : dx + o, ncols, ah, al, kf,
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

#undef BN_FORWARD_EPILOGUE
#undef BN_BACKWARD_PROLOGUE
#undef BN_SPAN8
