/* One half-type instantiation of the loops (bn_half_inst.h includes it once per type and
 * instruction set; no include guard).  The includer defines BN_T, BN_FN and the conversions
 * BN_H_TO32, BN_H_FROM32, BN_H_POS, BN_H_MASK, BN_H_VLOAD4, BN_H_LOAD8 and BN_H_STORE8, and
 * optionally BN_H_LOAD16 / BN_H_STORE16 (sixteen values, in order, as two vectors) and
 * BN_H_LOAD16X / BN_H_STORE16X (the same in an order of their own), and BN_H_VLOAD16
 * (sixteen values as four vectors of doubles, in order) and BN_H_ROUND8 (eight values
 * rounded to the type and widened back, in registers); they are undefined at the end.
 * The vector loads and stores exist where bn_half.h has vector types (GCC and clang). */
#ifdef BN_HALF_VECTORS
BN_INLINE bn_vf8 BN_FN(load8)(const BN_T *p) { return BN_H_LOAD8(p); }
BN_INLINE void BN_FN(store8)(BN_T *p, bn_vf8 v) { BN_H_STORE8(p, v); }
/* v rounded to the half type and widened back: in registers where the type has it
 * (BN_H_ROUND8), else through memory; the same bits either way. */
BN_INLINE bn_vf8 BN_FN(round8)(bn_vf8 v)
{
#ifdef BN_H_ROUND8
    return BN_H_ROUND8(v);
#else
    BN_T t[8];
    BN_H_STORE8(t, v);
    return BN_H_LOAD8(t);
#endif
}
#ifndef BN_H_LOAD16
#define BN_H_LOAD16(p, a, b) (*(a) = BN_H_LOAD8(p), *(b) = BN_H_LOAD8((p) + 8))
#define BN_H_STORE16(p, a, b) (BN_H_STORE8(p, a), BN_H_STORE8((p) + 8, b))
#endif
#ifndef BN_H_LOAD16X
#define BN_H_LOAD16X BN_H_LOAD16
#define BN_H_STORE16X BN_H_STORE16
#endif
/* Sixteen values as two vectors: in order (a = p[0..7], b = p[8..15]), or, with x set, in an
 * order of the type's own, the same for every array (for loops whose values all take the same
 * coefficients).  x is a constant at each call. */
BN_INLINE void BN_FN(load16)(const BN_T *p, bn_vf8 *a, bn_vf8 *b, int x)
{
    if (x)
        BN_H_LOAD16X(p, a, b);
    else
        BN_H_LOAD16(p, a, b);
}
BN_INLINE void BN_FN(store16)(BN_T *p, bn_vf8 a, bn_vf8 b, int x)
{
    if (x)
        BN_H_STORE16X(p, a, b);
    else
        BN_H_STORE16(p, a, b);
}
#endif
BN_INLINE void BN_FN(bn_stream_store)(BN_T *dst, const BN_T *src, npy_intp n)
{
    bn_stream_store_u16((uint16_t *)(void *)dst, (const uint16_t *)(const void *)src, n);
}
#include "bn_elementwise_impl.h"
#include "bn_passes_impl.h"
#include "bn_stats_impl.h"
#undef BN_T
#undef BN_FN
#undef BN_H_TO32
#undef BN_H_FROM32
#undef BN_H_POS
#undef BN_H_MASK
#undef BN_H_VLOAD4
#undef BN_H_VLOAD16
#undef BN_H_ROUND8
#undef BN_H_LOAD8
#undef BN_H_STORE8
#undef BN_H_LOAD16
#undef BN_H_STORE16
#undef BN_H_LOAD16X
#undef BN_H_STORE16X
