/* kern_gemm.c - the encoder's GEMM backend on oneDNN matmul (kern_gemm.h).
 *
 * One CPU engine per process; a stream per thread (streams are not shared
 * between threads).  A primitive depends only on the shapes, strides,
 * precision and epilogue, not on the weight values, so one primitive serves
 * every block of a stage: primitives are kept in a process-wide table keyed
 * by those (never evicted while the process runs: executing primitives are
 * thread-safe and another thread may be using one; when the table is full
 * a primitive is made for the call and destroyed after it). */
#include "kernels/cpu/kern_gemm.h"

#include <dnnl.h>
#include <dnnl_debug.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "common/tensorfile.h"

#if defined(__AVX512BF16__)
#include <immintrin.h>
#endif

#define PACK_MAGIC 0x4b47454du /* "MEGK" */
#define PACK_REF_M 4096        /* rows the weight layout is chosen for */
#define PRIM_CACHE 256

typedef struct PackHdr {
    uint32_t magic;
    int N, K, bf16;
    size_t bytes;           /* of the packed weights after the header */
    dnnl_memory_desc_t wmd; /* their layout */
} PackHdr;

/* the weights start at the first multiple of 64 after the header */
#define PACK_DATA_OFF ((sizeof(PackHdr) + 63) / 64 * 64)

static pthread_once_t s_once = PTHREAD_ONCE_INIT;
static dnnl_engine_t s_engine;
static dnnl_status_t s_engine_st;
/* destroys a thread's stream when the thread ends (threads that encode
 * come and go: the in-process worker, concurrent callers) */
static pthread_key_t s_stream_key;

static void s_stream_end(void *stream) { dnnl_stream_destroy(stream); }

static void s_engine_init(void)
{
    s_engine_st = dnnl_engine_create(&s_engine, dnnl_cpu, 0);
    if (s_engine_st == dnnl_success && pthread_key_create(&s_stream_key, s_stream_end) != 0)
        s_engine_st = dnnl_out_of_memory;
}

static _Thread_local dnnl_stream_t t_stream;

static int s_fail(DmErr *err, const char *what, dnnl_status_t st)
{
    return dm_err(err, "kern_gemm: oneDNN %s: %s", what, dnnl_status2str(st));
}

static int s_ready(DmErr *err)
{
    pthread_once(&s_once, s_engine_init);
    if (s_engine_st != dnnl_success)
        return s_fail(err, "CPU engine", s_engine_st);
    if (!t_stream) {
        dnnl_status_t st = dnnl_stream_create(&t_stream, s_engine, dnnl_stream_default_flags);
        if (st != dnnl_success)
            return s_fail(err, "stream", st);
        pthread_setspecific(s_stream_key, t_stream);
    }
    return 0;
}

/* matmul primitive descriptor for M rows; wmd NULL lets oneDNN choose the
 * weight layout (format any). */
static dnnl_status_t s_matmul_pd(int M, int N, int K, int ldx, int ldy, int bf16, int has_bias,
                                 int flags, const dnnl_memory_desc_t *wmd,
                                 dnnl_primitive_desc_t *pd)
{
    dnnl_memory_desc_t src, wei, bias, dst;
    dnnl_data_type_t dt = bf16 ? dnnl_bf16 : dnnl_f32;
    dnnl_dims_t sd = {M, K}, ss = {ldx, 1}, wd = {K, N}, bd = {1, N}, dd = {M, N},
                ds = {ldy, 1};
    dnnl_status_t st;
    if ((st = dnnl_memory_desc_init_by_strides(&src, 2, sd, dt, ss)) ||
        (st = dnnl_memory_desc_init_by_strides(&dst, 2, dd, dnnl_f32, ds)) ||
        (st = dnnl_memory_desc_init_by_tag(&bias, 2, bd, dnnl_f32, dnnl_ab)))
        return st;
    if (wmd)
        wei = *wmd;
    else if ((st = dnnl_memory_desc_init_by_tag(&wei, 2, wd, dt, dnnl_format_tag_any)))
        return st;
    dnnl_matmul_desc_t md;
    if ((st = dnnl_matmul_desc_init(&md, &src, &wei, has_bias ? &bias : NULL, &dst)))
        return st;
    dnnl_primitive_attr_t attr = NULL;
    dnnl_post_ops_t po = NULL;
    if ((st = dnnl_primitive_attr_create(&attr)) || (st = dnnl_post_ops_create(&po)))
        goto out;
    if ((flags & KG_GELU) &&
        (st = dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_gelu_erf, 0.0f, 0.0f)))
        goto out;
    if ((flags & KG_ACC) && (st = dnnl_post_ops_append_sum(po, 1.0f)))
        goto out;
    if ((st = dnnl_primitive_attr_set_post_ops(attr, po)))
        goto out;
    st = dnnl_primitive_desc_create(pd, &md, attr, s_engine, NULL);
out:
    if (po)
        dnnl_post_ops_destroy(po);
    if (attr)
        dnnl_primitive_attr_destroy(attr);
    return st;
}

int kern_gemm_pack(const float *w, const uint16_t *wbf, int N, int K, int bf16, void **packed,
                   DmErr *err)
{
    *packed = NULL;
    if (N < 1 || K < 1 || (!w && !(bf16 && wbf)))
        return dm_err(err, "kern_gemm_pack: bad weights (%d x %d)", N, K);
    if (s_ready(err))
        return -1;
    dnnl_primitive_desc_t pd = NULL, rpd = NULL;
    dnnl_primitive_t reorder = NULL;
    dnnl_memory_t msrc = NULL, mdst = NULL;
    PackHdr *h = NULL;
    const char *what = "matmul for packing";
    dnnl_status_t st = s_matmul_pd(PACK_REF_M, N, K, K, N, bf16, 0, 0, NULL, &pd);
    if (st)
        goto fail;
    const dnnl_memory_desc_t *wmd = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
    size_t bytes = dnnl_memory_desc_get_size(wmd);
    h = NULL;
    if (posix_memalign((void **)&h, 64, PACK_DATA_OFF + bytes) != 0) {
        dnnl_primitive_desc_destroy(pd);
        return dm_err(err, "kern_gemm_pack: out of memory (%zu bytes of %d x %d weights)", bytes,
                      N, K);
    }
    memset(h, 0, PACK_DATA_OFF);
    h->magic = PACK_MAGIC;
    h->N = N;
    h->K = K;
    h->bf16 = bf16;
    h->bytes = bytes;
    h->wmd = *wmd;
    /* the user's [N, K] row-major weights are the [K, N] matrix in "ba" */
    dnnl_memory_desc_t umd;
    dnnl_dims_t wd = {K, N};
    int from_bf = bf16 && wbf;
    what = "weight reorder";
    if ((st = dnnl_memory_desc_init_by_tag(&umd, 2, wd, from_bf ? dnnl_bf16 : dnnl_f32, dnnl_ba)) ||
        (st = dnnl_reorder_primitive_desc_create(&rpd, &umd, s_engine, &h->wmd, s_engine, NULL)) ||
        (st = dnnl_primitive_create(&reorder, rpd)) ||
        (st = dnnl_memory_create(&msrc, &umd, s_engine, from_bf ? (void *)wbf : (void *)w)) ||
        (st = dnnl_memory_create(&mdst, &h->wmd, s_engine, (char *)h + PACK_DATA_OFF)))
        goto fail;
    dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, msrc}, {DNNL_ARG_TO, mdst}};
    if ((st = dnnl_primitive_execute(reorder, t_stream, 2, args)) ||
        (st = dnnl_stream_wait(t_stream)))
        goto fail;
fail:
    if (msrc)
        dnnl_memory_destroy(msrc);
    if (mdst)
        dnnl_memory_destroy(mdst);
    if (reorder)
        dnnl_primitive_destroy(reorder);
    if (rpd)
        dnnl_primitive_desc_destroy(rpd);
    if (pd)
        dnnl_primitive_desc_destroy(pd);
    if (st) {
        free(h);
        return s_fail(err, what, st);
    }
    *packed = h;
    return 0;
}

void kern_gemm_packed_shape(const void *packed, int *N, int *K, int *bf16)
{
    const PackHdr *h = packed;
    *N = h->N;
    *K = h->K;
    *bf16 = h->bf16;
}

/* ------------------------------------------------------ primitive table */

typedef struct PrimKey {
    int M, N, K, ldx, ldy, bf16, has_bias, flags;
} PrimKey;

static struct {
    pthread_mutex_t mu;
    int n;
    PrimKey key[PRIM_CACHE];
    dnnl_primitive_t prim[PRIM_CACHE];
} s_prims = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The primitive for key; *owned set when the caller must destroy it. */
static dnnl_status_t s_prim_get(const PrimKey *k, const dnnl_memory_desc_t *wmd,
                                dnnl_primitive_t *prim, int *owned)
{
    *owned = 0;
    pthread_mutex_lock(&s_prims.mu);
    for (int i = 0; i < s_prims.n; i++)
        if (!memcmp(&s_prims.key[i], k, sizeof *k)) {
            *prim = s_prims.prim[i];
            pthread_mutex_unlock(&s_prims.mu);
            return dnnl_success;
        }
    pthread_mutex_unlock(&s_prims.mu);
    dnnl_primitive_desc_t pd;
    dnnl_status_t st = s_matmul_pd(k->M, k->N, k->K, k->ldx, k->ldy, k->bf16, k->has_bias,
                                   k->flags, wmd, &pd);
    if (st)
        return st;
    st = dnnl_primitive_create(prim, pd);
    dnnl_primitive_desc_destroy(pd);
    if (st)
        return st;
    pthread_mutex_lock(&s_prims.mu);
    for (int i = 0; i < s_prims.n; i++) /* another thread may have added it */
        if (!memcmp(&s_prims.key[i], k, sizeof *k)) {
            dnnl_primitive_destroy(*prim);
            *prim = s_prims.prim[i];
            pthread_mutex_unlock(&s_prims.mu);
            return dnnl_success;
        }
    if (s_prims.n < PRIM_CACHE) {
        s_prims.key[s_prims.n] = *k;
        s_prims.prim[s_prims.n++] = *prim;
    } else {
        *owned = 1;
    }
    pthread_mutex_unlock(&s_prims.mu);
    return dnnl_success;
}

void kern_f32_to_bf16_n(const float *x, size_t n, uint16_t *y)
{
    size_t i = 0;
#if defined(__AVX512BF16__)
    for (; i + 32 <= n; i += 32) {
        __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
        _mm512_storeu_si512((void *)(y + i), (__m512i)v);
    }
#endif
    for (; i < n; i++)
        y[i] = dm_f32_to_bf16(x[i]);
}

int kern_gemm_run(const void *packed, const float *x, int M, int ldx, const float *bias, int flags,
                  float *y, int ldy, uint16_t *xbf, DmErr *err)
{
    const PackHdr *h = packed;
    if (!h || h->magic != PACK_MAGIC)
        return dm_err(err, "kern_gemm_run: not a packed weight block");
    if (M < 1)
        return 0;
    if (ldx < h->K || ldy < h->N)
        return dm_err(err, "kern_gemm_run: row strides %d/%d below %d x %d", ldx, ldy, h->N,
                      h->K);
    if (s_ready(err))
        return -1;
    int K = h->K;
    uint16_t *own = NULL;
    const void *src = x;
    int lds = ldx;
    if (h->bf16) {
        if (!xbf) {
            own = malloc((size_t)M * K * sizeof *own);
            if (!own)
                return dm_err(err, "kern_gemm_run: out of memory (%d x %d bf16)", M, K);
            xbf = own;
        }
#pragma omp parallel for schedule(static)
        for (int r = 0; r < M; r++)
            kern_f32_to_bf16_n(x + (size_t)r * ldx, K, xbf + (size_t)r * K);
        src = xbf;
        lds = K;
    }
    PrimKey k = {M, h->N, K, lds, ldy, h->bf16, bias != NULL, flags};
    dnnl_primitive_t prim = NULL;
    int owned = 0;
    dnnl_memory_t ms = NULL, mw = NULL, mb = NULL, md = NULL;
    const char *what = "matmul";
    dnnl_status_t st = s_prim_get(&k, &h->wmd, &prim, &owned);
    if (st)
        goto out;
    const_dnnl_primitive_desc_t pd;
    what = "matmul memory";
    if ((st = dnnl_primitive_get_primitive_desc(prim, &pd)) ||
        (st = dnnl_memory_create(&ms, dnnl_primitive_desc_query_md(pd, dnnl_query_src_md, 0),
                                 s_engine, (void *)src)) ||
        (st = dnnl_memory_create(&mw, &h->wmd, s_engine, (char *)h + PACK_DATA_OFF)) ||
        (st = dnnl_memory_create(&md, dnnl_primitive_desc_query_md(pd, dnnl_query_dst_md, 0),
                                 s_engine, y)))
        goto out;
    if (bias &&
        (st = dnnl_memory_create(&mb, dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 1),
                                 s_engine, (void *)bias)))
        goto out;
    dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, md},
                               {DNNL_ARG_BIAS, mb}};
    what = "matmul";
    if ((st = dnnl_primitive_execute(prim, t_stream, bias ? 4 : 3, args)))
        goto out;
    st = dnnl_stream_wait(t_stream);
out:
    if (ms)
        dnnl_memory_destroy(ms);
    if (mw)
        dnnl_memory_destroy(mw);
    if (mb)
        dnnl_memory_destroy(mb);
    if (md)
        dnnl_memory_destroy(md);
    if (owned)
        dnnl_primitive_destroy(prim);
    free(own);
    if (st)
        return dm_err(err, "kern_gemm: oneDNN %s (%d x %d x %d%s): %s", what, M, h->N, K,
                      h->bf16 ? ", bf16" : "", dnnl_status2str(st));
    return 0;
}

void kern_gemm_ref(const float *W, const uint16_t *wbf, int N, int K, int bf16, const float *x,
                   int M, int ldx, const float *bias, int flags, float *y, int ldy)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) {
                float a = x[(size_t)i * ldx + k];
                float b = wbf ? dm_bf16_to_f32(wbf[(size_t)j * K + k]) : W[(size_t)j * K + k];
                if (bf16) {
                    a = dm_bf16_to_f32(dm_f32_to_bf16(a));
                    b = dm_bf16_to_f32(dm_f32_to_bf16(b));
                }
                acc += (double)a * b;
            }
            if (bias)
                acc += bias[j];
            if (flags & KG_GELU)
                acc = 0.5 * acc * (1.0 + erf(acc * M_SQRT1_2));
            float *d = y + (size_t)i * ldy + j;
            *d = (flags & KG_ACC) ? *d + (float)acc : (float)acc;
        }
}
