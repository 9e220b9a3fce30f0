/* test_cache.c - the teacher-logit cache: record key and layout
 * (stage_cache.h, logit_store.h), and the distillation loss from the
 * cache (kd_loss.h) against the golden HF loss of tiny-a/train.safetensors:
 * kd = tau^2 * mean_t KL(softmax(teacher/tau) || softmax(student/tau)),
 * tau = 2, student = caseK.decoder.logits of expected.safetensors. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kd_loss.h"
#include "logit_store.h"
#include "stage_cache.h"
#include "tutil.h"

static void test_key(void)
{
    unsigned char k[LOGIT_KEY_LEN];
    logit_key(0x0102030405060708LL, 0x0a0b, k);
    static const unsigned char want[LOGIT_KEY_LEN] = {1, 2, 3, 4, 5, 6, 7, 8, 0x0a, 0x0b};
    CU_ASSERT_EQUAL(memcmp(k, want, sizeof want), 0);
    int64_t q;
    unsigned a;
    logit_key_parse(k, &q, &a);
    CU_ASSERT_EQUAL(q, 0x0102030405060708LL);
    CU_ASSERT_EQUAL(a, 0x0a0b);
}

/* Fill a record from synthetic logits, pack, unpack, read it back. */
static void s_layout(int V, int top_k)
{
    int n = 6, a0 = 2, P = n - 1 - a0;
    int32_t ids[6] = {5, 6, 7, 8, 9, 2};
    float *lg = malloc((size_t)n * V * sizeof *lg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(lg);
    for (int t = 0; t < n; t++)
        for (int v = 0; v < V; v++)
            lg[(size_t)t * V + v] = (float)(sin(0.37 * v + 1.3 * t) * 4.0 + (v == 60000 % V) * 9);
    CacheOpts o = {.top_k = top_k, .n_temps = 2, .temps = {1.0, 2.0}};
    Docmint__LogitRecord r;
    docmint__logit_record__init(&r);
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(cache_fill_record(&o, V, ids, n, a0, lg, &r, &err), 0);
    uint8_t *buf = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(logit_record_pack(&r, &buf, &len, &err), 0);
    Docmint__LogitRecord *u = logit_record_unpack(buf, len, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(u);
    int full = top_k == 0 || top_k >= V, K = full ? V : top_k;
    CU_ASSERT_EQUAL(logit_record_positions(u), P);
    CU_ASSERT_EQUAL(u->k, (uint32_t)K);
    CU_ASSERT_EQUAL(u->full, full);
    CU_ASSERT_EQUAL(u->id_bytes, full ? 0u : V <= 65536 ? 2u : 4u);
    CU_ASSERT_EQUAL(u->top_logits.len, (size_t)P * K * 2);
    CU_ASSERT_EQUAL(logit_record_temp_index(u, 2.0), 1);
    for (int p = 0; p < P; p++) {
        const float *row = lg + (size_t)(a0 + p) * V;
        CU_ASSERT_EQUAL(u->targets[p], ids[a0 + p + 1]);
        for (int ti = 0; ti < 2; ti++)
            CU_ASSERT(fabs(u->lse[p * 2 + ti] - kd_lse(row, V, o.temps[ti])) < 1e-5);
        float prev = INFINITY;
        for (int i = 0; i < K; i++) {
            uint32_t id = logit_record_id(u, p, i);
            double v = logit_record_value(u, p, i);
            CU_ASSERT(id < (uint32_t)V);
            CU_ASSERT(fabs(v - row[id]) <= fabs(row[id] - u->shift[p]) * ldexp(1.0, -11) + 1e-6);
            if (!full) { /* largest first, and nothing larger left out */
                CU_ASSERT(row[id] <= prev);
                prev = row[id];
            }
        }
        if (!full) { /* the left-out mass, exactly */
            for (int ti = 0; ti < 2; ti++) {
                double T = o.temps[ti], rest = 0, all = exp(u->lse[p * 2 + ti]);
                for (int i = 0; i < K; i++)
                    rest += exp(row[logit_record_id(u, p, i)] / T);
                CU_ASSERT(fabs(exp(u->lse_rest[p * 2 + ti]) - (all - rest)) <= 1e-5 * all);
            }
            int above = 0;
            for (int v = 0; v < V; v++)
                above += row[v] > prev;
            CU_ASSERT(above <= K - 1);
        }
    }
    logit_record_free(&u);
    free(buf);
    cache_record_clear(&r);
    free(lg);
}

static void test_layout_u16(void) { s_layout(300, 8); }
static void test_layout_u32(void) { s_layout(70000, 16); }
static void test_layout_full(void) { s_layout(300, 0); }

/* kd from full float32 logits and from the cache (full and top-k) for
 * case K, against the golden caseK.loss.kd. */
static void s_golden(int K)
{
    DmErr err = {{0}};
    TensorFile *tr = NULL, *ex = NULL;
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/train.safetensors", &tr, &err), 0);
    CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/expected.safetensors", &ex, &err), 0);
    char name[96];
    snprintf(name, sizeof name, "case%d.teacher_logits", K);
    const DmTensor *tt = tensorfile_find(tr, name);
    snprintf(name, sizeof name, "case%d.decoder.logits", K);
    const DmTensor *st = tensorfile_find(ex, name);
    snprintf(name, sizeof name, "case%d.loss.kd", K);
    const DmTensor *kt = tensorfile_find(tr, name);
    snprintf(name, sizeof name, "case%d.decoder_input_ids", K);
    const DmTensor *it = tensorfile_find(ex, name);
    CU_ASSERT_FATAL(tt && st && kt && it);
    int T = (int)tt->shape[1], V = (int)tt->shape[2], a = T / 2, P = T - 1 - a;
    float *t = malloc((size_t)T * V * sizeof *t), *s = malloc((size_t)T * V * sizeof *s), kd;
    int64_t *ids64 = malloc((size_t)T * sizeof *ids64);
    int32_t *ids = malloc((size_t)T * sizeof *ids);
    CU_ASSERT_FATAL(t && s && ids64 && ids);
    CU_ASSERT_EQUAL_FATAL(dm_tensor_to_f32(tt, t, &err), 0);
    CU_ASSERT_EQUAL_FATAL(dm_tensor_to_f32(st, s, &err), 0);
    CU_ASSERT_EQUAL_FATAL(dm_tensor_to_f32(kt, &kd, &err), 0);
    CU_ASSERT_EQUAL_FATAL(dm_tensor_to_i64(it, ids64, &err), 0);
    for (int i = 0; i < T; i++)
        ids[i] = (int32_t)ids64[i];
    const double tau = 2.0;
    double live = 0;
    for (int p = a; p <= T - 2; p++)
        live += kd_kl_full(t + (size_t)p * V, s + (size_t)p * V, V, tau);
    live *= tau * tau / P;
    CU_ASSERT(fabs(live - kd) <= 2e-4);
    /* The cache's positions are exactly the golden loss positions a..T-2
     * when the answer starts at a. */
    static const int ks[] = {8, 32, 64, 256, 0};
    double full_c = 0;
    for (int j = 0; j < 5; j++) {
        CacheOpts o = {.top_k = ks[j], .n_temps = 2, .temps = {1.0, tau}};
        Docmint__LogitRecord r;
        docmint__logit_record__init(&r);
        CU_ASSERT_EQUAL_FATAL(cache_fill_record(&o, V, ids, T, a, t, &r, &err), 0);
        CU_ASSERT_EQUAL(logit_record_positions(&r), P);
        int k = (int)r.k;
        double *vals = malloc((size_t)k * sizeof *vals);
        uint32_t *kid = malloc((size_t)k * sizeof *kid);
        double c = 0;
        for (int p = 0; p < P; p++) {
            for (int i = 0; i < k; i++) {
                vals[i] = logit_record_value(&r, p, i);
                kid[i] = logit_record_id(&r, p, i);
            }
            double rest = r.full ? -INFINITY : r.lse_rest[p * 2 + 1];
            c += kd_kl_topk(vals, kid, k, r.lse[p * 2 + 1], rest, s + (size_t)(a + p) * V, V, tau);
        }
        c *= tau * tau / P;
        if (ks[j] == 0) {
            full_c = c;
            /* float16 teacher logits: within 2e-4 of the golden kd */
            CU_ASSERT(fabs(c - kd) <= 2e-4);
            printf("\n    case%d kd golden %.6f live %.6f cache full %.6f (err %.2e)", K, kd, live,
                   c, fabs(c - kd));
        } else {
            /* the bucketed KL is a lower bound of the full KL (up to the
             * float16 rounding of the kept logits, as at full) */
            CU_ASSERT(c <= live + 4e-4);
            printf("\n    case%d k %3d: kd %.6f, error %.3e", K, ks[j], c, live - c);
        }
        free(vals);
        free(kid);
        cache_record_clear(&r);
    }
    (void)full_c;
    free(t);
    free(s);
    free(ids64);
    free(ids);
    tensorfile_close(&tr);
    tensorfile_close(&ex);
}

static void test_golden_kd(void)
{
    for (int K = 0; K < 3; K++)
        s_golden(K);
}

/* kd_topk: the k largest, largest first, ties to the lower id. */
static void test_topk(void)
{
    float x[7] = {1, 5, 3, 5, -2, 4, 0};
    uint32_t idx[4];
    kd_topk(x, 7, 4, idx);
    CU_ASSERT(idx[0] == 1 && idx[1] == 3 && idx[2] == 5 && idx[3] == 2);
}

void tests_cache(void)
{
    TU_SUITE("cache", {"logit key: qid BE8 + answer BE2", test_key},
             {"record layout, u16 ids", test_layout_u16},
             {"record layout, u32 ids", test_layout_u32}, {"record layout, full", test_layout_full},
             {"top-k selection", test_topk},
             {"kd from cache vs golden HF loss (tau 2)", test_golden_kd});
}
