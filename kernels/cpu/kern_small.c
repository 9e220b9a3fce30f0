/* kern_small.c - memory-bound kernels of the decoding step.
 *
 * A decoding step multiplies a handful of rows (one per question of the
 * page) by every weight matrix, and attends one new row to a long cached
 * sequence.  BLAS sgemm is slow there (it packs the weights for reuse that
 * never comes), so these kernels stream each weight row and each cached
 * key/value row through the cache exactly once for all rows, split across
 * threads.  Each output element is one dot product in a fixed order, so a
 * question's result does not depend on how many others share the step. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include "kernels/cpu/kern.h"

#define SMALL_MAX 16

/* How far ahead (in bytes of a weight row) the streaming linears ask for
 * their weights, and where.  A step's weights are read once, far from any
 * cache, as 4-row blocks whose rows are consumed side by side; with four
 * input rows per weight vector the loop also spends more time per byte
 * than the hardware prefetcher allows for.  Each row's request runs
 * S_PREFETCH_BYTES ahead and, near the row's end, moves on to the same row
 * of the next block (the 4 rows the thread streams next): asking beyond
 * the row instead lands in the block's own next row, already on its way,
 * and leaves the next block's rows to start cold.  Non-temporal: up to 4
 * input rows nothing is read twice; with more, a block is read again at
 * once for the next 4 rows (fc2-shaped matrices at 8 rows measured the
 * same with the T0 hint: 7.2-9.0 against 7.9-8.4 ms for 16 of them, 2
 * threads).  Measured on the LM head at 4 rows, one thread
 * (`build/dec_bench MODEL lm4 --threads 1`): 13.5-14.8 ms asking 2 KiB
 * ahead into L2 within the rows, 10.6-11.0 ms asking 1 KiB ahead
 * non-temporally within the rows, 8.2-8.9 ms moving on to the next block. */
#ifndef S_PREFETCH_BYTES
#define S_PREFETCH_BYTES 1024
#endif

#if defined(__AVX512F__)
/* Request for row r of the 4-row block at w (rows ldw_b bytes apart, each
 * row_b bytes long) as the loop reaches byte `at` of the rows. */
static inline __attribute__((always_inline)) void s_ask(const void *w, size_t ldw_b, int r,
                                                        size_t at, size_t row_b)
{
    size_t a = at + S_PREFETCH_BYTES;
    /* a hint never faults, even past the matrix; the address is computed
     * as an integer, which may point anywhere */
    uintptr_t p = (uintptr_t)w + (a < row_b ? r * ldw_b + a : (r + 4) * ldw_b + (a - row_b));
    _mm_prefetch((const char *)p, _MM_HINT_NTA);
}
#endif

/* Dot product of length K with 4 independent accumulator vectors; the
 * compiler vectorises the inner loop to the widest SIMD the build targets. */
static inline float s_dot(const float *restrict a, const float *restrict b, int K)
{
    enum { L = 16 };
    float acc[4][L];
    memset(acc, 0, sizeof acc);
    int k = 0;
    for (; k + 4 * L <= K; k += 4 * L)
        for (int u = 0; u < 4; u++)
            for (int i = 0; i < L; i++)
                acc[u][i] += a[k + u * L + i] * b[k + u * L + i];
    float s = 0.0f;
    for (int i = 0; i < L; i++)
        s += (acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i]);
    for (; k < K; k++)
        s += a[k] * b[k];
    return s;
}

int kern_small_m(int M) { return M >= 1 && M <= SMALL_MAX; }

#if defined(__AVX512F__)
/* Four weight rows against one input row: the input vector is loaded once
 * for the four rows, and the four horizontal sums come at the end. */
static inline void s_dot4(const float *restrict x, const float *restrict w, size_t ldw, int K,
                          float out[4])
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        for (int r = 0; r < 4; r++)
            s_ask(w, ldw * sizeof *w, r, k * sizeof *w, (size_t)K * sizeof *w);
        __m512 xv = _mm512_loadu_ps(x + k);
        a0 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w + k), a0);
        a1 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w + ldw + k), a1);
        a2 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w + 2 * ldw + k), a2);
        a3 = _mm512_fmadd_ps(xv, _mm512_loadu_ps(w + 3 * ldw + k), a3);
    }
    out[0] = _mm512_reduce_add_ps(a0);
    out[1] = _mm512_reduce_add_ps(a1);
    out[2] = _mm512_reduce_add_ps(a2);
    out[3] = _mm512_reduce_add_ps(a3);
    /* fused explicitly: whether the compiler contracts a * b + c depends
     * on where this is inlined, and every caller must get the same bits */
    for (; k < K; k++)
        for (int r = 0; r < 4; r++)
            out[r] = fmaf(x[k], w[r * ldw + k], out[r]);
}
#else
static inline void s_dot4(const float *restrict x, const float *restrict w, size_t ldw, int K,
                          float out[4])
{
    for (int r = 0; r < 4; r++)
        out[r] = s_dot(x, w + r * ldw, K);
}
#endif

void kern_linear_small(const float *x, int M, int K, const float *W, const float *bias, int N,
                       float *y)
{
    int nb = N / 4;
#pragma omp parallel for schedule(static)
    for (int jb = 0; jb < nb; jb++) {
        int j = 4 * jb;
        for (int m = 0; m < M; m++) {
            float o[4];
            s_dot4(x + (size_t)m * K, W + (size_t)j * K, (size_t)K, K, o);
            for (int r = 0; r < 4; r++)
                y[(size_t)m * N + j + r] = o[r] + (bias ? bias[j + r] : 0.0f);
        }
    }
    for (int j = 4 * nb; j < N; j++) /* the last N % 4 rows */
        for (int m = 0; m < M; m++) {
            float o[4];
            /* same arithmetic as the blocked rows: a 4-row call whose extra
             * rows repeat row j (their results are discarded) */
            const float *w = W + (size_t)j * K;
            s_dot4(x + (size_t)m * K, w, 0, K, o);
            y[(size_t)m * N + j] = o[0] + (bias ? bias[j] : 0.0f);
        }
}

void kern_attend_scores(const float *q, int nq, int ldq, const float *K, int S, int H, int hd,
                        int ld, float *probs)
{
    /* scores: one pass over the keys, every query row and head per key row */
#pragma omp parallel for schedule(static)
    for (int s = 0; s < S; s++) {
        const float *kr = K + (size_t)s * ld;
        for (int r = 0; r < nq; r++)
            for (int h = 0; h < H; h++)
                probs[((size_t)r * H + h) * S + s] = s_dot(q + (size_t)r * ldq + h * hd, kr + h * hd, hd);
    }
    /* rows in parallel: with one row per head and question, the softmax
     * (S exponentials each) is a large share of a decoding step */
#pragma omp parallel for schedule(static)
    for (int r = 0; r < nq * H; r++)
        kern_softmax_rows(probs + (size_t)r * S, 1, S);
}

void kern_attend_values(const float *probs, int nq, const float *V, int S, int H, int hd, int ld,
                        float *ctx, int ldc)
{
    /* context: one pass over the values; each thread sums a slice of the
     * keys into its own partial, partials added in thread order */
    int inner = H * hd;
    int nt = omp_get_max_threads();
    float *part = calloc((size_t)nt * nq * inner, sizeof(float));
    if (!part) { /* fall back to a single pass without partials */
        for (int r = 0; r < nq; r++)
            memset(ctx + (size_t)r * ldc, 0, (size_t)inner * sizeof(float));
        for (int s = 0; s < S; s++)
            for (int r = 0; r < nq; r++)
                for (int h = 0; h < H; h++) {
                    float p = probs[((size_t)r * H + h) * S + s];
                    const float *vr = V + (size_t)s * ld + h * hd;
                    for (int d = 0; d < hd; d++)
                        ctx[(size_t)r * ldc + h * hd + d] += p * vr[d];
                }
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        int s0 = (int)((long)S * t / n), s1 = (int)((long)S * (t + 1) / n);
        float *acc = part + (size_t)t * nq * inner;
        for (int s = s0; s < s1; s++) {
            const float *vr = V + (size_t)s * ld;
            for (int r = 0; r < nq; r++)
                for (int h = 0; h < H; h++) {
                    float p = probs[((size_t)r * H + h) * S + s];
                    float *a = acc + (size_t)r * inner + h * hd;
                    const float *v = vr + h * hd;
                    for (int d = 0; d < hd; d++)
                        a[d] += p * v[d];
                }
        }
    }
    for (int r = 0; r < nq; r++) {
        float *c = ctx + (size_t)r * ldc;
        memcpy(c, part + (size_t)r * inner, (size_t)inner * sizeof(float));
        for (int t = 1; t < nt; t++)
            kern_add(c, part + ((size_t)t * nq + r) * inner, (size_t)inner);
    }
    free(part);
}

/* ------------------------------------------------------ bfloat16 weights
 * The same streaming in bf16: half the bytes per weight.  The activation
 * rows are rounded to bfloat16 once per call; vdpbf16ps multiplies pairs
 * of bfloat16 and adds both products to a float32 lane. */

#if defined(__AVX512BF16__)
static inline void s_dot4_bf16(const uint16_t *restrict x, const uint16_t *restrict w, size_t ldw,
                               int K, float out[4])
{
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int k = 0;
    for (; k + 32 <= K; k += 32) {
        for (int r = 0; r < 4; r++)
            s_ask(w, ldw * sizeof *w, r, k * sizeof *w, (size_t)K * sizeof *w);
        __m512bh xv = (__m512bh)_mm512_loadu_si512(x + k);
        a0 = _mm512_dpbf16_ps(a0, xv, (__m512bh)_mm512_loadu_si512(w + k));
        a1 = _mm512_dpbf16_ps(a1, xv, (__m512bh)_mm512_loadu_si512(w + ldw + k));
        a2 = _mm512_dpbf16_ps(a2, xv, (__m512bh)_mm512_loadu_si512(w + 2 * ldw + k));
        a3 = _mm512_dpbf16_ps(a3, xv, (__m512bh)_mm512_loadu_si512(w + 3 * ldw + k));
    }
    out[0] = _mm512_reduce_add_ps(a0);
    out[1] = _mm512_reduce_add_ps(a1);
    out[2] = _mm512_reduce_add_ps(a2);
    out[3] = _mm512_reduce_add_ps(a3);
    for (; k < K; k++)
        for (int r = 0; r < 4; r++)
            out[r] += kern_bf16_f32(x[k]) * kern_bf16_f32(w[r * ldw + k]);
}
#else
static inline void s_dot4_bf16(const uint16_t *restrict x, const uint16_t *restrict w, size_t ldw,
                               int K, float out[4])
{
    for (int r = 0; r < 4; r++) {
        float s = 0.0f;
        for (int k = 0; k < K; k++)
            s += kern_bf16_f32(x[k]) * kern_bf16_f32(w[r * ldw + k]);
        out[r] = s;
    }
}
#endif

void kern_linear_small_bf16(const float *x, int M, int K, const uint16_t *W, const float *bias,
                            int N, float *y)
{
    uint16_t *xb = malloc((size_t)M * K * sizeof *xb);
    if (!xb) { /* no room for the rounded rows: the plain twin needs none */
        kern_linear_bf16_ref(x, M, K, W, bias, N, y);
        return;
    }
    for (size_t i = 0; i < (size_t)M * K; i++)
        xb[i] = kern_f32_bf16(x[i]);
    int nb = N / 4;
#pragma omp parallel for schedule(static)
    for (int jb = 0; jb < nb; jb++) {
        int j = 4 * jb;
        for (int m = 0; m < M; m++) {
            float o[4];
            s_dot4_bf16(xb + (size_t)m * K, W + (size_t)j * K, (size_t)K, K, o);
            for (int r = 0; r < 4; r++)
                y[(size_t)m * N + j + r] = o[r] + (bias ? bias[j + r] : 0.0f);
        }
    }
    for (int j = 4 * nb; j < N; j++) /* the last N % 4 rows, as in kern_linear_small */
        for (int m = 0; m < M; m++) {
            float o[4];
            s_dot4_bf16(xb + (size_t)m * K, W + (size_t)j * K, 0, K, o);
            y[(size_t)m * N + j] = o[0] + (bias ? bias[j] : 0.0f);
        }
    free(xb);
}

/* ------------------------------------------------------- team kernels
 * Work-sharing forms of the kernels above for a decoding step that runs
 * as one parallel region: every thread of the team calls them (orphaned
 * `omp for`), and only the barriers the data needs are paid. */

static inline float s_gelu1(float v) { return 0.5f * v * (1.0f + erff(v * (float)M_SQRT1_2)); }

#if defined(__AVX512F__) && defined(__AVX512BF16__)
/* Four weight rows against four input rows: each weight vector loaded once
 * for the four inputs (half the loads per multiply of s_dot4 called four
 * times), every output accumulated in exactly s_dot4's (s_dot4_bf16's)
 * order, so the results are the same bits. */
static void s_dot4x4(const float *x, const uint16_t *xb, size_t ldx, const float *w,
                     const uint16_t *wb, size_t ldw, int K, float out[4][4])
{
    __m512 a[4][4];
    for (int m = 0; m < 4; m++)
        for (int r = 0; r < 4; r++)
            a[m][r] = _mm512_setzero_ps();
    int k = 0;
    if (wb) {
        for (; k + 32 <= K; k += 32) {
            __m512bh wv[4];
            for (int r = 0; r < 4; r++) {
                s_ask(wb, ldw * sizeof *wb, r, k * sizeof *wb, (size_t)K * sizeof *wb);
                wv[r] = (__m512bh)_mm512_loadu_si512(wb + r * ldw + k);
                __asm__ volatile("" : "+v"(wv[r]));
            }
            for (int m = 0; m < 4; m++) {
                __m512bh xv = (__m512bh)_mm512_loadu_si512(xb + m * ldx + k);
                __asm__ volatile("" : "+v"(xv));
                for (int r = 0; r < 4; r++)
                    a[m][r] = _mm512_dpbf16_ps(a[m][r], xv, wv[r]);
            }
        }
    } else {
        for (; k + 16 <= K; k += 16) {
            __m512 wv[4];
            for (int r = 0; r < 4; r++) {
                s_ask(w, ldw * sizeof *w, r, k * sizeof *w, (size_t)K * sizeof *w);
                wv[r] = _mm512_loadu_ps(w + r * ldw + k);
                /* kept in a register: otherwise each is folded into the
                 * four multiply-adds as a memory operand, loaded 4 times */
                __asm__ volatile("" : "+v"(wv[r]));
            }
            for (int m = 0; m < 4; m++) {
                __m512 xv = _mm512_loadu_ps(x + m * ldx + k);
                __asm__ volatile("" : "+v"(xv)); /* one load, not one per product */
                for (int r = 0; r < 4; r++)
                    a[m][r] = _mm512_fmadd_ps(xv, wv[r], a[m][r]);
            }
        }
    }
    for (int m = 0; m < 4; m++)
        for (int r = 0; r < 4; r++) {
            float o = _mm512_reduce_add_ps(a[m][r]);
            for (int kk = k; kk < K; kk++) /* fused as in s_dot4 (bf16 products are exact) */
                o = wb ? o + kern_bf16_f32(xb[m * ldx + kk]) * kern_bf16_f32(wb[r * ldw + kk])
                       : fmaf(x[m * ldx + kk], w[r * ldw + kk], o);
            out[m][r] = o;
        }
}
#define S_HAVE_DOT4X4 1
#else
#define S_HAVE_DOT4X4 0
#endif

/* Output rows j .. j+nr-1 (nr 4, or 1: a 4-row call whose extra rows
 * repeat the row, as kern_linear_small) for the M rows of the step. */
static inline void s_linear_rows(const float *x, const uint16_t *xb, int M, int K, const float *W,
                                 const uint16_t *Wb, const float *bias, int j, int nr,
                                 float *const *y, int flags)
{
    size_t ldw = nr == 4 ? (size_t)K : 0;
    for (int m = 0; m < M;) {
        float o[4][4];
        int nm = S_HAVE_DOT4X4 && M - m >= 4 ? 4 : 1;
#if S_HAVE_DOT4X4
        if (nm == 4)
            s_dot4x4(x ? x + (size_t)m * K : NULL, xb ? xb + (size_t)m * K : NULL, (size_t)K,
                     W ? W + (size_t)j * K : NULL, Wb ? Wb + (size_t)j * K : NULL, ldw, K, o);
#endif
        if (nm == 1 && Wb)
            s_dot4_bf16(xb + (size_t)m * K, Wb + (size_t)j * K, ldw, K, o[0]);
        else if (nm == 1)
            s_dot4(x + (size_t)m * K, W + (size_t)j * K, ldw, K, o[0]);
        for (int i = 0; i < nm; i++, m++)
            for (int r = 0; r < nr; r++) {
                float v = o[i][r] + (bias ? bias[j + r] : 0.0f);
                if (flags & KERN_GELU)
                    v = s_gelu1(v);
                if (flags & KERN_ACC)
                    y[m][j + r] += v;
                else
                    y[m][j + r] = v;
            }
    }
}

void kern_linear_team(const float *x, const uint16_t *xb, int M, int K, const float *W,
                      const uint16_t *Wb, const float *bias, int N, float *const *y, int flags)
{
    int nb = N / 4, tail = N - 4 * nb;
#pragma omp for schedule(static) nowait
    for (int jb = 0; jb < nb + tail; jb++) /* blocks of 4 rows, then the last N % 4 */
        s_linear_rows(x, xb, M, K, W, Wb, bias, jb < nb ? 4 * jb : 4 * nb + (jb - nb),
                      jb < nb ? 4 : 1, y, flags);
    if (!(flags & KERN_NOWAIT)) {
#pragma omp barrier
    }
}

void kern_linear_part(const float *x, const uint16_t *xb, int M, int K, const float *W,
                      const uint16_t *Wb, const float *bias, int j0, int j1, float *const *y,
                      int flags)
{
    for (int j = j0; j < j1;) {
        int nr = j1 - j >= 4 ? 4 : 1;
        s_linear_rows(x, xb, M, K, W, Wb, bias, j, nr, y, flags);
        j += nr;
    }
}

/* Dot product of a float32 query slice with a bfloat16 key slice. */
static inline float s_dot_bf16f(const float *restrict a, const uint16_t *restrict b, int K)
{
    enum { L = 16 };
    float acc[L];
    memset(acc, 0, sizeof acc);
    int k = 0;
    for (; k + L <= K; k += L)
        for (int i = 0; i < L; i++)
            acc[i] += a[k + i] * kern_bf16_f32(b[k + i]);
    float s = 0.0f;
    for (int i = 0; i < L; i++)
        s += acc[i];
    for (; k < K; k++)
        s += a[k] * kern_bf16_f32(b[k]);
    return s;
}

#if defined(__AVX512F__)
/* 16 keys or values from float32 or bfloat16 (widened), masked or not. */
static inline __attribute__((always_inline)) __m512 s_ld16(const void *p, int bf16, size_t off,
                                                           __mmask16 m)
{
    if (bf16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, (const uint16_t *)p + off)), 16));
    return _mm512_maskz_loadu_ps(m, (const float *)p + off);
}

/* Row s of a head's keys as four vectors of 16 (head size 64). */
static inline void s_key64(const void *K, int bf16, size_t off, __m512 k[4])
{
    for (int i = 0; i < 4; i++)
        k[i] = s_ld16(K, bf16, off + 16 * i, 0xffff);
}
#endif

/* scores[r][s] = qs[r] . K[s] for every key row, each row read once for
 * all nq queries. */
static void s_head_scores(const float *qs, int nq, const void *K, int bf16, int S, int hd, int ld,
                          float *scores)
{
#if defined(__AVX512F__)
    if (hd == 64) {
        for (int s = 0; s < S; s++) {
            __m512 k[4];
            s_key64(K, bf16, (size_t)s * ld, k);
            for (int r = 0; r < nq; r++) {
                const float *q = qs + (size_t)r * hd;
                __m512 a = _mm512_mul_ps(_mm512_loadu_ps(q), k[0]);
                a = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16), k[1], a);
                a = _mm512_fmadd_ps(_mm512_loadu_ps(q + 32), k[2], a);
                a = _mm512_fmadd_ps(_mm512_loadu_ps(q + 48), k[3], a);
                scores[(size_t)r * S + s] = _mm512_reduce_add_ps(a);
            }
        }
        return;
    }
#endif
    for (int s = 0; s < S; s++)
        for (int r = 0; r < nq; r++)
            scores[(size_t)r * S + s] =
                bf16 ? s_dot_bf16f(qs + (size_t)r * hd, (const uint16_t *)K + (size_t)s * ld, hd)
                     : s_dot(qs + (size_t)r * hd, (const float *)K + (size_t)s * ld, hd);
}

#if defined(__AVX512F__)
/* e^x for 16 lanes, x clamped to [-87.3, 88.7]: x = n ln2 + r with
 * |r| <= ln2/2, e^r by Cephes' degree-6 polynomial (about 1 ulp), times
 * 2^n by scalef. */
static inline __m512 s_exp16(__m512 x)
{
    x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7f)), _mm512_set1_ps(-87.3f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    __m512 y = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(y, n);
}
#endif

#if defined(__AVX512F__)
/* 16 floats as two vectors of 8 doubles (lanes 0-7, 8-15). */
static inline void s_widen16(__m512 v, __m512d *lo, __m512d *hi)
{
    *lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
    *hi = _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}
#endif

void kern_sum_exp(const float *x, int n, float m, float s, const unsigned char *kept,
                  double *all, double *rest)
{
    int i = 0;
    double a = 0.0, r = 0.0;
#if defined(__AVX512F__)
    __m512d a0 = _mm512_setzero_pd(), a1 = a0, r0 = a0, r1 = a0;
    __m512 mv = _mm512_set1_ps(m), sv = _mm512_set1_ps(s);
    for (; i + 16 <= n; i += 16) {
        /* s_exp16 clamps its argument at -87.3: terms below that are 0
         * here, as expf's are (a flush, not 1.2e-38 each) */
        __m512 t = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv), sv);
        __m512 e = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(t, _mm512_set1_ps(-87.3f), _CMP_GE_OQ),
                                       s_exp16(t));
        __m512d lo, hi;
        s_widen16(e, &lo, &hi);
        a0 = _mm512_add_pd(a0, lo);
        a1 = _mm512_add_pd(a1, hi);
        if (kept) {
            __mmask16 out = _mm_cmpeq_epi8_mask(_mm_loadu_si128((const __m128i *)(kept + i)),
                                                _mm_setzero_si128());
            r0 = _mm512_mask_add_pd(r0, (__mmask8)out, r0, lo);
            r1 = _mm512_mask_add_pd(r1, (__mmask8)(out >> 8), r1, hi);
        }
    }
    a = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
    r = _mm512_reduce_add_pd(_mm512_add_pd(r0, r1));
#endif
    for (; i < n; i++) {
        float t = (x[i] - m) * s;
        double e = t >= -87.3f ? expf(t) : 0.0;
        a += e;
        r += kept && !kept[i] ? e : 0.0;
    }
    *all = a;
    *rest = r;
}

#if defined(__AVX512F__)
/* e^x in double for 8 lanes with x <= 0: x = n ln2 + r (ln2 split in two,
 * fdlibm's constants), |r| <= ln2/2, e^r by its Taylor series to r^13
 * (truncation below 1e-17 relative, so the error is the rounding of the
 * steps, about 1 ulp), times 2^n by scalef. */
static inline __m512d s_exp8d(__m512d x)
{
    /* -inf and the rest below -745.2 are 0; a NaN goes through as NaN (the
     * ordered compare leaves it live, and max_pd returns its second operand
     * when either is NaN), as libm's exp gives */
    __mmask8 dead = _mm512_cmp_pd_mask(x, _mm512_set1_pd(-745.2), _CMP_LT_OQ);
    x = _mm512_max_pd(_mm512_set1_pd(-745.2), x);
    __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(6.93147180369123816490e-01), x);
    r = _mm512_fnmadd_pd(n, _mm512_set1_pd(1.90821492927058770002e-10), r);
    __m512d p = _mm512_set1_pd(1.0 / 6227020800.0); /* 1/13! */
    static const double inv_fact[13] = {1.0 / 479001600.0, 1.0 / 39916800.0, 1.0 / 3628800.0,
                                        1.0 / 362880.0,    1.0 / 40320.0,    1.0 / 5040.0,
                                        1.0 / 720.0,       1.0 / 120.0,      1.0 / 24.0,
                                        1.0 / 6.0,         0.5,              1.0,
                                        1.0};
    for (int k = 0; k < 13; k++)
        p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(inv_fact[k]));
    return _mm512_maskz_mov_pd((__mmask8)~dead, _mm512_scalef_pd(p, n));
}
#endif

double kern_sum_exp_f64(const float *x, int n, float m)
{
    int i = 0;
    double a = 0.0;
#if defined(__AVX512F__)
    __m512d a0 = _mm512_setzero_pd(), a1 = a0, mv = _mm512_set1_pd(m);
    for (; i + 16 <= n; i += 16) {
        __m512d lo, hi;
        s_widen16(_mm512_loadu_ps(x + i), &lo, &hi);
        a0 = _mm512_add_pd(a0, s_exp8d(_mm512_sub_pd(lo, mv)));
        a1 = _mm512_add_pd(a1, s_exp8d(_mm512_sub_pd(hi, mv)));
    }
    a = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
#endif
    for (; i < n; i++)
        if (x[i] != -INFINITY)
            a += exp((double)x[i] - m);
    return a;
}

int kern_argmax(const float *x, int n)
{
    if (n < 1 || isnan(x[0]))
        return 0; /* as the scan below: nothing is greater than a NaN first */
    int i = 0;
    float mx = x[0];
#if defined(__AVX512F__)
    __m512 mv = _mm512_set1_ps(mx);
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        /* ordered compare: a NaN never becomes the maximum */
        mv = _mm512_mask_mov_ps(mv, _mm512_cmp_ps_mask(v, mv, _CMP_GT_OQ), v);
    }
    mx = _mm512_reduce_max_ps(mv);
#endif
    for (; i < n; i++)
        if (x[i] > mx)
            mx = x[i];
    i = 0; /* the first index holding it */
#if defined(__AVX512F__)
    for (mv = _mm512_set1_ps(mx); i + 16 <= n; i += 16) {
        __mmask16 eq = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), mv, _CMP_EQ_OQ);
        if (eq)
            return i + __builtin_ctz(eq);
    }
#endif
    for (; i < n; i++)
        if (x[i] == mx)
            break;
    return i;
}

/* Softmax of one row of finite scores (the plain form is
 * kern_softmax_rows; the AVX-512 form differs from it by the rounding of
 * its exponential, within 2e-7 relative). */
static void s_softmax_row(float *x, int n)
{
#if defined(__AVX512F__)
    __m512 mv = _mm512_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        mv = _mm512_max_ps(mv, _mm512_loadu_ps(x + i));
    float mx = _mm512_reduce_max_ps(mv);
    for (; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    __m512 m = _mm512_set1_ps(mx), sv = _mm512_setzero_ps();
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 e = s_exp16(_mm512_sub_ps(_mm512_loadu_ps(x + i), m));
        _mm512_storeu_ps(x + i, e);
        sv = _mm512_add_ps(sv, e);
    }
    float sum = _mm512_reduce_add_ps(sv);
    for (; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    __m512 inv = _mm512_set1_ps(1.0f / sum);
    for (i = 0; i + 16 <= n; i += 16)
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
    for (; i < n; i++)
        x[i] *= 1.0f / sum;
#else
    kern_softmax_rows(x, 1, n);
#endif
}

void kern_softmax_rows_finite(float *x, int rows, int n)
{
    for (int r = 0; r < rows; r++)
        s_softmax_row(x + (size_t)r * n, n);
}

void kern_attend_head(const float *q, int nq, int ldq, float scale, const void *K, const void *V,
                      int bf16, int S, int hd, int ld, float *scores, float *ctx, int ldc)
{
    float qs[16 * 256], acc[16 * 256];
    for (int r = 0; r < nq; r++)
        for (int d = 0; d < hd; d++)
            qs[r * hd + d] = q[(size_t)r * ldq + d] * scale;
    s_head_scores(qs, nq, K, bf16, S, hd, ld, scores);
    for (int r = 0; r < nq; r++)
        s_softmax_row(scores + (size_t)r * S, S);
    /* context: each value row read once for all nq queries */
    memset(acc, 0, (size_t)nq * hd * sizeof *acc);
    for (int s = 0; s < S; s++) {
        if (bf16) {
            const uint16_t *v = (const uint16_t *)V + (size_t)s * ld;
            for (int r = 0; r < nq; r++) {
                float p = scores[(size_t)r * S + s];
                for (int d = 0; d < hd; d++)
                    acc[r * hd + d] += p * kern_bf16_f32(v[d]);
            }
        } else {
            const float *v = (const float *)V + (size_t)s * ld;
            for (int r = 0; r < nq; r++) {
                float p = scores[(size_t)r * S + s];
                for (int d = 0; d < hd; d++)
                    acc[r * hd + d] += p * v[d];
            }
        }
    }
    for (int r = 0; r < nq; r++)
        memcpy(ctx + (size_t)r * ldc, acc + (size_t)r * hd, (size_t)hd * sizeof *acc);
}

/* ------------------------------------------------- cross-attention head
 * A page's cross keys are kept transposed, [hd, S] per head: scores of 64
 * keys for up to 4 query rows are then 16 vector accumulators, each
 * key dimension one broadcast and 4 fused multiply-adds per query row, no
 * horizontal sums; the values stay rows [S, hd], each row read once for
 * up to 4 query rows summed into registers.  A score is the dot product
 * over d in order; a context element the sum over s in order. */

#if defined(__AVX512F__)

/* Both loops below ask for their data ahead, non-temporally, as the
 * streaming linears do: a block of 64 keys reads 64 rows of Kt side by
 * side (more streams than the hardware prefetcher follows), and the values
 * are read once.  Measured over a page's 4 layers x 16 heads of float32
 * K/V (157 MB, 2 threads): 1 query row 2.75-3.20 ms without, 2.34-2.67 ms
 * with; 4 rows 5.09-5.23 ms without, 3.58-3.92 ms with. */
enum { S_KEYS_AHEAD = 256, S_VALUES_AHEAD = 16 }; /* keys of a row; value rows */

/* Requests for the 64 elements from element i of X (float32, or bf16). */
static inline __attribute__((always_inline)) void s_ask_ahead(const void *X, int bf16, size_t i)
{
    uintptr_t p = (uintptr_t)X + i * (bf16 ? 2 : 4); /* may be past the end: see s_ask */
    for (int l = 0; l < (bf16 ? 2 : 4); l++)
        _mm_prefetch((const char *)(p + 64 * l), _MM_HINT_NTA);
}

/* scores [nr, S] (row stride S) of nr <= 4 scaled query rows qs [nr, 64]
 * against Kt [64, S] (row stride ldk). */
static inline __attribute__((always_inline)) void s_cross_scores(const float *qs, int nr,
                                                                 const void *Kt, int ldk, int bf16,
                                                                 int S, float *scores)
{
    int s = 0;
    for (; s + 64 <= S; s += 64) {
        __m512 a[4][4];
        for (int r = 0; r < nr; r++)
            for (int i = 0; i < 4; i++)
                a[r][i] = _mm512_setzero_ps();
        for (int d = 0; d < 64; d++) {
            size_t o = (size_t)d * ldk + s;
            __m512 k[4];
            s_ask_ahead(Kt, bf16, o + S_KEYS_AHEAD);
            for (int i = 0; i < 4; i++)
                k[i] = s_ld16(Kt, bf16, o + 16 * i, 0xffff);
            for (int r = 0; r < nr; r++) {
                __m512 qb = _mm512_set1_ps(qs[r * 64 + d]);
                for (int i = 0; i < 4; i++)
                    a[r][i] = _mm512_fmadd_ps(qb, k[i], a[r][i]);
            }
        }
        for (int r = 0; r < nr; r++)
            for (int i = 0; i < 4; i++)
                _mm512_storeu_ps(scores + (size_t)r * S + s + 16 * i, a[r][i]);
    }
    for (; s < S; s += 16) {
        __mmask16 m = S - s >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (S - s)) - 1);
        __m512 a[4];
        for (int r = 0; r < nr; r++)
            a[r] = _mm512_setzero_ps();
        for (int d = 0; d < 64; d++) {
            __m512 k = s_ld16(Kt, bf16, (size_t)d * ldk + s, m);
            for (int r = 0; r < nr; r++)
                a[r] = _mm512_fmadd_ps(_mm512_set1_ps(qs[r * 64 + d]), k, a[r]);
        }
        for (int r = 0; r < nr; r++)
            _mm512_mask_storeu_ps(scores + (size_t)r * S + s, m, a[r]);
    }
}

/* ctx rows [nr, 64] (stride ldc) = probs [nr, S] (stride S) . V [S, 64]
 * (row stride ldv). */
static inline __attribute__((always_inline)) void s_cross_ctx(const float *P, int nr,
                                                              const void *V, int ldv, int bf16,
                                                              int S, float *ctx, int ldc)
{
    __m512 a[4][4];
    for (int r = 0; r < nr; r++)
        for (int i = 0; i < 4; i++)
            a[r][i] = _mm512_setzero_ps();
    for (int s = 0; s < S; s++) {
        __m512 v[4];
        s_ask_ahead(V, bf16, (size_t)(s + S_VALUES_AHEAD) * ldv);
        for (int i = 0; i < 4; i++)
            v[i] = s_ld16(V, bf16, (size_t)s * ldv + 16 * i, 0xffff);
        for (int r = 0; r < nr; r++) {
            __m512 p = _mm512_set1_ps(P[(size_t)r * S + s]);
            for (int i = 0; i < 4; i++)
                a[r][i] = _mm512_fmadd_ps(p, v[i], a[r][i]);
        }
    }
    for (int r = 0; r < nr; r++)
        for (int i = 0; i < 4; i++)
            _mm512_storeu_ps(ctx + (size_t)r * ldc + 16 * i, a[r][i]);
}

/* The two above for nr and bf16 known at compile time. */
#define S_CROSS_CASES(CALL)                                                                        \
    switch (nr * 2 + bf16) {                                                                       \
    case 2: CALL(1, 0); break;                                                                     \
    case 3: CALL(1, 1); break;                                                                     \
    case 4: CALL(2, 0); break;                                                                     \
    case 5: CALL(2, 1); break;                                                                     \
    case 6: CALL(3, 0); break;                                                                     \
    case 7: CALL(3, 1); break;                                                                     \
    case 8: CALL(4, 0); break;                                                                     \
    default: CALL(4, 1); break;                                                                    \
    }
#endif

static void s_cross_head16(const float *q, int nq, int ldq, float scale, const void *Kt, int ldk,
                           const void *V, int ldv, int bf16, int S, int hd, float *scores,
                           float *ctx, int ldc);

void kern_cross_head(const float *q, int nq, int ldq, float scale, const void *Kt, int ldk,
                     const void *V, int ldv, int bf16, int S, int hd, float *scores, float *ctx,
                     int ldc)
{
    /* 16 query rows at a time (the scaled copies live on the stack) */
    for (int r0 = 0; r0 < nq; r0 += 16)
        s_cross_head16(q + (size_t)r0 * ldq, nq - r0 < 16 ? nq - r0 : 16, ldq, scale, Kt, ldk, V,
                       ldv, bf16, S, hd, scores + (size_t)r0 * S, ctx + (size_t)r0 * ldc, ldc);
}

static void s_cross_head16(const float *q, int nq, int ldq, float scale, const void *Kt, int ldk,
                           const void *V, int ldv, int bf16, int S, int hd, float *scores,
                           float *ctx, int ldc)
{
    float qs[16 * 256];
    for (int r = 0; r < nq; r++)
        for (int d = 0; d < hd; d++)
            qs[r * hd + d] = q[(size_t)r * ldq + d] * scale;
#if defined(__AVX512F__)
    if (hd == 64) {
        for (int r0 = 0; r0 < nq; r0 += 4) {
            int nr = nq - r0 < 4 ? nq - r0 : 4;
            const float *qr = qs + r0 * 64;
            float *sr = scores + (size_t)r0 * S;
#define S_SCORES(NR, BF) s_cross_scores(qr, NR, Kt, ldk, BF, S, sr)
            S_CROSS_CASES(S_SCORES)
#undef S_SCORES
        }
        for (int r = 0; r < nq; r++)
            s_softmax_row(scores + (size_t)r * S, S);
        for (int r0 = 0; r0 < nq; r0 += 4) {
            int nr = nq - r0 < 4 ? nq - r0 : 4;
            const float *pr = scores + (size_t)r0 * S;
            float *cr = ctx + (size_t)r0 * ldc;
#define S_CTX(NR, BF) s_cross_ctx(pr, NR, V, ldv, BF, S, cr, ldc)
            S_CROSS_CASES(S_CTX)
#undef S_CTX
        }
        return;
    }
#endif
    for (int r = 0; r < nq; r++) {
        float *sr = scores + (size_t)r * S;
        for (int s = 0; s < S; s++) {
            float a = 0.0f;
            for (int d = 0; d < hd; d++) {
                size_t o = (size_t)d * ldk + s;
                a += qs[r * hd + d] *
                     (bf16 ? kern_bf16_f32(((const uint16_t *)Kt)[o]) : ((const float *)Kt)[o]);
            }
            sr[s] = a;
        }
        s_softmax_row(sr, S);
        for (int d = 0; d < hd; d++) {
            float a = 0.0f;
            for (int s = 0; s < S; s++) {
                size_t o = (size_t)s * ldv + d;
                a += sr[s] *
                     (bf16 ? kern_bf16_f32(((const uint16_t *)V)[o]) : ((const float *)V)[o]);
            }
            ctx[(size_t)r * ldc + d] = a;
        }
    }
}
