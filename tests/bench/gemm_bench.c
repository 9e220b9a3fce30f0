/* gemm_bench.c - GEMM libraries on the Swin encoder's linear layers
 * (`make bench` runs it; build/gemm_bench [--rows M] [--reps N]
 * [--threads N] [--dims 128,256,...]).
 *
 * y[M,N] = x[M,K] * W[N,K]^T for the five linears of every stage of a
 * Swin-B style encoder (dim C: q|k|v fused [3C, C], proj [C, C], fc1 [4C, C],
 * fc2 [C, 4C], patch merging [2C, 4C]), M rows at a time as the encoder runs
 * them.  Candidates:
 *
 *   openblas     cblas_sgemm (kern_gemm_nt), W as is
 *   blis         bli_sgemm of libblis.so.4 (loaded with dlopen, so that its
 *                BLAS symbols do not collide with OpenBLAS's), W as is
 *   libxsmm      JIT micro-kernels (libxsmm_smmdispatch) over 64 x 64 tiles
 *                of y, W transposed once, OpenMP over tiles
 *   onednn-f32   oneDNN matmul, W pre-packed (kern_gemm: the encoder's)
 *   onednn-bf16  the same in bf16 x bf16 -> f32 (activations converted in
 *                the call, as the encoder does)
 *
 * Prints GFLOP/s (best of --reps after a warm-up) and the fraction of the
 * fp32 FMA peak (bf16: of the bf16 dot-product peak) measured in the same
 * run, one table row per shape, then the sums over a stage's shapes. */
#include <dlfcn.h>
#include <libxsmm.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/bounds.h"
#include "common/dm_error.h"
#include "kernels/cpu/kern.h"
#include "kernels/cpu/kern_gemm.h"

enum { C_OPENBLAS, C_BLIS, C_XSMM, C_DNNL, C_DNNL_BF16, NCAND };
static const char *s_cand[NCAND] = {"openblas", "blis", "libxsmm", "onednn-f32", "onednn-bf16"};

/* bli_sgemm's typed API (BLIS 0.9, blis.h): transposes are 0 (none) and
 * 8 (BLIS_TRANSPOSE), dims and strides are int64. */
typedef void (*BliSgemm)(int transa, int transb, int64_t m, int64_t n, int64_t k, float *alpha,
                         float *a, int64_t rsa, int64_t csa, float *b, int64_t rsb, int64_t csb,
                         float *beta, float *c, int64_t rsc, int64_t csc);
typedef void (*BliSetThreads)(int64_t n);
static BliSgemm s_bli_sgemm;

static void s_fill(float *p, size_t n, unsigned seed)
{
    unsigned x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x = x * 1664525u + 1013904223u;
        p[i] = (float)((x >> 8) * (1.0 / (1 << 24))) - 0.5f;
    }
}

typedef struct Case {
    int M, N, K;
    const float *x, *W;
    float *Wt, *y;
    void *pk32, *pk16;
    uint16_t *xbf;
} Case;

/* y = x W^T through libxsmm tiles: y^T (column-major [N, M]) = Wt^T-view *
 * x^T-view, i.e. A = Wt (col-major N x K, ld N), B = x (col-major K x M,
 * ld K), C = y (col-major N x M, ld N). */
#define XT 64
static int s_xsmm(const Case *c)
{
    int mt = c->N / XT, nt = c->M / XT;
    if (c->N % XT || c->M % XT)
        return -1;
    float alpha = 1.0f, beta = 0.0f;
    libxsmm_smmfunction k = libxsmm_smmdispatch(XT, XT, c->K, &c->N, &c->K, &c->N, &alpha, &beta,
                                                NULL, NULL);
    if (!k)
        return -1;
#pragma omp parallel for schedule(static) collapse(2)
    for (int j = 0; j < nt; j++)
        for (int i = 0; i < mt; i++)
            k(c->Wt + (size_t)i * XT, c->x + (size_t)j * XT * c->K,
              c->y + (size_t)j * XT * c->N + (size_t)i * XT);
    return 0;
}

static int s_run(int cand, const Case *c, DmErr *err)
{
    float one = 1.0f, zero = 0.0f;
    switch (cand) {
    case C_OPENBLAS:
        kern_gemm_nt(c->M, c->N, c->K, 1.0f, c->x, c->K, c->W, c->K, 0.0f, c->y, c->N);
        return 0;
    case C_BLIS:
        s_bli_sgemm(0, 8, c->M, c->N, c->K, &one, (float *)c->x, c->K, 1, (float *)c->W, c->K, 1,
                    &zero, c->y, c->N, 1);
        return 0;
    case C_XSMM:
        return s_xsmm(c) ? dm_err(err, "libxsmm: no kernel for %d x %d x %d", c->M, c->N, c->K)
                         : 0;
    case C_DNNL:
        return kern_gemm_run(c->pk32, c->x, c->M, c->K, NULL, 0, c->y, c->N, NULL, err);
    default:
        return kern_gemm_run(c->pk16, c->x, c->M, c->K, NULL, 0, c->y, c->N, c->xbf, err);
    }
}

static double s_time(int cand, const Case *c, int reps, DmErr *err)
{
    if (s_run(cand, c, err))
        return -1.0;
    double best = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = dm_now();
        s_run(cand, c, err);
        double t = dm_now() - t0;
        best = t < best ? t : best;
    }
    return best;
}

static int s_parse_dims(const char *s, int *dims, int max)
{
    int n = 0;
    while (*s && n < max) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 16 || v % 16)
            return -1;
        dims[n++] = (int)v;
        s = *end == ',' ? end + 1 : end;
    }
    return n;
}

int main(int argc, char **argv)
{
    int M = 4096, reps = 5, threads = 0, dims[8] = {128, 256, 512, 1024}, ndims = 4;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--rows") && i + 1 < argc)
            M = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--dims") && i + 1 < argc) {
            if ((ndims = s_parse_dims(argv[++i], dims, 8)) < 1) {
                fprintf(stderr, "gemm_bench: --dims %s: multiples of 16 >= 16\n", argv[i]);
                return 2;
            }
        } else {
            fprintf(stderr, "usage: gemm_bench [--rows M] [--reps N] [--threads N] "
                            "[--dims 128,256,512,1024]\n");
            return 2;
        }
    }
    if (M < 64 || M % 64 || reps < 1) {
        fprintf(stderr, "gemm_bench: --rows must be a multiple of 64, --reps >= 1\n");
        return 2;
    }
    kern_set_threads(threads > 0 ? threads : omp_get_max_threads());
    int nth = kern_get_threads();
    DmErr err = {0};

    void *blis = dlopen("libblis.so.4", RTLD_NOW | RTLD_LOCAL);
    BliSetThreads bli_threads = blis ? (BliSetThreads)dlsym(blis, "bli_thread_set_num_threads")
                                     : NULL;
    s_bli_sgemm = blis ? (BliSgemm)dlsym(blis, "bli_sgemm") : NULL;
    if (bli_threads)
        bli_threads(nth);
    libxsmm_init();

    double peak32 = 0, peak16 = 0;
    if (bound_fma_peak("avx512f", nth, 3, &peak32, &err) ||
        bound_fma_peak("avx512bf16", nth, 3, &peak16, &err)) {
        fprintf(stderr, "gemm_bench: %s\n", err.msg);
        return 1;
    }
    BlasInfo bi;
    bound_blas_info(&bi);
    char feat[256];
    bound_cpu_features(feat, sizeof feat);
    printf("threads %d; OpenBLAS core %s; OPENBLAS_CORETYPE=%s\n", nth, bi.corename,
           getenv("OPENBLAS_CORETYPE") ? getenv("OPENBLAS_CORETYPE") : "(unset)");
    printf("fp32 FMA peak %.1f GFLOP/s, bf16 dot-product peak %.1f GFLOP/s; rows M = %d; "
           "best of %d\n", peak32, peak16, M, reps);
    printf("%-14s %5s %5s", "layer", "N", "K");
    for (int c = 0; c < NCAND; c++)
        printf(" %18s", s_cand[c]);
    printf("\n");

    int rc = 0;
    for (int d = 0; d < ndims && !rc; d++) {
        int C = dims[d];
        struct {
            const char *name;
            int N, K;
        } sh[5] = {{"qkv", 3 * C, C}, {"proj", C, C}, {"fc1", 4 * C, C}, {"fc2", C, 4 * C},
                   {"merge", 2 * C, 4 * C}};
        double tsum[NCAND] = {0}, fsum = 0;
        for (int s = 0; s < 5 && !rc; s++) {
            Case c = {.M = M, .N = sh[s].N, .K = sh[s].K};
            float *x = malloc((size_t)M * c.K * sizeof(float));
            float *W = malloc((size_t)c.N * c.K * sizeof(float));
            c.Wt = malloc((size_t)c.N * c.K * sizeof(float));
            c.y = malloc((size_t)M * c.N * sizeof(float));
            c.xbf = malloc((size_t)M * c.K * sizeof(uint16_t));
            if (!x || !W || !c.Wt || !c.y || !c.xbf) {
                fprintf(stderr, "gemm_bench: out of memory\n");
                return 1;
            }
            s_fill(x, (size_t)M * c.K, 1);
            s_fill(W, (size_t)c.N * c.K, 2);
            for (int n = 0; n < c.N; n++)
                for (int k = 0; k < c.K; k++)
                    c.Wt[(size_t)k * c.N + n] = W[(size_t)n * c.K + k];
            c.x = x;
            c.W = W;
            if (kern_gemm_pack(W, NULL, c.N, c.K, 0, &c.pk32, &err) ||
                kern_gemm_pack(W, NULL, c.N, c.K, 1, &c.pk16, &err)) {
                fprintf(stderr, "gemm_bench: %s\n", err.msg);
                return 1;
            }
            double fl = 2.0 * M * c.N * (double)c.K;
            fsum += fl;
            printf("%-5s C=%-6d %5d %5d", sh[s].name, C, c.N, c.K);
            for (int k = 0; k < NCAND; k++) {
                if (k == C_BLIS && !s_bli_sgemm) {
                    printf(" %18s", "n/a");
                    continue;
                }
                double t = s_time(k, &c, reps, &err);
                if (t < 0) {
                    printf(" %18s", "failed");
                    fprintf(stderr, "gemm_bench: %s: %s\n", s_cand[k], err.msg);
                    tsum[k] = -1e30;
                    continue;
                }
                tsum[k] += t;
                double g = fl / t * 1e-9;
                printf(" %9.1f (%4.0f%%)", g, 100.0 * g / (k == C_DNNL_BF16 ? peak16 : peak32));
            }
            printf("\n");
            fflush(stdout);
            free(x);
            free(W);
            free(c.Wt);
            free(c.y);
            free(c.xbf);
            free(c.pk32);
            free(c.pk16);
        }
        printf("%-5s C=%-6d %11s", "stage", C, "all");
        for (int k = 0; k < NCAND; k++) {
            if (tsum[k] <= 0) {
                printf(" %18s", "-");
                continue;
            }
            double g = fsum / tsum[k] * 1e-9;
            printf(" %9.1f (%4.0f%%)", g, 100.0 * g / (k == C_DNNL_BF16 ? peak16 : peak32));
        }
        printf("\n");
    }
    libxsmm_finalize();
    if (blis)
        dlclose(blis);
    return rc;
}
