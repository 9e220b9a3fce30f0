/* bounds.c - run-time measurements of the machine's sgemm rate, memory read
 * bandwidth and FMA peak (see bounds.h). */
#include "kernels/cpu/bounds.h"

#include <cblas.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kern.h"
#include "kernels/cpu/kern_gemm.h"

/* ----------------------------------------------------------------- sgemm */

static void s_fill(float *p, size_t n, uint64_t seed)
{
    uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[i] = (float)((x >> 40) * (1.0 / (1 << 24))) * 2.0f - 1.0f;
    }
}

int bound_sgemm(int M, int N, int K, int reps, double *gflops, DmErr *err)
{
    *gflops = 0.0;
    float *A = malloc((size_t)M * K * sizeof(float));
    float *B = malloc((size_t)N * K * sizeof(float));
    float *C = malloc((size_t)M * N * sizeof(float));
    if (!A || !B || !C) {
        free(A);
        free(B);
        free(C);
        return dm_err(err, "sgemm bound %dx%dx%d: out of memory", M, N, K);
    }
    s_fill(A, (size_t)M * K, 1);
    s_fill(B, (size_t)N * K, 2);
    memset(C, 0, (size_t)M * N * sizeof(float));
    kern_gemm_nt(M, N, K, 1.0f, A, K, B, K, 0.0f, C, N); /* warm-up */
    double best = 1e30;
    for (int r = 0; r < (reps < 1 ? 1 : reps); r++) {
        double t0 = dm_now();
        kern_gemm_nt(M, N, K, 1.0f, A, K, B, K, 0.0f, C, N);
        double t = dm_now() - t0;
        if (t < best)
            best = t;
    }
    *gflops = 2.0 * M * N * (double)K / best * 1e-9;
    free(A);
    free(B);
    free(C);
    return 0;
}

int bound_encoder_gemm(const int *dims, int ndims, int M, int bf16, int reps, double *gflops,
                       DmErr *err)
{
    *gflops = 0.0;
    double flops = 0.0, secs = 0.0;
    int rc = 0;
    for (int d = 0; d < ndims && rc == 0; d++) {
        int C = dims[d];
        int sh[5][2] = {{3 * C, C}, {C, C}, {4 * C, C}, {C, 4 * C}, {2 * C, 4 * C}};
        for (int i = 0; i < 5 && rc == 0; i++) {
            int N = sh[i][0], K = sh[i][1];
            float *x = malloc((size_t)M * K * sizeof *x), *w = malloc((size_t)N * K * sizeof *w);
            float *y = malloc((size_t)M * N * sizeof *y);
            uint16_t *xb = malloc((size_t)M * K * sizeof *xb);
            void *pk = NULL;
            if (!x || !w || !y || !xb) {
                rc = dm_err(err, "encoder GEMM bound %dx%dx%d: out of memory", M, N, K);
            } else {
                s_fill(x, (size_t)M * K, 3);
                s_fill(w, (size_t)N * K, 4);
                rc = kern_gemm_pack(w, NULL, N, K, bf16, &pk, err);
            }
            double best = 1e30;
            for (int r = 0; r <= (reps < 1 ? 1 : reps) && rc == 0; r++) { /* r 0: warm-up */
                double t0 = dm_now();
                rc = kern_gemm_run(pk, x, M, K, NULL, 0, y, N, xb, err);
                double t = dm_now() - t0;
                if (r > 0 && t < best)
                    best = t;
            }
            flops += 2.0 * M * N * (double)K;
            secs += best;
            free(x);
            free(w);
            free(y);
            free(xb);
            free(pk);
        }
    }
    if (rc == 0)
        *gflops = flops / secs * 1e-9;
    return rc;
}

/* ------------------------------------------------------------ thread team */

/* n threads (the caller is thread 0) run fn(ctx, tid) `reps` times; every
 * run starts and ends at a barrier, and thread 0 records the best time.
 * The helpers wait at a start gate until all of them exist, so a failed
 * pthread_create releases the started ones instead of leaving them at a
 * barrier that can never fill. */
typedef struct Team {
    int n, reps;
    void (*fn)(void *ctx, int tid);
    void *ctx;
    pthread_barrier_t bar;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int go, ok;
    double best;
} Team;

typedef struct TeamArg {
    Team *t;
    int tid;
} TeamArg;

static void *s_team_main(void *p)
{
    TeamArg *a = p;
    Team *t = a->t;
    pthread_mutex_lock(&t->mu);
    while (!t->go)
        pthread_cond_wait(&t->cv, &t->mu);
    int ok = t->ok;
    pthread_mutex_unlock(&t->mu);
    if (!ok)
        return NULL;
    for (int r = 0; r < t->reps; r++) {
        pthread_barrier_wait(&t->bar);
        double t0 = a->tid == 0 ? dm_now() : 0.0;
        t->fn(t->ctx, a->tid);
        pthread_barrier_wait(&t->bar);
        if (a->tid == 0) {
            double dt = dm_now() - t0;
            if (dt < t->best)
                t->best = dt;
        }
    }
    return NULL;
}

static int s_team_run(int n, int reps, void (*fn)(void *, int), void *ctx, double *best,
                      DmErr *err)
{
    Team t = {.n = n, .reps = reps, .fn = fn, .ctx = ctx, .best = 1e30};
    pthread_t *th = calloc((size_t)n, sizeof *th);
    TeamArg *args = calloc((size_t)n, sizeof *args);
    if (!th || !args) {
        free(th);
        free(args);
        return dm_err(err, "thread team: out of memory");
    }
    pthread_barrier_init(&t.bar, NULL, (unsigned)n);
    pthread_mutex_init(&t.mu, NULL);
    pthread_cond_init(&t.cv, NULL);
    int started = 1;
    for (int i = 0; i < n; i++)
        args[i] = (TeamArg){&t, i};
    for (int i = 1; i < n; i++, started++)
        if (pthread_create(&th[i], NULL, s_team_main, &args[i]) != 0)
            break;
    pthread_mutex_lock(&t.mu);
    t.go = 1;
    t.ok = started == n;
    pthread_cond_broadcast(&t.cv);
    pthread_mutex_unlock(&t.mu);
    s_team_main(&args[0]);
    for (int i = 1; i < started; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&t.bar);
    pthread_mutex_destroy(&t.mu);
    pthread_cond_destroy(&t.cv);
    free(th);
    free(args);
    if (started < n)
        return dm_err(err, "thread team: could start only %d of %d threads", started, n);
    *best = t.best;
    return 0;
}

/* -------------------------------------------------------- read bandwidth */

typedef float v16f __attribute__((vector_size(64)));

typedef struct ReadCtx {
    const float *buf;
    size_t n;     /* floats, a multiple of 128 * nthreads */
    int nthreads;
    int ask; /* also request each 512 bytes 1 KiB ahead, non-temporally */
    volatile float sink[256];
} ReadCtx;

static void s_slice(size_t n, int nthreads, int tid, size_t *lo, size_t *hi)
{
    size_t per = n / nthreads / 128 * 128;
    *lo = per * tid;
    *hi = tid == nthreads - 1 ? n : *lo + per;
}

static void s_read_fn(void *p, int tid)
{
    ReadCtx *c = p;
    size_t lo, hi;
    s_slice(c->n, c->nthreads, tid, &lo, &hi);
    const v16f *v = (const v16f *)(c->buf + lo);
    size_t nv = (hi - lo) / 16;
    v16f a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0}, a4 = {0}, a5 = {0}, a6 = {0}, a7 = {0};
    for (size_t i = 0; i + 8 <= nv; i += 8) {
        if (c->ask && i + 24 <= nv)
            for (int l = 0; l < 8; l++)
                __builtin_prefetch(&v[i + 16 + l], 0, 0);
        a0 += v[i];
        a1 += v[i + 1];
        a2 += v[i + 2];
        a3 += v[i + 3];
        a4 += v[i + 4];
        a5 += v[i + 5];
        a6 += v[i + 6];
        a7 += v[i + 7];
    }
    v16f s = ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7));
    float f = 0.0f;
    for (int i = 0; i < 16; i++)
        f += s[i];
    c->sink[tid & 255] = f;
}

typedef struct TouchCtx {
    float *buf;
    size_t n;
    int nthreads;
} TouchCtx;

static void s_touch_fn(void *p, int tid)
{
    TouchCtx *c = p;
    size_t lo, hi;
    s_slice(c->n, c->nthreads, tid, &lo, &hi);
    for (size_t i = lo; i < hi; i++)
        c->buf[i] = (float)(i & 1023) * (1.0f / 1024.0f);
}

int bound_read_bandwidth(size_t bytes, int nthreads, int reps, double *gbps, DmErr *err)
{
    *gbps = 0.0;
    if (nthreads < 1)
        nthreads = 1;
    size_t n = bytes / sizeof(float) / (128 * (size_t)nthreads) * (128 * (size_t)nthreads);
    if (n == 0)
        return dm_err(err, "bandwidth bound: buffer of %zu bytes is too small", bytes);
    float *buf = aligned_alloc(4096, (n * sizeof(float) + 4095) / 4096 * 4096);
    if (!buf)
        return dm_err(err, "bandwidth bound: cannot allocate %zu MiB", bytes >> 20);
    double t;
    TouchCtx tc = {buf, n, nthreads};
    /* First touch by the threads that read, then one untimed read. */
    if (s_team_run(nthreads, 1, s_touch_fn, &tc, &t, err)) {
        free(buf);
        return -1;
    }
    ReadCtx *rc = calloc(1, sizeof *rc);
    if (!rc) {
        free(buf);
        return dm_err(err, "bandwidth bound: out of memory");
    }
    rc->buf = buf;
    rc->n = n;
    rc->nthreads = nthreads;
    /* The faster of a plain sequential read and one that asks ahead as the
     * decoder's streaming kernels do (which, on some machines, reads
     * faster than the plain loop: the bound must not be below what the
     * kernels reach). */
    int r = s_team_run(nthreads, 1, s_read_fn, rc, &t, err);
    for (int ask = 0; ask < 2 && !r; ask++) {
        rc->ask = ask;
        r = s_team_run(nthreads, reps < 1 ? 1 : reps, s_read_fn, rc, &t, err);
        double g = r ? 0.0 : (double)n * sizeof(float) / t * 1e-9;
        if (g > *gbps)
            *gbps = g;
    }
    free(rc);
    free(buf);
    return r ? -1 : 0;
}

/* -------------------------------------------------------------- FMA peak */

/* Independent FMA chains in registers: acc = acc * m + c.  m < 1 and c > 0
 * keep the values bounded and normal.  The loop count is opaque to the
 * compiler (volatile), so nothing folds. */
/* Short runs (a few ms) and many of them: on a machine shared with other
 * work the best of many short runs is one that had its cores to itself. */
#define FMA_ITERS_512 1000000L
#define FMA_ITERS_256 1000000L
#define FMA_REPS_PER_REP 20

__attribute__((target("avx512f"))) static float s_fma512(long iters)
{
    __m512 m = _mm512_set1_ps(0.99999994f), c = _mm512_set1_ps(1e-7f);
    /* distinct starting values, or the compiler merges identical chains */
    __m512 a0 = _mm512_set1_ps(1.00f), a1 = _mm512_set1_ps(1.01f), a2 = _mm512_set1_ps(1.02f),
           a3 = _mm512_set1_ps(1.03f), a4 = _mm512_set1_ps(1.04f), a5 = _mm512_set1_ps(1.05f),
           a6 = _mm512_set1_ps(1.06f), a7 = _mm512_set1_ps(1.07f), a8 = _mm512_set1_ps(1.08f),
           a9 = _mm512_set1_ps(1.09f), a10 = _mm512_set1_ps(1.10f), a11 = _mm512_set1_ps(1.11f),
           a12 = _mm512_set1_ps(1.12f), a13 = _mm512_set1_ps(1.13f), a14 = _mm512_set1_ps(1.14f),
           a15 = _mm512_set1_ps(1.15f);
    for (long i = 0; i < iters; i++) {
        a0 = _mm512_fmadd_ps(a0, m, c);
        a1 = _mm512_fmadd_ps(a1, m, c);
        a2 = _mm512_fmadd_ps(a2, m, c);
        a3 = _mm512_fmadd_ps(a3, m, c);
        a4 = _mm512_fmadd_ps(a4, m, c);
        a5 = _mm512_fmadd_ps(a5, m, c);
        a6 = _mm512_fmadd_ps(a6, m, c);
        a7 = _mm512_fmadd_ps(a7, m, c);
        a8 = _mm512_fmadd_ps(a8, m, c);
        a9 = _mm512_fmadd_ps(a9, m, c);
        a10 = _mm512_fmadd_ps(a10, m, c);
        a11 = _mm512_fmadd_ps(a11, m, c);
        a12 = _mm512_fmadd_ps(a12, m, c);
        a13 = _mm512_fmadd_ps(a13, m, c);
        a14 = _mm512_fmadd_ps(a14, m, c);
        a15 = _mm512_fmadd_ps(a15, m, c);
    }
    __m512 s = _mm512_add_ps(
        _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                      _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),
        _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)),
                      _mm512_add_ps(_mm512_add_ps(a12, a13), _mm512_add_ps(a14, a15))));
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static float s_fma256(long iters)
{
    __m256 m = _mm256_set1_ps(0.99999994f), c = _mm256_set1_ps(1e-7f);
    __m256 a0 = _mm256_set1_ps(1.00f), a1 = _mm256_set1_ps(1.01f), a2 = _mm256_set1_ps(1.02f),
           a3 = _mm256_set1_ps(1.03f), a4 = _mm256_set1_ps(1.04f), a5 = _mm256_set1_ps(1.05f),
           a6 = _mm256_set1_ps(1.06f), a7 = _mm256_set1_ps(1.07f), a8 = _mm256_set1_ps(1.08f),
           a9 = _mm256_set1_ps(1.09f), a10 = _mm256_set1_ps(1.10f), a11 = _mm256_set1_ps(1.11f);
    for (long i = 0; i < iters; i++) {
        a0 = _mm256_fmadd_ps(a0, m, c);
        a1 = _mm256_fmadd_ps(a1, m, c);
        a2 = _mm256_fmadd_ps(a2, m, c);
        a3 = _mm256_fmadd_ps(a3, m, c);
        a4 = _mm256_fmadd_ps(a4, m, c);
        a5 = _mm256_fmadd_ps(a5, m, c);
        a6 = _mm256_fmadd_ps(a6, m, c);
        a7 = _mm256_fmadd_ps(a7, m, c);
        a8 = _mm256_fmadd_ps(a8, m, c);
        a9 = _mm256_fmadd_ps(a9, m, c);
        a10 = _mm256_fmadd_ps(a10, m, c);
        a11 = _mm256_fmadd_ps(a11, m, c);
    }
    __m256 s = _mm256_add_ps(
        _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
        _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)),
                      _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11))));
    float f[8];
    _mm256_storeu_ps(f, s);
    return f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7];
}

/* bf16 dot products: each vdpbf16ps adds the 32 products of bf16 pairs into
 * 16 float32 lanes (64 flops).  a*b is tiny, so the sums stay small. */
#define DPBF16_ITERS 1000000L

__attribute__((target("avx512f,avx512bf16"))) static float s_dpbf16(long iters)
{
    __m512bh a = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-5f), _mm512_set1_ps(2e-5f));
    __m512bh b = _mm512_cvtne2ps_pbh(_mm512_set1_ps(3e-6f), _mm512_set1_ps(1e-6f));
    __m512 a0 = _mm512_set1_ps(1.00f), a1 = _mm512_set1_ps(1.01f), a2 = _mm512_set1_ps(1.02f),
           a3 = _mm512_set1_ps(1.03f), a4 = _mm512_set1_ps(1.04f), a5 = _mm512_set1_ps(1.05f),
           a6 = _mm512_set1_ps(1.06f), a7 = _mm512_set1_ps(1.07f), a8 = _mm512_set1_ps(1.08f),
           a9 = _mm512_set1_ps(1.09f), a10 = _mm512_set1_ps(1.10f), a11 = _mm512_set1_ps(1.11f),
           a12 = _mm512_set1_ps(1.12f), a13 = _mm512_set1_ps(1.13f), a14 = _mm512_set1_ps(1.14f),
           a15 = _mm512_set1_ps(1.15f);
    for (long i = 0; i < iters; i++) {
        a0 = _mm512_dpbf16_ps(a0, a, b);
        a1 = _mm512_dpbf16_ps(a1, a, b);
        a2 = _mm512_dpbf16_ps(a2, a, b);
        a3 = _mm512_dpbf16_ps(a3, a, b);
        a4 = _mm512_dpbf16_ps(a4, a, b);
        a5 = _mm512_dpbf16_ps(a5, a, b);
        a6 = _mm512_dpbf16_ps(a6, a, b);
        a7 = _mm512_dpbf16_ps(a7, a, b);
        a8 = _mm512_dpbf16_ps(a8, a, b);
        a9 = _mm512_dpbf16_ps(a9, a, b);
        a10 = _mm512_dpbf16_ps(a10, a, b);
        a11 = _mm512_dpbf16_ps(a11, a, b);
        a12 = _mm512_dpbf16_ps(a12, a, b);
        a13 = _mm512_dpbf16_ps(a13, a, b);
        a14 = _mm512_dpbf16_ps(a14, a, b);
        a15 = _mm512_dpbf16_ps(a15, a, b);
    }
    __m512 s = _mm512_add_ps(
        _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                      _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),
        _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)),
                      _mm512_add_ps(_mm512_add_ps(a12, a13), _mm512_add_ps(a14, a15))));
    return _mm512_reduce_add_ps(s);
}

typedef struct FmaCtx {
    int wide; /* 2: AVX512-BF16 dot products, 1: AVX-512, 0: AVX2 */
    volatile long iters;
    volatile float sink[256];
} FmaCtx;

static void s_fma_fn(void *p, int tid)
{
    FmaCtx *c = p;
    c->sink[tid & 255] = c->wide == 2   ? s_dpbf16(c->iters)
                         : c->wide == 1 ? s_fma512(c->iters)
                                        : s_fma256(c->iters);
}

int bound_fma_peak(const char *isa, int nthreads, int reps, double *gflops, DmErr *err)
{
    *gflops = 0.0;
    int wide;
    __builtin_cpu_init();
    if (!strcmp(isa, "avx512f")) {
        wide = 1;
        if (!__builtin_cpu_supports("avx512f"))
            return 0;
    } else if (!strcmp(isa, "avx512bf16")) {
        wide = 2;
        if (!__builtin_cpu_supports("avx512bf16"))
            return 0;
    } else if (!strcmp(isa, "avx2")) {
        wide = 0;
        if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma"))
            return 0;
    } else {
        return dm_err(err, "FMA peak: unknown ISA %s (avx512bf16, avx512f, avx2)", isa);
    }
    if (nthreads < 1)
        nthreads = 1;
    FmaCtx *c = calloc(1, sizeof *c);
    if (!c)
        return dm_err(err, "FMA peak: out of memory");
    c->wide = wide;
    c->iters = 200000; /* warm-up: wakes the vector units and clocks */
    double t;
    int rc = s_team_run(nthreads, 1, s_fma_fn, c, &t, err);
    if (!rc) {
        c->iters = wide == 2 ? DPBF16_ITERS : wide ? FMA_ITERS_512 : FMA_ITERS_256;
        rc = s_team_run(nthreads, (reps < 1 ? 1 : reps) * FMA_REPS_PER_REP, s_fma_fn, c, &t, err);
    }
    if (!rc) {
        double flops_per_iter = wide == 2 ? 16.0 * 32 * 2 : wide ? 16.0 * 16 * 2 : 12.0 * 8 * 2;
        *gflops = (double)c->iters * flops_per_iter * nthreads / t * 1e-9;
    }
    free(c);
    return rc;
}

/* ------------------------------------------------------------ what ran */

void bound_blas_info(BlasInfo *bi)
{
    bi->config = openblas_get_config();
    bi->corename = openblas_get_corename();
    bi->threads = openblas_get_num_threads();
    int par = openblas_get_parallel();
    bi->parallel = par == 0 ? "serial" : par == 1 ? "pthreads" : par == 2 ? "OpenMP" : "unknown";
}

void bound_cpu_features(char *buf, size_t n)
{
    static const char *names[] = {"sse4.2", "avx", "avx2", "fma", "avx512f", "avx512dq",
                                  "avx512bw", "avx512vl", "avx512vnni", "avx512bf16"};
    __builtin_cpu_init();
    int has[sizeof names / sizeof *names] = {
        __builtin_cpu_supports("sse4.2"),   __builtin_cpu_supports("avx"),
        __builtin_cpu_supports("avx2"),     __builtin_cpu_supports("fma"),
        __builtin_cpu_supports("avx512f"),  __builtin_cpu_supports("avx512dq"),
        __builtin_cpu_supports("avx512bw"), __builtin_cpu_supports("avx512vl"),
        __builtin_cpu_supports("avx512vnni"), __builtin_cpu_supports("avx512bf16"),
    };
    size_t used = 0;
    if (n)
        buf[0] = 0;
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        if (!has[i])
            continue;
        int k = snprintf(buf + used, n > used ? n - used : 0, "%s%s", used ? " " : "", names[i]);
        if (k < 0 || used + (size_t)k >= n)
            break;
        used += (size_t)k;
    }
}
