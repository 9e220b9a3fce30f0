/* test_cuda.c - CUDA kernels against their CPU twins (kernels/cpu/kern.h).
 *
 * Without CUDA=1, or without a GPU, one test prints why the CUDA tests are
 * skipped and passes.  With a GPU every op runs on random inputs of several
 * shapes (odd sizes, padded leading dims, in-place) and is compared with
 * the CPU twin by normalised squared error, as ggml's test-backend-ops:
 * nmse = sum((gpu - cpu)^2) / sum(cpu^2). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tutil.h"

#ifndef DM_CUDA

static void t_skip(void)
{
    printf("\n    CUDA tests skipped: built without CUDA=1\n    ");
    fflush(stdout);
    CU_PASS("built without CUDA=1");
}

void tests_cuda(void) { TU_SUITE("cuda", {"skipped", t_skip}); }

#else /* DM_CUDA */

#include "kernels/cuda/cuda_kern.h"
#include "kernels/cpu/kern.h"

static char s_why[512];

#ifdef __SANITIZE_ADDRESS__
/* `make SAN=1 CUDA=1 test` on a GPU: the CUDA driver maps memory in ASan's
 * shadow gap (cuInit fails with "out of memory" unless the gap is left
 * unprotected) and keeps allocations until exit (not our leaks). */
__attribute__((used)) const char *__asan_default_options(void) { return "protect_shadow_gap=0"; }
__attribute__((used)) const char *__lsan_default_suppressions(void)
{
    return "leak:libcuda.so\nleak:libnvidia-\nleak:libcudart.so\nleak:libnccl.so\n";
}
#endif

/* ---- no device ------------------------------------------------------- */

static void t_skip_nogpu(void)
{
    printf("\n    CUDA tests skipped: no GPU (%s)\n    ", s_why);
    fflush(stdout);
    CU_PASS("no GPU");
}

/* Without a device the API must fail cleanly with one-line messages. */
static void t_nogpu_errors(void)
{
    DmErr e = {{0}};
    void *d = (void *)1;
    CU_ASSERT_EQUAL(cuda_malloc(&d, 16, &e), -1);
    CU_ASSERT_PTR_NULL(d);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "cuda_malloc: CUDA not initialised"));
    dm_err_clear(&e);
    CU_ASSERT_EQUAL(cuda_kern_init(&e), -1);
    CU_ASSERT_EQUAL(strncmp(e.msg, "cuda_kern_init: ", 16), 0);
    CU_ASSERT_PTR_NULL(strchr(e.msg, '\n'));
    CU_ASSERT_EQUAL(cuda_kern_device(), -1);
    CU_ASSERT_PTR_NULL(cuda_kern_stream());
    int v = 0;
    CU_ASSERT_EQUAL(cuda_nccl_version(&v, &e), 0); /* links and loads without a GPU */
    CU_ASSERT(v >= 20000);
}

/* ---- helpers --------------------------------------------------------- */

#define EW_NMSE 1e-10   /* elementwise and row ops */
#define GEMM_NMSE 1e-8  /* FP32 GEMM (TF32 would give ~1e-6 and fail) */

static uint64_t s_rng = 0x9e3779b97f4a7c15ull;

static float frand(float lo, float hi)
{
    s_rng ^= s_rng >> 12;
    s_rng ^= s_rng << 25;
    s_rng ^= s_rng >> 27;
    uint64_t r = s_rng * 0x2545f4914f6cdd1dull;
    return lo + (hi - lo) * (float)((r >> 40) * (1.0 / 16777216.0));
}

static float *hrand(size_t n, float lo, float hi)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    for (size_t i = 0; i < n; i++)
        p[i] = frand(lo, hi);
    return p;
}

static float *hcopy(const float *src, size_t n)
{
    float *p = malloc((n ? n : 1) * sizeof *p);
    memcpy(p, src, n * sizeof *p);
    return p;
}

/* sum((a-b)^2) / sum(b^2); NaN/inf anywhere in a gives inf; if b is all
 * zeros the absolute sum is returned. */
static double nmse(const float *a, const float *b, size_t n)
{
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) && !(a[i] == b[i]))
            return INFINITY;
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den > 0.0 ? num / den : num;
}

/* Fail the test (fatally: the test function returns) with the DmErr. */
#define OK(call)                                                                                   \
    do {                                                                                           \
        DmErr e_ = {{0}};                                                                          \
        DmErr *err = &e_;                                                                          \
        if ((call) != 0) {                                                                         \
            printf("\n    %s failed: %s\n", #call, e_.msg);                                        \
            CU_FAIL_FATAL(#call);                                                                  \
        }                                                                                          \
        (void)err;                                                                                 \
    } while (0)

#define CHECK_NMSE(val, bound, ...)                                                                \
    do {                                                                                           \
        double v_ = (val);                                                                         \
        if (!(v_ <= (bound))) {                                                                    \
            printf("\n    ");                                                                      \
            printf(__VA_ARGS__);                                                                   \
            printf(": nmse %.3g > %.3g\n", v_, (double)(bound));                                   \
        }                                                                                          \
        CU_ASSERT(v_ <= (bound));                                                                  \
    } while (0)

static float *dup_to_dev(const float *h, size_t n)
{
    void *d = NULL;
    OK(cuda_malloc(&d, n * sizeof(float), err));
    OK(cuda_upload(d, h, n * sizeof(float), err));
    return d;
}

/* Device buffer of n NaNs: outputs must be fully overwritten. */
static float *dev_nan(size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof *h);
    for (size_t i = 0; i < n; i++)
        h[i] = NAN;
    float *d = dup_to_dev(h, n);
    free(h);
    return d;
}

static float *from_dev(const float *d, size_t n)
{
    float *h = malloc((n ? n : 1) * sizeof *h);
    OK(cuda_download(h, d, n * sizeof(float), err));
    return h;
}

/* ---- GEMM ------------------------------------------------------------ */

static void t_linear(void)
{
    static const int shapes[][3] = {/* M, K, N */
                                    {1, 1, 1},     {1, 64, 33},   {7, 13, 5},   {33, 65, 17},
                                    {128, 256, 96}, {3, 1024, 1}, {65, 1, 7},   {1, 1027, 301},
                                    {197, 384, 129}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int withb = 0; withb < 2; withb++) {
            int M = shapes[s][0], K = shapes[s][1], N = shapes[s][2];
            float *x = hrand((size_t)M * K, -1, 1), *W = hrand((size_t)N * K, -0.5f, 0.5f);
            float *b = withb ? hrand(N, -1, 1) : NULL;
            float *ycpu = malloc((size_t)M * N * sizeof *ycpu);
            float *yref = malloc((size_t)M * N * sizeof *yref);
            kern_linear(x, M, K, W, b, N, ycpu);
            kern_linear_ref(x, M, K, W, b, N, yref);
            float *dx = dup_to_dev(x, (size_t)M * K), *dW = dup_to_dev(W, (size_t)N * K);
            float *db = b ? dup_to_dev(b, N) : NULL;
            float *dy = dev_nan((size_t)M * N);
            OK(cuda_linear(dx, M, K, dW, db, N, dy, err));
            float *ygpu = from_dev(dy, (size_t)M * N);
            CHECK_NMSE(nmse(ygpu, ycpu, (size_t)M * N), GEMM_NMSE, "linear M=%d K=%d N=%d bias=%d",
                       M, K, N, withb);
            CHECK_NMSE(nmse(ygpu, yref, (size_t)M * N), GEMM_NMSE,
                       "linear vs ref M=%d K=%d N=%d bias=%d", M, K, N, withb);
            cuda_free(dx), cuda_free(dW), cuda_free(db), cuda_free(dy);
            free(x), free(W), free(b), free(ycpu), free(yref), free(ygpu);
        }
}

/* K = 0: y = bias (or 0), no GEMM. */
static void t_linear_k0(void)
{
    int M = 3, N = 5;
    float *b = hrand(N, -1, 1), yref[15];
    kern_linear_ref(NULL, M, 0, NULL, b, N, yref);
    float *db = dup_to_dev(b, N), *dy = dev_nan(15);
    OK(cuda_linear(NULL, M, 0, NULL, db, N, dy, err));
    float *y = from_dev(dy, 15);
    CU_ASSERT_EQUAL(memcmp(y, yref, sizeof yref), 0);
    OK(cuda_linear(NULL, M, 0, NULL, NULL, N, dy, err));
    free(y);
    /* (dy held the bias rows; a zero result proves they were overwritten) */
    y = from_dev(dy, 15);
    for (int i = 0; i < 15; i++)
        CU_ASSERT_EQUAL(y[i], 0.0f);
    cuda_free(db), cuda_free(dy);
    free(b), free(y);
}

/* Padded leading dims, alpha/beta, both layouts; padding of C untouched. */
static void t_gemm(void)
{
    static const int shapes[][3] = {{1, 1, 1}, {5, 7, 3}, {33, 17, 65}, {64, 96, 128}, {3, 1, 257}};
    static const float ab[][2] = {{1.0f, 0.0f}, {0.7f, -0.3f}, {-1.5f, 1.0f}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (size_t k = 0; k < sizeof ab / sizeof *ab; k++)
            for (int nn = 0; nn < 2; nn++) {
                int M = shapes[s][0], N = shapes[s][1], K = shapes[s][2];
                float alpha = ab[k][0], beta = ab[k][1];
                int lda = K + 3, ldb = (nn ? N : K) + 5, ldc = N + 2;
                int brows = nn ? K : N;
                size_t na = (size_t)M * lda, nb = (size_t)brows * ldb, nc = (size_t)M * ldc;
                float *A = hrand(na, -1, 1), *B = hrand(nb, -1, 1), *C = hrand(nc, -1, 1);
                float *C0 = hcopy(C, nc);
                float *dA = dup_to_dev(A, na), *dB = dup_to_dev(B, nb), *dC = dup_to_dev(C, nc);
                if (nn) {
                    kern_gemm_nn(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                    OK(cuda_gemm_nn(M, N, K, alpha, dA, lda, dB, ldb, beta, dC, ldc, err));
                } else {
                    kern_gemm_nt(M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
                    OK(cuda_gemm_nt(M, N, K, alpha, dA, lda, dB, ldb, beta, dC, ldc, err));
                }
                float *G = from_dev(dC, nc);
                CHECK_NMSE(nmse(G, C, nc), GEMM_NMSE, "gemm_%s M=%d N=%d K=%d alpha=%g beta=%g",
                           nn ? "nn" : "nt", M, N, K, alpha, beta);
                int pad_ok = 1;
                for (int i = 0; i < M; i++)
                    for (int j = N; j < ldc; j++)
                        pad_ok &= G[(size_t)i * ldc + j] == C0[(size_t)i * ldc + j];
                CU_ASSERT(pad_ok);
                cuda_free(dA), cuda_free(dB), cuda_free(dC);
                free(A), free(B), free(C), free(C0), free(G);
            }
}

/* ---- row ops --------------------------------------------------------- */

static void t_layernorm(void)
{
    static const int shapes[][2] = {{1, 1}, {3, 7}, {5, 33}, {17, 1024}, {2, 1500}, {4, 4097},
                                    {300, 128}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++)
        for (int inplace = 0; inplace < 2; inplace++) {
            int rows = shapes[s][0], n = shapes[s][1];
            size_t tot = (size_t)rows * n;
            float eps = inplace ? 1e-6f : 1e-5f;
            float *x = hrand(tot, -2, 2), *g = hrand(n, 0.5f, 1.5f), *b = hrand(n, -1, 1);
            for (size_t i = 0; i < tot; i++) /* an offset mean stresses the two-pass variance */
                x[i] += 3.0f;
            float *ycpu = malloc(tot * sizeof *ycpu);
            kern_layernorm(x, rows, n, g, b, eps, ycpu);
            float *dx = dup_to_dev(x, tot), *dg = dup_to_dev(g, n), *db = dup_to_dev(b, n);
            float *dy = inplace ? dx : dev_nan(tot);
            OK(cuda_layernorm(dx, rows, n, dg, db, eps, dy, err));
            float *ygpu = from_dev(dy, tot);
            CHECK_NMSE(nmse(ygpu, ycpu, tot), EW_NMSE, "layernorm rows=%d n=%d inplace=%d", rows, n,
                       inplace);
            if (!inplace) { /* x untouched */
                float *xg = from_dev(dx, tot);
                CU_ASSERT_EQUAL(memcmp(xg, x, tot * sizeof *x), 0);
                free(xg);
                cuda_free(dy);
            }
            cuda_free(dx), cuda_free(dg), cuda_free(db);
            free(x), free(g), free(b), free(ycpu), free(ygpu);
        }
}

static void t_softmax(void)
{
    static const int shapes[][2] = {{1, 1}, {3, 7}, {4, 1000}, {2, 4097}, {64, 49}, {6, 33}};
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int rows = shapes[s][0], n = shapes[s][1];
        size_t tot = (size_t)rows * n;
        float *x = hrand(tot, -10, 10);
        if (rows >= 3) {
            for (int i = 0; i < n; i += 2) /* row 1: every other entry masked */
                x[(size_t)n + i] = -INFINITY;
            for (int i = 0; i < n; i++) /* row 2: fully masked -> zeros */
                x[(size_t)2 * n + i] = -INFINITY;
        }
        float *ycpu = hcopy(x, tot);
        kern_softmax_rows(ycpu, rows, n);
        float *dx = dup_to_dev(x, tot);
        OK(cuda_softmax_rows(dx, rows, n, err));
        float *ygpu = from_dev(dx, tot);
        CHECK_NMSE(nmse(ygpu, ycpu, tot), EW_NMSE, "softmax rows=%d n=%d", rows, n);
        if (rows >= 3)
            for (int i = 0; i < n; i++)
                CU_ASSERT_EQUAL(ygpu[(size_t)2 * n + i], 0.0f);
        cuda_free(dx);
        free(x), free(ycpu), free(ygpu);
    }
}

/* ---- elementwise ----------------------------------------------------- */

static const size_t EW_SIZES[] = {1, 7, 1025, (1u << 20) + 3};

static void t_gelu(void)
{
    for (size_t s = 0; s < sizeof EW_SIZES / sizeof *EW_SIZES; s++) {
        size_t n = EW_SIZES[s];
        float *x = hrand(n, -8, 8);
        if (n >= 7) {
            x[0] = 0.0f, x[1] = -0.0f, x[2] = 30.0f, x[3] = -30.0f, x[4] = 1e-20f;
        }
        float *ycpu = hcopy(x, n);
        kern_gelu(ycpu, n);
        float *dx = dup_to_dev(x, n);
        OK(cuda_gelu(dx, n, err));
        float *ygpu = from_dev(dx, n);
        CHECK_NMSE(nmse(ygpu, ycpu, n), EW_NMSE, "gelu n=%zu", n);
        cuda_free(dx);
        free(x), free(ycpu), free(ygpu);
    }
}

static void t_add(void)
{
    for (size_t s = 0; s < sizeof EW_SIZES / sizeof *EW_SIZES; s++)
        for (int alias = 0; alias < 2; alias++) {
            size_t n = EW_SIZES[s];
            float *y = hrand(n, -5, 5), *x = alias ? y : hrand(n, -5, 5);
            float *ycpu = hcopy(y, n);
            kern_add(ycpu, alias ? ycpu : x, n);
            float *dy = dup_to_dev(y, n), *dx = alias ? dy : dup_to_dev(x, n);
            OK(cuda_add(dy, dx, n, err));
            float *ygpu = from_dev(dy, n);
            CHECK_NMSE(nmse(ygpu, ycpu, n), EW_NMSE, "add n=%zu alias=%d", n, alias);
            if (!alias)
                cuda_free(dx), free(x);
            cuda_free(dy);
            free(y), free(ycpu), free(ygpu);
        }
}

/* ---- errors, NCCL ---------------------------------------------------- */

static void t_errors(void)
{
    DmErr e = {{0}};
    float *p = NULL;
    CU_ASSERT_EQUAL(cuda_linear(p, -1, 4, p, NULL, 4, p, &e), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "cuda_linear: negative dimension"));
    CU_ASSERT_EQUAL(cuda_gemm_nt(2, 3, 4, 1.0f, p, 3, p, 4, 0.0f, p, 3, &e), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "cuda_gemm_nt: leading dimension too small"));
    CU_ASSERT_EQUAL(cuda_layernorm(p, 2, -3, p, p, 1e-5f, p, &e), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "cuda_layernorm: negative dimension"));
    /* A real CUDA error: the message names the call and CUDA's text. */
    void *d = NULL;
    CU_ASSERT_EQUAL(cuda_malloc(&d, (size_t)1 << 60, &e), -1);
    CU_ASSERT_PTR_NULL(d);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "cuda_malloc: cudaMalloc(1152921504606846976 bytes): "));
    CU_ASSERT_PTR_NOT_NULL(strstr(e.msg, "(cudaError"));
    CU_ASSERT_PTR_NULL(strchr(e.msg, '\n'));
    /* ...and is not sticky: the device still works. */
    OK(cuda_malloc(&d, 64, err));
    OK(cuda_memzero(d, 64, err));
    OK(cuda_sync(err));
    cuda_free(d);
}

/* A one-rank communicator: the sum over ranks is the input. */
static void t_nccl_one_rank(void)
{
    DmNcclId id;
    DmNcclComm *comm = NULL;
    OK(cuda_nccl_unique_id(&id, err));
    OK(cuda_nccl_init(&comm, 1, 0, &id, err));
    CU_ASSERT_EQUAL(cuda_nccl_rank(comm), 0);
    CU_ASSERT_EQUAL(cuda_nccl_size(comm), 1);
    size_t n = 100003;
    float *x = hrand(n, -1, 1);
    float *ds = dup_to_dev(x, n), *dr = NULL;
    OK(cuda_malloc((void **)&dr, n * sizeof(float), err));
    OK(cuda_nccl_allreduce_sum(comm, ds, dr, n, err));
    float *r = from_dev(dr, n);
    CU_ASSERT_EQUAL(memcmp(r, x, n * sizeof *x), 0);
    OK(cuda_nccl_allreduce_sum(comm, ds, ds, n, err)); /* in place */
    free(r);
    r = from_dev(ds, n);
    CU_ASSERT_EQUAL(memcmp(r, x, n * sizeof *x), 0);
    cuda_nccl_destroy(comm);
    cuda_free(ds), cuda_free(dr);
    free(x), free(r);
}

/* ---- registration ---------------------------------------------------- */

static int suite_init(void)
{
    DmErr e = {{0}};
    if (cuda_kern_init(&e)) {
        printf("\ncuda: %s\n", e.msg);
        return 1;
    }
    char desc[256] = "";
    cuda_kern_describe(desc, sizeof desc, &e);
    int v = 0;
    cuda_nccl_version(&v, &e);
    printf("\nCUDA tests on %s (%d device%s), NCCL %d\n", desc, cuda_available(NULL, 0),
           cuda_available(NULL, 0) == 1 ? "" : "s", v);
    return 0;
}

static int suite_cleanup(void)
{
    cuda_kern_shutdown();
    return 0;
}

void tests_cuda(void)
{
    if (cuda_available(s_why, sizeof s_why) <= 0) {
        TU_SUITE("cuda", {"skipped", t_skip_nogpu}, {"errors without a device", t_nogpu_errors});
        return;
    }
    CU_pSuite s = CU_add_suite("cuda", suite_init, suite_cleanup);
    CU_add_test(s, "linear vs kern_linear", t_linear);
    CU_add_test(s, "linear K=0", t_linear_k0);
    CU_add_test(s, "gemm nt/nn padded, alpha/beta", t_gemm);
    CU_add_test(s, "layernorm", t_layernorm);
    CU_add_test(s, "softmax rows (masked)", t_softmax);
    CU_add_test(s, "gelu", t_gelu);
    CU_add_test(s, "add", t_add);
    CU_add_test(s, "errors", t_errors);
    CU_add_test(s, "nccl all-reduce, one rank", t_nccl_one_rank);
}

#endif /* DM_CUDA */
