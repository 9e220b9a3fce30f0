/* kern.c - CPU kernels: BLAS GEMM wrappers and plain vectorisable loops. */
#define _GNU_SOURCE /* sched_getaffinity */
#include "kernels/cpu/kern.h"

#include <cblas.h>
#include <oneapi/dnnl/dnnl.h>
#include <math.h>
#include <omp.h>
#include <sched.h>
#include <string.h>
#include <unistd.h>

/* oneDNN's sgemm ('N' or 'T' per operand, row-major), BLAS should it
 * refuse the call. */
static void s_gemm(int ta, int tb, int M, int N, int K, float alpha, const float *A, int lda,
                   const float *B, int ldb, float beta, float *C, int ldc)
{
    if (dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) ==
        dnnl_success)
        return;
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M,
                N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void kern_gemm_nt(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc)
{
    s_gemm(0, 1, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void kern_gemm_tn(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc)
{
    s_gemm(1, 0, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void kern_gemm_nn(int M, int N, int K, float alpha, const float *A, int lda, const float *B,
                  int ldb, float beta, float *C, int ldc)
{
    s_gemm(0, 0, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void kern_linear(const float *x, int M, int K, const float *W, const float *bias, int N, float *y)
{
    if (kern_small_m(M)) {
        kern_linear_small(x, M, K, W, bias, N, y);
        return;
    }
    if (bias) {
        for (int i = 0; i < M; i++)
            for (int j = 0; j < N; j++)
                y[(size_t)i * N + j] = bias[j];
    }
    kern_gemm_nt(M, N, K, 1.0f, x, K, W, K, bias ? 1.0f : 0.0f, y, N);
}

void kern_linear_ref(const float *x, int M, int K, const float *W, const float *bias, int N,
                     float *y)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = bias ? bias[j] : 0.0;
            for (int k = 0; k < K; k++)
                acc += (double)x[(size_t)i * K + k] * W[(size_t)j * K + k];
            y[(size_t)i * N + j] = (float)acc;
        }
}

void kern_layernorm(const float *x, int rows, int n, const float *g, const float *b, float eps,
                    float *y)
{
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        double mean = 0.0;
        for (int i = 0; i < n; i++)
            mean += xr[i];
        mean /= n;
        double var = 0.0;
        for (int i = 0; i < n; i++) {
            double d = xr[i] - mean;
            var += d * d;
        }
        var /= n;
        float inv = (float)(1.0 / sqrt(var + eps));
        float fm = (float)mean;
        for (int i = 0; i < n; i++)
            yr[i] = (xr[i] - fm) * inv * g[i] + b[i];
    }
}

void kern_gelu(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
}

void kern_softmax_rows(float *x, int rows, int n)
{
    for (int r = 0; r < rows; r++) {
        float *xr = x + (size_t)r * n;
        float mx = -INFINITY;
        for (int i = 0; i < n; i++)
            mx = xr[i] > mx ? xr[i] : mx;
        if (mx == -INFINITY) { /* fully masked row: torch yields NaN; keep zeros */
            for (int i = 0; i < n; i++)
                xr[i] = 0.0f;
            continue;
        }
        float sum = 0.0f;
        for (int i = 0; i < n; i++) {
            xr[i] = expf(xr[i] - mx);
            sum += xr[i];
        }
        float inv = 1.0f / sum;
        for (int i = 0; i < n; i++)
            xr[i] *= inv;
    }
}

void kern_add(float *y, const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        y[i] += x[i];
}

static int s_threads = 0;

void kern_set_threads(int n)
{
    if (n < 1)
        n = 1;
    s_threads = n;
    openblas_set_num_threads(n);
    omp_set_num_threads(n);
}

int kern_cpu_count(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

int kern_get_threads(void) { return s_threads ? s_threads : openblas_get_num_threads(); }

void kern_transpose(const float *x, int rows, int cols, float *y, uint16_t *yb)
{
    enum { T = 32 }; /* tiles: both sides' lines stay in cache */
#pragma omp parallel for schedule(static)
    for (int c0 = 0; c0 < cols; c0 += T)
        for (int r0 = 0; r0 < rows; r0 += T) {
            int c1 = c0 + T < cols ? c0 + T : cols, r1 = r0 + T < rows ? r0 + T : rows;
            for (int c = c0; c < c1; c++)
                for (int r = r0; r < r1; r++) {
                    float v = x[(size_t)r * cols + c];
                    if (y)
                        y[(size_t)c * rows + r] = v;
                    else
                        yb[(size_t)c * rows + r] = kern_f32_bf16(v);
                }
        }
}

void kern_heads_major(const float *x, int S, int H, int hd, float *y, uint16_t *yb)
{
#pragma omp parallel for schedule(static)
    for (int h = 0; h < H; h++)
        for (int s = 0; s < S; s++) {
            const float *src = x + (size_t)s * H * hd + (size_t)h * hd;
            size_t o = ((size_t)h * S + s) * hd;
            if (y)
                memcpy(y + o, src, (size_t)hd * sizeof *y);
            else
                for (int d = 0; d < hd; d++)
                    yb[o + d] = kern_f32_bf16(src[d]);
        }
}
