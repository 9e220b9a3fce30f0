/* kern_bf16.c - linear layers with bfloat16 weights: the dispatch between
 * the small-M streaming kernel (kern_small.c) and the many-row path, the
 * plain twin, and the float32 -> bfloat16 rounding of weights.
 *
 * Many rows (the cross-attention keys and values of a page, teacher-forced
 * sequences) are compute-bound: there the weights are widened to float32
 * a block of rows at a time and multiplied by sgemm, so they run at the
 * BLAS rate while only the bfloat16 copy stays resident.  The widening and
 * rounding loops run on the calling thread: an OpenMP region between two
 * sgemm calls would wait for the BLAS threads, which keep spinning for a
 * while after each call, to give the cores back (a scheduler time slice on
 * a busy machine), and widening is cheap next to the product. */
#include <stdlib.h>

#include <omp.h>

#include "kernels/cpu/kern.h"
#include "kernels/cpu/kern_gemm.h"
#include "common/tensorfile.h"

/* Weight rows widened per sgemm call: 4 MiB of float32 at K = 4096. */
#define BF16_BLOCK_ROWS 256

void kern_to_bf16(const float *src, uint16_t *dst, size_t n)
{
    /* a model's matrices are converted once, at load: the vector converter
     * on slices over the team when large (each element on its own, so the
     * split changes nothing) */
    enum { SLICE = 1 << 16 };
    if (n < ((size_t)1 << 20) || omp_in_parallel()) {
        kern_f32_to_bf16_n(src, n, dst);
        return;
    }
    long slices = (long)((n + SLICE - 1) / SLICE);
#pragma omp parallel for schedule(static)
    for (long c = 0; c < slices; c++) {
        size_t i = (size_t)c * SLICE;
        kern_f32_to_bf16_n(src + i, n - i < SLICE ? n - i : SLICE, dst + i);
    }
}

void kern_linear_bf16_ref(const float *x, int M, int K, const uint16_t *W, const float *bias,
                          int N, float *y)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++)
                acc += (double)dm_bf16_to_f32(dm_f32_to_bf16(x[(size_t)i * K + k])) *
                       dm_bf16_to_f32(W[(size_t)j * K + k]);
            y[(size_t)i * N + j] = (float)acc + (bias ? bias[j] : 0.0f);
        }
}

void kern_linear_bf16(const float *x, int M, int K, const uint16_t *W, const float *bias, int N,
                      float *y)
{
    if (kern_small_m(M)) {
        kern_linear_small_bf16(x, M, K, W, bias, N, y);
        return;
    }
    int rows = N < BF16_BLOCK_ROWS ? N : BF16_BLOCK_ROWS;
    float *wf = malloc((size_t)rows * K * sizeof *wf);
    if (!wf) { /* no room for a widened block: the plain twin needs none */
        kern_linear_bf16_ref(x, M, K, W, bias, N, y);
        return;
    }
    for (int j0 = 0; j0 < N; j0 += rows) {
        int nr = N - j0 < rows ? N - j0 : rows;
        const uint16_t *src = W + (size_t)j0 * K;
        for (size_t i = 0; i < (size_t)nr * K; i++)
            wf[i] = kern_bf16_f32(src[i]);
        if (bias)
            for (int i = 0; i < M; i++)
                for (int j = 0; j < nr; j++)
                    y[(size_t)i * N + j0 + j] = bias[j0 + j];
        kern_gemm_nt(M, nr, K, 1.0f, x, K, wf, K, bias ? 1.0f : 0.0f, y + j0, N);
    }
    free(wf);
}
