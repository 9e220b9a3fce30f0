/* test_cache.c - the teacher-logit cache: record key and layout
 * (stage_cache.h, logit_store.h), and the distillation loss from the
 * cache (kd_loss.h) against the golden HF loss of tiny-a/train.safetensors:
 * kd = tau^2 * mean_t KL(softmax(teacher/tau) || softmax(student/tau)),
 * tau = 2, student = caseK.decoder.logits of expected.safetensors.
 * The page block (cache_forward_page) against HF's logits and against its
 * plain twin (one cache_forward per sequence); the feature store against
 * the live encoder (swin_encode on the reference pixel values). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "worker/model/donut.h"
#include "worker/train/kd_loss.h"
#include "common/logit_store.h"
#include "coordinator/results.h"
#include "worker/stages/stage_cache.h"
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
    CU_ASSERT_EQUAL_FATAL(cache_fill_record(&o, V, ids, n, a0, lg + (size_t)a0 * V, &r, &err), 0);
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
        CU_ASSERT_EQUAL_FATAL(cache_fill_record(&o, V, ids, T, a, t + (size_t)a * V, &r, &err), 0);
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


/* ---- the page block ------------------------------------------------- */

static DonutModel *s_model;
static TensorFile *s_exp;

static void s_open_tiny(void)
{
    DmErr err = {{0}};
    if (!s_model)
        CU_ASSERT_EQUAL_FATAL(donut_load(TU_TINY, &s_model, &err), 0);
    if (!s_exp)
        CU_ASSERT_EQUAL_FATAL(tensorfile_open(TU_TINY "/expected.safetensors", &s_exp, &err), 0);
}

static const DmTensor *s_find(const char *fmt, int k)
{
    char name[96];
    snprintf(name, sizeof name, fmt, k);
    const DmTensor *t = tensorfile_find(s_exp, name);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    return t;
}

static int32_t *s_case_ids(int k, int *n)
{
    const DmTensor *t = s_find("case%d.decoder_input_ids", k);
    *n = (int)dm_tensor_numel(t);
    int64_t *v = malloc((size_t)*n * sizeof *v);
    int32_t *ids = malloc((size_t)*n * sizeof *ids);
    DmErr err;
    CU_ASSERT_FATAL(v && ids && dm_tensor_to_i64(t, v, &err) == 0);
    for (int i = 0; i < *n; i++)
        ids[i] = (int32_t)v[i];
    free(v);
    return ids;
}

/* Each golden case alone: the block's rows a..T-2 are HF's logits there. */
static void test_block_golden(void)
{
    s_open_tiny();
    int V = s_model->cfg.dec.vocab;
    for (int k = 0; k < 3; k++) {
        const DmTensor *enc = s_find("case%d.encoder.last_hidden_state", k);
        const DmTensor *lt = s_find("case%d.decoder.logits", k);
        DecPage page;
        DmErr err = {{0}};
        CU_ASSERT_EQUAL_FATAL(dec_page_init(&page, s_model, enc->data, (int)enc->shape[1], &err), 0);
        int T, a;
        int32_t *ids = s_case_ids(k, &T);
        a = T / 2;
        float *gold = malloc((size_t)T * V * sizeof *gold), *got = NULL;
        CU_ASSERT_FATAL(gold && dm_tensor_to_f32(lt, gold, &err) == 0);
        const int32_t *ip = ids;
        CU_ASSERT_EQUAL_FATAL(cache_forward_page(s_model, &page, 1, &ip, &T, &a, &got, &err), 0);
        double d = tu_maxdiff(got, gold + (size_t)a * V, (size_t)(T - 1 - a) * V);
        CU_ASSERT(d <= 5e-4);
        printf("\n    case%d: %d cached rows, max |block - HF| %.2e", k, T - 1 - a, d);
        free(got);
        free(gold);
        free(ids);
        dec_page_free(&page);
    }
}

/* The twelve sequences of the block tests: 169 rows, more than one
 * cross-attention chunk (128 rows). */
enum { NS = 12 };

static void s_block_seqs(int32_t **ids, int *n, int *a0, int V)
{
    for (int k = 0; k < 3; k++) {
        ids[k] = s_case_ids(k, &n[k]);
        a0[k] = k == 0 ? 0 : n[k] - 2 - k; /* from every row to one row */
    }
    for (int k = 3; k < NS; k++) { /* longer ones, ids spread over the vocabulary */
        n[k] = 17;
        a0[k] = k % 9;
        ids[k] = malloc(17 * sizeof(int32_t));
        CU_ASSERT_PTR_NOT_NULL_FATAL(ids[k]);
        for (int i = 0; i < 17; i++)
            ids[k][i] = (int32_t)((i * 7919 + k * 131 + 13) % V);
    }
}

/* Several sequences of one page in one block (the stage's fast path)
 * against one full pass per sequence (cache_forward, the plain twin). */
static void test_block_twin(void)
{
    s_open_tiny();
    int V = s_model->cfg.dec.vocab;
    const DmTensor *enc = s_find("case%d.encoder.last_hidden_state", 1);
    DecPage page;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(dec_page_init(&page, s_model, enc->data, (int)enc->shape[1], &err), 0);
    int32_t *ids[NS];
    int n[NS], a0[NS];
    s_block_seqs(ids, n, a0, V);
    float *block = NULL;
    CU_ASSERT_EQUAL_FATAL(cache_forward_page(s_model, &page, NS, (const int32_t *const *)ids, n,
                                             a0, &block, &err), 0);
    double worst = 0;
    const float *row = block;
    for (int k = 0; k < NS; k++) {
        float *plain = NULL;
        CU_ASSERT_EQUAL_FATAL(cache_forward(s_model, &page, ids[k], n[k], &plain, &err), 0);
        size_t m = (size_t)(n[k] - 1 - a0[k]) * V;
        worst = fmax(worst, tu_maxdiff(row, plain + (size_t)a0[k] * V, m));
        row += m;
        free(plain);
        free(ids[k]);
    }
    CU_ASSERT(worst <= 1e-4);
    printf("\n    %d sequences in one block vs alone: max diff %.2e", NS, worst);
    free(block);
    /* A sequence whose answer start leaves no cached row is refused. */
    int bad_a = n[0] - 1;
    int32_t one[2] = {0, 2};
    const int32_t *op = one;
    int two = 2;
    CU_ASSERT_EQUAL(cache_forward_page(s_model, &page, 1, &op, &two, &bad_a, &block, &err), -1);
    CU_ASSERT_PTR_NULL(block);
    dec_page_free(&page);
}

/* The block on a model packed for the GEMM backend (dec_pack, as the
 * cache stage runs it) against the same block on the plain model (which
 * test_block_golden holds to HF's logits), and a decoding step afterwards,
 * which streams the plain weights whose mapped pages dec_pack handed back. */
static void test_block_packed(void)
{
    s_open_tiny();
    DonutModel *pm = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(donut_load(TU_TINY, &pm, &err), 0);
    CU_ASSERT_EQUAL_FATAL(dec_pack(pm, &err), 0);
    CU_ASSERT_PTR_NOT_NULL(pm->dec.head.packed);
    CU_ASSERT_PTR_NOT_NULL(pm->dec.layers[0].self.q.packed);
    CU_ASSERT_PTR_NOT_NULL(pm->dec.layers[0].ffn.fc1.packed);
    int V = s_model->cfg.dec.vocab;
    const DmTensor *enc = s_find("case%d.encoder.last_hidden_state", 1);
    DecPage pp, page;
    CU_ASSERT_EQUAL_FATAL(dec_page_init(&pp, pm, enc->data, (int)enc->shape[1], &err), 0);
    CU_ASSERT_EQUAL_FATAL(dec_page_init(&page, s_model, enc->data, (int)enc->shape[1], &err), 0);
    int32_t *ids[NS];
    int n[NS], a0[NS];
    s_block_seqs(ids, n, a0, V);
    float *packed = NULL, *plain = NULL;
    const int32_t *const *ip = (const int32_t *const *)ids;
    CU_ASSERT_EQUAL_FATAL(cache_forward_page(pm, &pp, NS, ip, n, a0, &packed, &err), 0);
    CU_ASSERT_EQUAL_FATAL(cache_forward_page(s_model, &page, NS, ip, n, a0, &plain, &err), 0);
    size_t rows = 0;
    for (int k = 0; k < NS; k++)
        rows += (size_t)(n[k] - 1 - a0[k]);
    double d = tu_maxdiff(packed, plain, rows * V);
    CU_ASSERT(d <= 1e-4);
    printf("\n    packed vs plain block, %zu rows: max diff %.2e", rows, d);
    /* one step of each sequence's last token on the packed model */
    float *lp = malloc((size_t)V * sizeof *lp), *lq = malloc((size_t)V * sizeof *lq);
    CU_ASSERT_FATAL(lp && lq);
    for (int b = 0; b < 2; b++) {
        DonutModel *mm = b ? s_model : pm;
        DecSeq seq, *sp = &seq;
        int T = n[3] - 1, one = 1;
        const int32_t *idp = ids[3], *last = ids[3] + T;
        CU_ASSERT_EQUAL_FATAL(dec_seq_init(&seq, mm, n[3], &err), 0);
        CU_ASSERT_EQUAL_FATAL(dec_forward(b ? &page : &pp, &sp, &idp, &T, 1, NULL, 0, NULL, NULL,
                                          &err), 0);
        CU_ASSERT_EQUAL_FATAL(dec_forward(b ? &page : &pp, &sp, &last, &one, 1, b ? lq : lp, 0,
                                          NULL, NULL, &err), 0);
        dec_seq_free(&seq);
    }
    d = tu_maxdiff(lp, lq, (size_t)V);
    CU_ASSERT(d <= 1e-4);
    printf("; a step after it: %.2e", d);
    free(lp);
    free(lq);
    free(packed);
    free(plain);
    for (int k = 0; k < NS; k++)
        free(ids[k]);
    dec_page_free(&pp);
    dec_page_free(&page);
    donut_free(&pm);
}

/* ---- the feature store ---------------------------------------------- */

static TuTmp s_tmpdir = {"/tmp/dm_cache_XXXXXX"};

static void s_store_rm(const char *dir)
{
    static const char *const files[] = {"data.mdb", "lock.mdb", "writer.lock"};
    char p[512];
    for (int i = 0; i < 3; i++) {
        snprintf(p, sizeof p, "%s/%s", dir, files[i]);
        unlink(p);
    }
    rmdir(dir);
}

static void s_tmp_done(void)
{
    if (s_tmpdir.dir[0])
        s_store_rm(tu_tmp(&s_tmpdir, "store", NULL));
    tu_tmp_done(&s_tmpdir);
}

/* The live encoder output of case k's reference pixel values. */
static float *s_encode(int k, int *tokens, int *dim)
{
    const DmTensor *pv = s_find("case%d.pixel_values", k);
    int H = (int)pv->shape[2], W = (int)pv->shape[3], oh, ow;
    const SwinConfig *c = &s_model->cfg.enc;
    swin_output_grid(c, H, W, &oh, &ow);
    float *pix = malloc((size_t)dm_tensor_numel(pv) * sizeof *pix);
    float *out = malloc((size_t)oh * ow * c->hidden_size * sizeof *out);
    DmErr err = {{0}};
    CU_ASSERT_FATAL(pix && out && dm_tensor_to_f32(pv, pix, &err) == 0);
    CU_ASSERT_EQUAL_FATAL(swin_encode(s_model, pix, H, W, out, NULL, &err), 0);
    free(pix);
    *tokens = oh * ow;
    *dim = c->hidden_size;
    return out;
}

/* Encoder outputs through the coordinator's writer and back through the
 * reader: equal to the live encoder within float16 rounding (half an ulp:
 * |x| 2^-11, or 2^-25 below float16's normal range); resume-safe keys;
 * and every malformed record is an error naming the page. */
static void test_features(void)
{
    s_open_tiny();
    const char *dir = tu_tmp(&s_tmpdir, "store", s_tmp_done);
    s_store_rm(dir);
    Store *st = NULL;
    Results *res = NULL;
    DmErr err = {{0}};
    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_WRITE, &st, &err), 0);
    CU_ASSERT_EQUAL_FATAL(results_open(st, 8, 0, &res, &err), 0);
    results_set_kind(res, "logits", "cache-logits", NULL);
    float *enc[2];
    int tokens[2], dim[2];
    for (int k = 0; k < 2; k++) {
        enc[k] = s_encode(k, &tokens[k], &dim[k]);
        char page[16];
        snprintf(page, sizeof page, "img%d.png", k);
        Docmint__FeatureRecord *f = feature_record_make(page, enc[k], tokens[k], dim[k], &err);
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        /* twice: the second write replaces the first */
        CU_ASSERT_EQUAL(results_add_feature(res, f, 0, &err), 0);
        CU_ASSERT_EQUAL(results_add_feature(res, f, 0, &err), 0);
        feature_record_free(&f);
        CU_ASSERT_PTR_NULL(f);
    }
    /* A record whose values do not match its shape: an error record. */
    Docmint__FeatureRecord *bad = feature_record_make("short.png", enc[0], 2, 3, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bad);
    bad->values.len -= 2;
    CU_ASSERT_EQUAL(results_add_feature(res, bad, 0, &err), 0);
    CU_ASSERT_EQUAL_FATAL(results_flush(res, 0, 0, NULL, &err), 0);
    uint64_t nf = 0, ne = 0;
    CU_ASSERT_EQUAL(store_count(st, STORE_FEATURES, &nf, &err), 0);
    CU_ASSERT_EQUAL(store_count(st, STORE_ERRORS, &ne, &err), 0);
    CU_ASSERT_EQUAL(nf, 2);
    CU_ASSERT_EQUAL(ne, 1);
    void *ev = NULL;
    size_t elen = 0;
    const char *ekey = "features of page short.png";
    CU_ASSERT_EQUAL(store_get(st, STORE_ERRORS, ekey, strlen(ekey), &ev, &elen, &err), 1);
    free(ev);
    CU_ASSERT_EQUAL(store_has(st, STORE_FEATURES, "img1.png", 8, &err), 1);
    CU_ASSERT_EQUAL(store_has(st, STORE_FEATURES, "img9.png", 8, &err), 0);
    /* Raw records a reader must refuse. */
    uint8_t *buf = NULL;
    size_t len = 0;
    bad->values.len += 2;
    CU_ASSERT_EQUAL_FATAL(feature_record_pack(bad, &buf, &len, &err), 0);
    bad->tokens = 3; /* values now hold 2 x 3 where 3 x 3 is said */
    uint8_t *buf2 = NULL;
    size_t len2 = docmint__feature_record__get_packed_size(bad);
    buf2 = malloc(len2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf2);
    docmint__feature_record__pack(bad, buf2);
    StoreItem raw[] = {{STORE_FEATURES, "moved.png", 9, buf, len},
                       {STORE_FEATURES, "size.png", 8, buf2, len2},
                       {STORE_FEATURES, "junk.png", 8, "\xff\xff\xff", 3}};
    CU_ASSERT_EQUAL_FATAL(store_put_batch(st, raw, 3, &err), 0);
    free(buf);
    free(buf2);
    feature_record_free(&bad);
    results_free(&res);
    store_close(&st);

    CU_ASSERT_EQUAL_FATAL(store_open(dir, STORE_READ, &st, &err), 0);
    for (int k = 0; k < 2; k++) {
        char page[16];
        snprintf(page, sizeof page, "img%d.png", k);
        float *got = NULL;
        int t = 0, d = 0;
        CU_ASSERT_EQUAL_FATAL(logit_store_features(st, page, &got, &t, &d, &err), 1);
        CU_ASSERT_FATAL(t == tokens[k] && d == dim[k]);
        size_t over = 0;
        double worst = 0;
        for (size_t i = 0; i < (size_t)t * d; i++) {
            double x = enc[k][i], e = fabs(got[i] - x);
            over += e > fabs(x) * ldexp(1.0, -11) + ldexp(1.0, -25);
            worst = fmax(worst, e);
        }
        CU_ASSERT_EQUAL(over, 0);
        printf("\n    %s: %d x %d features, max |f16 - live| %.2e, %zu beyond the bound", page, t,
               d, worst, over);
        free(got);
        free(enc[k]);
    }
    float *out = (float *)1;
    int t = -1, d = -1;
    CU_ASSERT_EQUAL(logit_store_features(st, "absent.png", &out, &t, &d, &err), 0);
    CU_ASSERT(out == NULL && t == 0 && d == 0);
    CU_ASSERT_EQUAL(logit_store_features(st, "moved.png", &out, &t, &d, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "are of page short.png"));
    CU_ASSERT_EQUAL(logit_store_features(st, "size.png", &out, &t, &d, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "want 3 x 3 x 2 = 18"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "size.png"));
    CU_ASSERT_EQUAL(logit_store_features(st, "junk.png", &out, &t, &d, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "junk.png"));
    CU_ASSERT_PTR_NULL(out);
    store_close(&st);
    s_store_rm(dir);
}

static int s_cache_teardown(void)
{
    donut_free(&s_model);
    tensorfile_close(&s_exp);
    return 0;
}

void tests_cache(void)
{
    TU_SUITE("cache", {"logit key: qid BE8 + answer BE2", test_key},
             {"record layout, u16 ids", test_layout_u16},
             {"record layout, u32 ids", test_layout_u32}, {"record layout, full", test_layout_full},
             {"top-k selection", test_topk},
             {"kd from cache vs golden HF loss (tau 2)", test_golden_kd});
    CU_pSuite s = CU_add_suite("cache (tiny-a model)", NULL, s_cache_teardown);
    CU_add_test(s, "page block: cached rows vs HF logits", test_block_golden);
    CU_add_test(s, "page block vs one pass per sequence", test_block_twin);
    CU_add_test(s, "page block on a packed decoder vs the plain one", test_block_packed);
    CU_add_test(s, "feature store vs live encoder, bad records", test_features);
}
