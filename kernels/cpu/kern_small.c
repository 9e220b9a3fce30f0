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

#include "kern.h"

#define SMALL_MAX 16

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

void kern_linear_small(const float *x, int M, int K, const float *W, const float *bias, int N,
                       float *y)
{
#pragma omp parallel for schedule(static)
    for (int j = 0; j < N; j++) {
        const float *w = W + (size_t)j * K;
        float b = bias ? bias[j] : 0.0f;
        for (int m = 0; m < M; m++)
            y[(size_t)m * N + j] = s_dot(x + (size_t)m * K, w, K) + b;
    }
}

void kern_attend_scores(const float *q, const float *K, int S, int H, int hd, int ld, float *probs)
{
    /* scores: one pass over the keys, every head per key row */
#pragma omp parallel for schedule(static)
    for (int s = 0; s < S; s++) {
        const float *kr = K + (size_t)s * ld;
        for (int h = 0; h < H; h++)
            probs[(size_t)h * S + s] = s_dot(q + h * hd, kr + h * hd, hd);
    }
    kern_softmax_rows(probs, H, S);
}

void kern_attend_values(const float *probs, const float *V, int S, int H, int hd, int ld,
                        float *ctx)
{
    /* context: one pass over the values; each thread sums a slice of the
     * keys into its own partial, partials added in thread order */
    int inner = H * hd;
    int nt = omp_get_max_threads();
    float *part = calloc((size_t)nt * inner, sizeof(float));
    if (!part) { /* fall back to a single pass without partials */
        memset(ctx, 0, (size_t)inner * sizeof(float));
        for (int s = 0; s < S; s++)
            for (int h = 0; h < H; h++) {
                float p = probs[(size_t)h * S + s];
                const float *vr = V + (size_t)s * ld + h * hd;
                for (int d = 0; d < hd; d++)
                    ctx[h * hd + d] += p * vr[d];
            }
        return;
    }
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), n = omp_get_num_threads();
        int s0 = (int)((long)S * t / n), s1 = (int)((long)S * (t + 1) / n);
        float *acc = part + (size_t)t * inner;
        for (int s = s0; s < s1; s++) {
            const float *vr = V + (size_t)s * ld;
            for (int h = 0; h < H; h++) {
                float p = probs[(size_t)h * S + s];
                float *a = acc + h * hd;
                const float *v = vr + h * hd;
                for (int d = 0; d < hd; d++)
                    a[d] += p * v[d];
            }
        }
    }
    memcpy(ctx, part, (size_t)inner * sizeof(float));
    for (int t = 1; t < nt; t++)
        kern_add(ctx, part + (size_t)t * inner, (size_t)inner);
    free(part);
}
