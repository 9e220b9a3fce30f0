/* distill_data.c - items and page features of the distill stage
 * (distill_data.h). */
#include "worker/train/distill_data.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/store_verify.h"
#include "worker/model/page_encode.h"

typedef struct PageRef {
    const char *id;
    int page;
} PageRef;

struct DistillData {
    Store *store;
    const Corpus *corpus;
    const DonutModel *model;
    const PreprocConfig *pc;
    int pdf_dpi;
    double tau;
    DistillItem *items;
    int n, cap;
    /* page cache: one slot per corpus page */
    float **enc;     /* encoder outputs, or pixels in whole-model mode */
    int *n_enc;      /* rows, or the pixel height */
    int *pw;         /* whole-model mode: the pixel width */
    int whole;
    uint64_t *used;  /* clock of the last use, 0 = not cached */
    uint64_t clock;
    size_t bytes, budget;
    long encoded, stored, hits;
    /* scan state */
    PageRef *refs;
    DmErr *scan_err;
    int scan_failed;
    int skip_damaged;
    long skipped;
    DistillPromptFn prompt; /* the student's own prompt, or NULL */
    void *prompt_ctx;
};

static int s_ref_cmp(const void *a, const void *b)
{
    return strcmp(((const PageRef *)a)->id, ((const PageRef *)b)->id);
}

/* Checks a record against the student, and names it when it fails. */
static int s_check_record(const DistillData *d, const Docmint__LogitRecord *r, DmErr *err)
{
    const MBartConfig *mc = &d->model->cfg.dec;
    const char *path = store_path(d->store);
    long long q = (long long)r->question_id;
    if ((int)r->vocab != mc->vocab)
        return dm_err(err, "%s: record %lld/%u has vocabulary %u, the student %d", path, q,
                      r->answer_index, r->vocab, mc->vocab);
    if (logit_record_temp_index(r, d->tau) < 0)
        return dm_err(err, "%s: record %lld/%u has no temperature %g (distill.temperature must "
                           "be one the store keeps)",
                      path, q, r->answer_index, d->tau);
    if ((int)r->n_token_ids > mc->max_pos)
        return dm_err(err, "%s: record %lld/%u has %zu tokens, the student's positions end at %d",
                      path, q, r->answer_index, r->n_token_ids, mc->max_pos);
    for (size_t i = 0; i < r->n_token_ids; i++)
        if (r->token_ids[i] < 0 || r->token_ids[i] >= mc->vocab)
            return dm_err(err, "%s: record %lld/%u: token id %d outside the vocabulary", path, q,
                          r->answer_index, r->token_ids[i]);
    return 0;
}

/* A damaged record (its checksum fails, or it is not a well-formed
 * LogitRecord of its key): skipped and counted with skip_damaged, else the
 * end of the scan. */
static int s_damaged(DistillData *d, const void *key, size_t klen, const char *what)
{
    if (d->skip_damaged) {
        d->skipped++;
        return 0;
    }
    char kt[128];
    store_key_text(STORE_RECORDS, 1, key, klen, kt, sizeof kt);
    d->scan_failed = dm_err(d->scan_err, "%s: record %s is damaged: %s (`docmint store verify %s` lists "
                                         "every damaged record; distill.skip_damaged trains without them)",
                            store_path(d->store), kt, what, store_path(d->store));
    return 1;
}

static int s_scan(void *ctx, const void *key, size_t klen, const void *val, size_t vlen,
                  const char *damage)
{
    DistillData *d = ctx;
    DmErr *err = d->scan_err;
    if (damage)
        return s_damaged(d, key, klen, damage);
    DmErr perr = {{0}};
    if (store_verify_value(STORE_RECORDS, 1, key, klen, val, vlen, &perr) < 0)
        return s_damaged(d, key, klen, perr.msg);
    Docmint__LogitRecord *r = logit_record_unpack(val, vlen, err);
    if (!r) {
        d->scan_failed = dm_err_prefix(err, "%s", store_path(d->store));
        return 1;
    }
    int rc = s_check_record(d, r, err);
    PageRef want = {r->page_id, 0}, *hit = NULL;
    if (!rc) {
        hit = bsearch(&want, d->refs, (size_t)d->corpus->npages, sizeof *d->refs, s_ref_cmp);
        if (!hit)
            rc = dm_err(err, "%s: record %" PRId64 "/%u is about page \"%s\", which the corpus "
                             "does not have (distill needs the corpus cache-logits ran over)",
                        store_path(d->store), r->question_id, r->answer_index, r->page_id);
    }
    if (!rc && d->n == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 1024;
        DistillItem *ni = realloc(d->items, (size_t)d->cap * sizeof *ni);
        if (!ni)
            rc = dm_err(err, "out of memory listing the items");
        else
            d->items = ni;
    }
    if (!rc) {
        DistillItem *it = &d->items[d->n++];
        memset(it, 0, sizeof *it);
        memcpy(it->key, key, LOGIT_KEY_LEN);
        it->page = hit->page;
        it->tokens = (int)r->n_token_ids;
        it->positions = logit_record_positions(r);
    }
    logit_record_free(&r);
    if (rc)
        d->scan_failed = -1;
    return rc ? 1 : 0;
}

int distill_data_open(Store *s, const Corpus *c, const DonutModel *m, const PreprocConfig *pc,
                      int pdf_dpi, double tau, size_t cache_bytes, int skip_damaged, DistillData **out,
                      DmErr *err)
{
    *out = NULL;
    DistillData *d = calloc(1, sizeof *d);
    if (!d)
        return dm_err(err, "out of memory");
    d->store = s;
    d->corpus = c;
    d->model = m;
    d->pc = pc;
    d->pdf_dpi = pdf_dpi;
    d->tau = tau;
    d->budget = cache_bytes;
    d->skip_damaged = skip_damaged;
    int np = c->npages;
    d->refs = calloc((size_t)(np ? np : 1), sizeof *d->refs);
    d->enc = calloc((size_t)(np ? np : 1), sizeof *d->enc);
    d->n_enc = calloc((size_t)(np ? np : 1), sizeof *d->n_enc);
    d->used = calloc((size_t)(np ? np : 1), sizeof *d->used);
    d->pw = calloc((size_t)(np ? np : 1), sizeof *d->pw);
    if (!d->refs || !d->enc || !d->n_enc || !d->used || !d->pw) {
        distill_data_close(&d);
        return dm_err(err, "out of memory");
    }
    for (int p = 0; p < np; p++)
        d->refs[p] = (PageRef){c->pages[p].page_id, p};
    qsort(d->refs, (size_t)np, sizeof *d->refs, s_ref_cmp);
    d->scan_err = err;
    if (store_scan(s, STORE_RECORDS, s_scan, d, err) < 0 || d->scan_failed) {
        distill_data_close(&d);
        return -1;
    }
    free(d->refs);
    d->refs = NULL;
    if (d->n == 0) {
        dm_err(err, "%s: no records to train on", store_path(s));
        distill_data_close(&d);
        return -1;
    }
    *out = d;
    return 0;
}

long distill_data_skipped(const DistillData *d)
{
    return d->skipped;
}

int distill_data_open_gold(const Corpus *c, const DonutModel *m, const PreprocConfig *pc,
                           int pdf_dpi, size_t cache_bytes, DistillSeqFn seq, void *ctx,
                           DistillData **out, DmErr *err)
{
    *out = NULL;
    DistillData *d = calloc(1, sizeof *d);
    int np = c->npages;
    if (d) {
        d->corpus = c;
        d->model = m;
        d->pc = pc;
        d->pdf_dpi = pdf_dpi;
        d->budget = cache_bytes;
        d->enc = calloc((size_t)(np ? np : 1), sizeof *d->enc);
        d->n_enc = calloc((size_t)(np ? np : 1), sizeof *d->n_enc);
        d->used = calloc((size_t)(np ? np : 1), sizeof *d->used);
        d->pw = calloc((size_t)(np ? np : 1), sizeof *d->pw);
    }
    if (!d || !d->enc || !d->n_enc || !d->used || !d->pw) {
        distill_data_close(&d);
        return dm_err(err, "out of memory");
    }
    for (int p = 0; p < np; p++)
        for (int q = 0; q < c->pages[p].nq; q++) {
            const CorpusQuestion *cq = &c->pages[p].q[q];
            for (int a = 0; a < cq->nanswers; a++) {
                if (!cq->answers[a] || !cq->answers[a][0])
                    continue;
                if (d->n == d->cap) {
                    d->cap = d->cap ? 2 * d->cap : 1024;
                    DistillItem *ni = realloc(d->items, (size_t)d->cap * sizeof *ni);
                    if (!ni) {
                        distill_data_close(&d);
                        return dm_err(err, "out of memory listing the items");
                    }
                    d->items = ni;
                }
                DistillItem *it = &d->items[d->n];
                memset(it, 0, sizeof *it);
                int n = 0, a0 = 0;
                if (seq(ctx, cq->text, cq->answers[a], &it->ids, &n, &a0, err)) {
                    dm_err_prefix(err, "%s: question %lld", c->pages[p].page_id,
                                  (long long)cq->qid);
                    distill_data_close(&d);
                    return -1;
                }
                d->n++;
                logit_key(cq->qid, (unsigned)a, it->key);
                it->page = p;
                it->tokens = n;
                it->answer_start = a0;
                it->positions = n - 1 - a0;
            }
        }
    if (d->n == 0) {
        distill_data_close(&d);
        return dm_err(err, "the corpus has no questions with gold answers to train on");
    }
    *out = d;
    return 0;
}

void distill_data_close(DistillData **pd)
{
    DistillData *d = *pd;
    if (!d)
        return;
    if (d->enc)
        for (int p = 0; p < d->corpus->npages; p++)
            free(d->enc[p]);
    free(d->enc);
    free(d->n_enc);
    free(d->used);
    free(d->pw);
    free(d->refs);
    for (int i = 0; i < d->n; i++)
        free(d->items[i].ids);
    free(d->items);
    free(d);
    *pd = NULL;
}

int distill_data_count(const DistillData *d) { return d->n; }
const DistillItem *distill_data_item(const DistillData *d, int i) { return &d->items[i]; }

void distill_data_cache_stats(const DistillData *d, long *encoded, long *stored, long *hits)
{
    *encoded = d->encoded;
    *stored = d->stored;
    *hits = d->hits;
}

static size_t s_slot_bytes(const DistillData *d, int p)
{
    if (d->whole)
        return (size_t)3 * d->n_enc[p] * d->pw[p] * sizeof(float);
    return (size_t)d->n_enc[p] * d->model->cfg.enc.hidden_size * sizeof(float);
}

void distill_data_set_whole(DistillData *d) { d->whole = 1; }

void distill_data_set_prompt(DistillData *d, DistillPromptFn fn, void *ctx)
{
    d->prompt = fn;
    d->prompt_ctx = ctx;
}

/* l->ids (the record's sequence) with its prompt replaced by the
 * student's: the answer tokens after <s_answer> are kept as they are. */
static int s_restate_prompt(DistillData *d, const DistillItem *item, int64_t qid, unsigned ai,
                            DistillLoaded *l, DmErr *err)
{
    const CorpusPage *pg = &d->corpus->pages[item->page];
    const char *question = NULL;
    for (int q = 0; q < pg->nq && !question; q++)
        if (pg->q[q].qid == qid)
            question = pg->q[q].text ? pg->q[q].text : "";
    if (!question)
        return dm_err(err, "%s: record %" PRId64 "/%u: question %" PRId64 " is not on page \"%s\""
                           " of the corpus", store_path(d->store), qid, ai, qid, pg->page_id);
    int32_t *p = NULL;
    int np = 0, T = (int)l->rec->n_token_ids, a0 = (int)l->rec->answer_start;
    if (d->prompt(d->prompt_ctx, question, &p, &np, err))
        return dm_err_prefix(err, "question %" PRId64, qid);
    int nt = np + T - a0 - 1;
    if (np < 1 || a0 >= T || p[np - 1] != l->ids[a0]) {
        free(p);
        return dm_err(err, "%s: record %" PRId64 "/%u: the student's prompt does not end with the "
                           "record's <s_answer>", store_path(d->store), qid, ai);
    }
    if (nt > d->model->cfg.dec.max_pos) {
        free(p);
        return dm_err(err, "%s: record %" PRId64 "/%u: %d tokens with the student's prompt, its "
                           "positions end at %d", store_path(d->store), qid, ai, nt,
                      d->model->cfg.dec.max_pos);
    }
    int32_t *ids = malloc((size_t)nt * sizeof *ids);
    if (!ids) {
        free(p);
        return dm_err(err, "out of memory");
    }
    memcpy(ids, p, (size_t)np * sizeof *ids);
    memcpy(ids + np, l->ids + a0 + 1, (size_t)(T - a0 - 1) * sizeof *ids);
    free(p);
    free(l->ids);
    l->ids = ids;
    l->it.ids = ids;
    l->it.T = nt;
    l->it.answer_start = np - 1;
    return 0;
}

/* Drop least recently used pages (never `keep`) until `need` more bytes
 * fit the budget. */
static void s_evict(DistillData *d, size_t need, int keep)
{
    while (d->bytes + need > d->budget) {
        int victim = -1;
        for (int p = 0; p < d->corpus->npages; p++)
            if (d->used[p] && p != keep && (victim < 0 || d->used[p] < d->used[victim]))
                victim = p;
        if (victim < 0)
            return;
        d->bytes -= s_slot_bytes(d, victim);
        free(d->enc[victim]);
        d->enc[victim] = NULL;
        d->used[victim] = 0;
    }
}

/* The encoder output of a page not cached: the feature store's copy when
 * cache-logits kept one (keep_features; float16, and the student's
 * encoder is the teacher's when it was pruned from it), else the frozen
 * encoder on the image. */
static int s_features(DistillData *d, int p, float **enc, int *n_enc, DmErr *err)
{
    const CorpusPage *pg = &d->corpus->pages[p];
    int dim = 0, hidden = d->model->cfg.enc.hidden_size;
    int got = d->store ? logit_store_features(d->store, pg->page_id, enc, n_enc, &dim, err) : 0;
    if (got < 0)
        return -1;
    if (got == 1 && dim != hidden) {
        free(*enc);
        *enc = NULL;
        return dm_err(err, "%s: the features of page %s have %d channels, the student's encoder "
                           "%d", store_path(d->store), pg->page_id, dim, hidden);
    }
    if (got == 1) {
        d->stored++;
        return 0;
    }
    d->encoded++;
    return page_encode(d->model, d->pc, pg->image_path, pg->page_no, d->pdf_dpi, enc, n_enc, err);
}

int distill_page_features(DistillData *d, int p, const float **enc, int *n_enc, DmErr *err)
{
    d->clock++;
    if (d->used[p]) {
        d->used[p] = d->clock;
        d->hits++;
        *enc = d->enc[p];
        *n_enc = d->n_enc[p];
        return 0;
    }
    /* Without room for it, the previous uncached page is dropped now. */
    for (int q = 0; q < d->corpus->npages; q++)
        if (!d->used[q] && d->enc[q]) {
            free(d->enc[q]);
            d->enc[q] = NULL;
        }
    float *e = NULL;
    int n = 0, w = 0;
    if (d->whole) {
        const CorpusPage *pg = &d->corpus->pages[p];
        if (page_pixels(d->pc, pg->image_path, pg->page_no, d->pdf_dpi, &e, &n, &w, err))
            return -1;
    } else if (s_features(d, p, &e, &n, err)) {
        return -1;
    }
    d->n_enc[p] = n;
    d->pw[p] = w;
    size_t bytes = s_slot_bytes(d, p);
    s_evict(d, bytes, p);
    d->enc[p] = e;
    if (d->bytes + bytes <= d->budget) {
        d->used[p] = d->clock;
        d->bytes += bytes;
    }
    *enc = e;
    *n_enc = n;
    return 0;
}

void distill_item_clear(DistillLoaded *l)
{
    logit_record_free(&l->rec);
    free(l->ids);
    free(l->kt);
    free(l->kid);
    free(l->klogits);
    memset(l, 0, sizeof *l);
}

/* The page of an item: encoder output, or pixels in whole-model mode. */
static int s_item_page(DistillData *d, const DistillItem *item, DistillLoaded *l, DmErr *err)
{
    const float *e;
    int n;
    if (distill_page_features(d, item->page, &e, &n, err))
        return -1;
    if (d->whole) {
        l->pix = e;
        l->H = n;
        l->W = d->pw[item->page];
    } else {
        l->it.enc = e;
        l->it.n_enc = n;
    }
    return 0;
}

int distill_item_load(DistillData *d, int i, DistillLoaded *l, DmErr *err)
{
    memset(l, 0, sizeof *l);
    const DistillItem *item = &d->items[i];
    if (item->ids) { /* a gold item: no teacher */
        if (s_item_page(d, item, l, err))
            return -1;
        l->it.ids = item->ids;
        l->it.T = item->tokens;
        l->it.answer_start = item->answer_start;
        l->it.teacher = NULL;
        return 0;
    }
    void *val = NULL;
    size_t vlen = 0;
    int64_t qid;
    unsigned ai;
    logit_key_parse(item->key, &qid, &ai);
    int got = store_get(d->store, STORE_RECORDS, item->key, LOGIT_KEY_LEN, &val, &vlen, err);
    if (got <= 0)
        return got < 0 ? -1 : dm_err(err, "%s: record %" PRId64 "/%u disappeared",
                                     store_path(d->store), qid, ai);
    l->rec = logit_record_unpack(val, vlen, err);
    free(val);
    if (!l->rec)
        return dm_err_prefix(err, "%s", store_path(d->store));
    const Docmint__LogitRecord *r = l->rec;
    int P = logit_record_positions(r), K = (int)r->k, nT = (int)r->n_temperatures;
    int ti = logit_record_temp_index(r, d->tau);
    l->ids = malloc(r->n_token_ids * sizeof *l->ids);
    l->kt = calloc((size_t)P, sizeof *l->kt);
    l->klogits = malloc((size_t)P * K * sizeof *l->klogits);
    l->kid = r->full ? NULL : malloc((size_t)P * K * sizeof *l->kid);
    if (!l->ids || !l->kt || !l->klogits || (!r->full && !l->kid)) {
        distill_item_clear(l);
        return dm_err(err, "out of memory loading record %" PRId64 "/%u", qid, ai);
    }
    for (size_t t = 0; t < r->n_token_ids; t++)
        l->ids[t] = r->token_ids[t];
    for (int p = 0; p < P; p++) {
        KdTarget *kt = &l->kt[p];
        float *lg = l->klogits + (size_t)p * K;
        for (int j = 0; j < K; j++)
            lg[j] = (float)logit_record_value(r, p, j);
        if (!r->full) {
            uint32_t *id = l->kid + (size_t)p * K;
            for (int j = 0; j < K; j++)
                id[j] = logit_record_id(r, p, j);
            kt->ids = id;
        }
        kt->k = K;
        kt->logits = lg;
        kt->lse = r->lse[(size_t)p * nT + ti];
        kt->lse_rest = r->full ? -INFINITY
                       : r->n_lse_rest == (size_t)P * nT ? r->lse_rest[(size_t)p * nT + ti]
                                                         : NAN;
    }
    if (s_item_page(d, item, l, err)) {
        distill_item_clear(l);
        return -1;
    }
    l->it.ids = l->ids;
    l->it.T = (int)r->n_token_ids;
    l->it.answer_start = (int)r->answer_start;
    l->it.teacher = l->kt;
    if (d->prompt && s_restate_prompt(d, item, qid, ai, l, err)) {
        distill_item_clear(l);
        return -1;
    }
    return 0;
}
