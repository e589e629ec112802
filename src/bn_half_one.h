/* One half-type instantiation of the loops (bn_half_inst.h includes it once per type and
 * instruction set; no include guard).  The includer defines BN_T, BN_FN and the conversions
 * BN_H_TO32, BN_H_FROM32, BN_H_POS, BN_H_MASK, BN_H_VLOAD4, BN_H_LOAD8 and BN_H_STORE8; they
 * are undefined at the end. */
BN_INLINE bn_vf8 BN_FN(load8)(const BN_T *p) { return BN_H_LOAD8(p); }
BN_INLINE void BN_FN(store8)(BN_T *p, bn_vf8 v) { BN_H_STORE8(p, v); }
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
#undef BN_H_LOAD8
#undef BN_H_STORE8
