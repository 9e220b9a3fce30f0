/* kern_gemm.h - the encoder's GEMM backend: a linear layer with pre-packed
 * weights and a fused epilogue,
 *
 *     y[M,N] (=|+=) act(x[M,K] * W[N,K]^T + bias)
 *
 * run by oneDNN's matmul primitive (brgemm kernels: AVX-512 for float32,
 * AVX512-BF16 for bfloat16), which measured fastest on the encoder's shapes
 * (docs/performance.md has the comparison with OpenBLAS, BLIS, libxsmm).
 *
 * Weights are reordered once into the primitive's blocked layout; the packed
 * form is one malloc'ed block (released with free()), so a model can keep it
 * with its other owned buffers.  In bfloat16 the weights are bf16 and the
 * activations are rounded to bf16 on the way in (round to nearest even);
 * products accumulate in float32 and y is float32.
 *
 * kern_gemm_ref is the plain C twin (double accumulation, the same bf16
 * rounding of both operands), the reference of the tests. */
#ifndef DM_KERN_GEMM_H
#define DM_KERN_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include "common/dm_error.h"

/* Epilogue flags of kern_gemm_run. */
enum {
    KG_GELU = 1, /* exact (erf) GELU after the bias */
    KG_ACC = 2,  /* y += result (else y = result) */
};

/* Pack W ([N, K] row-major, PyTorch Linear layout): float32 from w, or, when
 * bf16 is set, bfloat16 from wbf (or from w rounded to bf16 when wbf is
 * NULL).  *packed receives the block. */
int kern_gemm_pack(const float *w, const uint16_t *wbf, int N, int K, int bf16, void **packed,
                   DmErr *err);

/* Rows and columns the block was packed for, and its precision. */
void kern_gemm_packed_shape(const void *packed, int *N, int *K, int *bf16);

/* y (row stride ldy) = x (row stride ldx) * W^T + bias (NULL: none), with
 * the epilogue of flags.  xbf (M * K bf16 values, or NULL to allocate) is
 * the scratch of the bf16 activations; unused in float32. */
int kern_gemm_run(const void *packed, const float *x, int M, int ldx, const float *bias, int flags,
                  float *y, int ldy, uint16_t *xbf, DmErr *err);

/* The plain twin: W float32 [N, K] (or wbf when non-NULL), bf16 rounds x
 * and W to bfloat16 first. */
void kern_gemm_ref(const float *W, const uint16_t *wbf, int N, int K, int bf16, const float *x,
                   int M, int ldx, const float *bias, int flags, float *y, int ldy);

/* n floats to bfloat16, round to nearest even (dm_f32_to_bf16 of each). */
void kern_f32_to_bf16_n(const float *x, size_t n, uint16_t *y);

#endif
