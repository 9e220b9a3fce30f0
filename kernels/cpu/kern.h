/* kern.h - CPU tensor operations on float32 row-major arrays.
 *
 * Every operation here has a plain C definition; faster variants (SIMD,
 * BLAS) are tested against it.  Shapes are passed explicitly; nothing here
 * allocates. */
#ifndef DM_KERN_H
#define DM_KERN_H

#include <stddef.h>
#include <stdint.h>

/* y[M,N] = x[M,K] * W[N,K]^T (+ bias[N] if non-NULL).  W is a PyTorch
 * Linear weight ([out, in]).  The streaming small-M kernel for a few rows,
 * kern_gemm_nt for more. */
void kern_linear(const float *x, int M, int K, const float *W, const float *bias, int N, float *y);
/* Reference twin of kern_linear: triple loop, double accumulation. */
void kern_linear_ref(const float *x, int M, int K, const float *W, const float *bias, int N,
                     float *y);

/* Row-major GEMMs on oneDNN's sgemm (its threads are the OpenMP team;
 * called inside a parallel region it runs on the calling thread), BLAS
 * sgemm should oneDNN refuse.
 * C[M,N] = alpha * A[M,K] * B^T (B is [N,K]) + beta * C, leading dims given. */
void kern_gemm_nt(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc);
/* C[M,N] = alpha * A[M,K] * B[K,N] + beta * C. */
void kern_gemm_nn(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc);
/* C[M,N] = alpha * A^T * B + beta * C (A is [K,M], B [K,N]). */
void kern_gemm_tn(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc);

/* LayerNorm over the last dim (n) of each of `rows` rows, biased variance,
 * as torch.nn.LayerNorm: y = (x - mean) / sqrt(var + eps) * g + b.
 * x and y may alias. */
void kern_layernorm(const float *x, int rows, int n, const float *g, const float *b, float eps,
                    float *y);

/* Exact GELU (erf form), in place. */
void kern_gelu(float *x, size_t n);

/* Row softmax in place over n columns (max-subtracted, as torch). */
void kern_softmax_rows(float *x, int rows, int n);
/* The same for rows of finite scores (no -inf masks), with a vectorised
 * exponential: within 2e-7 relative of kern_softmax_rows. */
void kern_softmax_rows_finite(float *x, int rows, int n);

/* y += x */
void kern_add(float *y, const float *x, size_t n);

/* Small-M path of kern_linear (M <= 16 rows: the decoding step): streams
 * each weight row once for all rows, threads split the output columns. */
int kern_small_m(int M);
void kern_linear_small(const float *x, int M, int K, const float *W, const float *bias, int N,
                       float *y);

/* bfloat16 weights (W [N, K], round-to-nearest-even of float32) with
 * float32 activations, bias and output, float32 accumulation.
 * kern_linear_bf16 takes the small-M path (AVX512-BF16 vdpbf16ps: the
 * activations are rounded to bfloat16 on the fly, two products per lane
 * accumulated in float32) for M <= 16, else converts blocks of weight rows
 * to float32 and runs sgemm on them (the activations stay float32).
 * kern_linear_bf16_ref is the plain twin of the small-M path: activations
 * rounded to bfloat16, products accumulated in double. */
void kern_linear_bf16(const float *x, int M, int K, const uint16_t *W, const float *bias, int N,
                      float *y);
void kern_linear_small_bf16(const float *x, int M, int K, const uint16_t *W, const float *bias,
                            int N, float *y);
void kern_linear_bf16_ref(const float *x, int M, int K, const uint16_t *W, const float *bias,
                          int N, float *y);
/* dst[i] = bfloat16 of src[i], round to nearest even (dm_f32_to_bf16). */
void kern_to_bf16(const float *src, uint16_t *dst, size_t n);

/* The conversions of one element, inline for the kernels' inner loops
 * (dm_bf16_to_f32 / dm_f32_to_bf16 of tensorfile.h are the definitions;
 * the kernel tests check these against them). */
static inline float kern_bf16_f32(uint16_t h)
{
    union { uint32_t u; float f; } v = {(uint32_t)h << 16};
    return v.f;
}
static inline uint16_t kern_f32_bf16(float f)
{
    union { float f; uint32_t u; } v = {f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u) /* NaN stays NaN */
        return (uint16_t)((v.u >> 16) | 0x40);
    return (uint16_t)((v.u + 0x7fff + ((v.u >> 16) & 1)) >> 16);
}

/* nq query rows (stride ldq) against the same S cached key/value rows,
 * all H heads at once (K and V rows of stride ld), each cache streamed
 * once for all rows: scores gives probs [nq, H, S] (softmax of q.k),
 * values gives ctx rows (stride ldc) [H*hd] = probs . V.  Each row's
 * result is the same whatever nq is. */
void kern_attend_scores(const float *q, int nq, int ldq, const float *K, int S, int H, int hd,
                        int ld, float *probs);
void kern_attend_values(const float *probs, int nq, const float *V, int S, int H, int hd, int ld,
                        float *ctx, int ldc);

/* Team forms for a decoding step run as one parallel region: every thread
 * of the team calls them.  kern_linear_team splits the N outputs of the
 * small-M linear among the team: row m of the result goes to y[m] (M row
 * pointers), from x (float32 W) or from xb (x rounded to bfloat16, for Wb;
 * W NULL), each element the same dot product kern_linear_small /
 * kern_linear_small_bf16 computes; flags: KERN_ACC adds to y instead of
 * storing, KERN_GELU applies the exact GELU first, KERN_NOWAIT skips the
 * closing barrier.  kern_attend_head is one head of attention for nq query
 * rows against S shared keys/values (K, V at the head's offset, row stride
 * ld, float32 or bfloat16 when bf16): the query scaled by `scale`, its
 * softmax scores in scores [nq, S], the context in ctx rows (stride ldc);
 * one thread does a head; nq <= 16, hd <= 256.  Each key and value row
 * is read once for all nq rows. */
enum { KERN_ACC = 1, KERN_GELU = 2, KERN_NOWAIT = 4 };
void kern_linear_team(const float *x, const uint16_t *xb, int M, int K, const float *W,
                      const uint16_t *Wb, const float *bias, int N, float *const *y, int flags);
/* kern_linear_team's output rows j0 .. j1-1 on the calling thread alone,
 * each the same dot product (for a thread that then uses only those rows:
 * an attention head's own q, k and v); KERN_NOWAIT means nothing here. */
void kern_linear_part(const float *x, const uint16_t *xb, int M, int K, const float *W,
                      const uint16_t *Wb, const float *bias, int j0, int j1, float *const *y,
                      int flags);
void kern_attend_head(const float *q, int nq, int ldq, float scale, const void *K, const void *V,
                      int bf16, int S, int hd, int ld, float *scores, float *ctx, int ldc);
/* kern_attend_head for a page's cross-attention, whose keys are kept
 * transposed: Kt is the head's [hd, S] (row stride ldk), V its value rows
 * (row stride ldv); float32 or bfloat16 (bf16) both.  Any nq (16 rows at a
 * time), hd <= 256. */
void kern_cross_head(const float *q, int nq, int ldq, float scale, const void *Kt, int ldk,
                     const void *V, int ldv, int bf16, int S, int hd, float *scores, float *ctx,
                     int ldc);
/* Sums of exp((x[i] - m) * s) over i < n (m at least the largest x, so
 * nothing overflows), in double: over all i into *all, and over the i
 * with kept[i] == 0 into *rest (0 when kept is NULL).  The exponential is
 * the vectorised one of the softmax (about 1 ulp in float); terms below
 * e^-87.3 (float's smallest normal) count as 0. */
void kern_sum_exp(const float *x, int n, float m, float s, const unsigned char *kept,
                  double *all, double *rest);
/* The sum of exp(x[i] - m) over i < n in double precision, terms and sum
 * (the log-softmax of a generated token; m at least every x[i]): the
 * vectorised exponential is within about an ulp of libm's exp, so the sum
 * agrees with a scalar loop over exp to ~1e-14 relative (the order of the
 * additions).  -inf terms are 0; a NaN makes the sum NaN, as with exp. */
double kern_sum_exp_f64(const float *x, int n, float m);
/* The first index of the largest value of a row (torch.argmax on rows
 * without NaN); NaNs are never the largest, unless x[0] is one: then 0. */
int kern_argmax(const float *x, int n);
/* y (cols x rows, row stride rows) = x^T (x rows x cols, row stride cols),
 * into float32 y, or rounded to bfloat16 into yb when y is NULL. */
void kern_transpose(const float *x, int rows, int cols, float *y, uint16_t *yb);
/* Rows x [S, H*hd] regrouped head by head, y [H, S, hd] (float32, or
 * rounded to bfloat16 into yb when y is NULL). */
void kern_heads_major(const float *x, int S, int H, int hd, float *y, uint16_t *yb);

/* Number of threads the GEMM library uses; set once at start-up.  It is
 * the one count: OpenBLAS and OpenMP (the decoding step's parallel
 * region, the small-M kernels) are both told it. */
void kern_set_threads(int n);
int kern_get_threads(void);
/* The CPUs this process may run on (its affinity mask: what mpirun's or
 * Slurm's binding left it), the default thread count of the commands. */
int kern_cpu_count(void);

#endif
