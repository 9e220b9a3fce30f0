/* stage_cache.c - teacher logits at the answer positions of a shard's
 * gold answers (stage_cache.h). */
#include "worker/stages/stage_cache.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/image/image.h"
#include "worker/train/kd_loss.h"
#include "kernels/cpu/kern.h"
#include "common/logit_store.h" /* feature_record_make */
#include "worker/model/page_encode.h"
#include "worker/image/preprocess.h"
#include "worker/stages/stage_result.h"
#include "common/tensorfile.h" /* dm_f32_to_f16 */

/* Rows of one teacher-forced block: bounds the attention scores (heads x
 * rows x encoder tokens floats) and the logits of a page with many
 * questions. */
#define CACHE_BLOCK_ROWS 256

struct CacheStage {
    QaModel qa;
    PreprocConfig pc;
    CacheOpts o;
};

int cache_open(const char *model_dir, const CacheOpts *o, CacheStage **out, DmErr *err)
{
    *out = NULL;
    if (o->n_temps < 1 || o->n_temps > CACHE_MAX_TEMPS || o->temps[0] != 1.0 || o->top_k < 0)
        return dm_err(err, "cache-logits: bad options (top_k %d, %d temperatures, first %g)",
                      o->top_k, o->n_temps, o->n_temps > 0 ? o->temps[0] : 0.0);
    CacheStage *st = calloc(1, sizeof *st);
    if (!st)
        return dm_err(err, "out of memory");
    st->o = *o;
    if (st->o.pdf_dpi <= 0)
        st->o.pdf_dpi = IMAGE_PDF_DPI_DEFAULT;
    /* Teacher forcing is the stage's work: the decoder's linears and LM
     * head run packed for the GEMM backend. */
    if (qa_open(model_dir, &st->qa, err)) {
        free(st);
        return -1;
    }
    if (dec_pack(st->qa.model, err)) {
        qa_close(&st->qa);
        free(st);
        return -1;
    }
    char path[4200];
    snprintf(path, sizeof path, "%s/preprocessor_config.json", model_dir);
    if (preproc_config_load(path, &st->pc, err)) {
        qa_close(&st->qa);
        free(st);
        return -1;
    }
    *out = st;
    return 0;
}

void cache_close(CacheStage **pst)
{
    CacheStage *st = *pst;
    if (!st)
        return;
    qa_close(&st->qa);
    free(st);
    *pst = NULL;
}

const char *cache_fingerprint(const CacheStage *st) { return st->qa.model->fingerprint; }
const char *cache_tokenizer_fingerprint(const CacheStage *st)
{
    return tokenizer_fingerprint(st->qa.tok);
}

/* ------------------------------------------------------------- sequences */

int cache_sequence(const QaModel *qa, const char *question, const char *answer, int32_t **ids,
                   int *n, int *answer_start, DmErr *err)
{
    *ids = NULL;
    *n = 0;
    int32_t *prompt = NULL;
    int np = 0;
    if (qa_prompt(qa, question, &prompt, &np, err))
        return -1;
    const char *a = answer;
    if (!strcmp(answer, "yes") && qa->id_yes >= 0)
        a = "<yes/>";
    else if (!strcmp(answer, "no") && qa->id_no >= 0)
        a = "<no/>";
    /* the question as qa_prompt put it (lowercased when the folder asks) */
    char *qt = NULL;
    if (qa_question_text(qa, question, &qt, err)) {
        free(prompt);
        return -1;
    }
    size_t len = strlen(qt) + strlen(a) + 96;
    char *text = malloc(len);
    if (!text) {
        free(prompt);
        free(qt);
        return dm_err(err, "out of memory");
    }
    snprintf(text, len, "<s_docvqa><s_question>%s</s_question><s_answer>%s</s_answer></s>", qt,
             a);
    free(qt);
    int rc = tokenizer_encode(qa->tok, text, 0, ids, n, err);
    free(text);
    if (rc) {
        free(prompt);
        return -1;
    }
    /* Added tokens split the text first, so the sequence starts with the
     * prompt's ids and <s_answer> ends them; checked rather than assumed. */
    int a0 = np - 1;
    if (*n < np + 2 || memcmp(*ids, prompt, (size_t)np * sizeof *prompt) != 0 ||
        (*ids)[a0] != qa->id_answer_open || (*ids)[*n - 2] != qa->id_answer_close ||
        (*ids)[*n - 1] != qa->gen.eos_id)
        rc = dm_err(err, "answer \"%.60s\": the tokenized sequence does not split at <s_answer> "
                         "and end with </s_answer></s>",
                    answer);
    else if (*n > qa->model->cfg.dec.max_pos)
        rc = dm_err(err, "answer \"%.60s\": sequence of %d tokens exceeds the model's %d positions",
                    answer, *n, qa->model->cfg.dec.max_pos);
    free(prompt);
    if (rc) {
        free(*ids);
        *ids = NULL;
        return -1;
    }
    *answer_start = a0;
    return 0;
}

int cache_forward(const DonutModel *m, const DecPage *page, const int32_t *ids, int n,
                  float **logits, DmErr *err)
{
    DecSeq seq = {0};
    *logits = malloc((size_t)n * m->cfg.dec.vocab * sizeof(float));
    if (!*logits)
        return dm_err(err, "out of memory");
    DecSeq *sp = &seq;
    const int32_t *ip = ids;
    int rc = dec_seq_init(&seq, m, n, err) ||
             dec_forward(page, &sp, &ip, &n, 1, *logits, 1, NULL, NULL, err);
    dec_seq_free(&seq);
    if (rc) {
        free(*logits);
        *logits = NULL;
        return -1;
    }
    return 0;
}

int cache_forward_page(const DonutModel *m, const DecPage *page, int ns,
                       const int32_t *const *ids, const int *n, const int *a0, float **logits,
                       DmErr *err)
{
    *logits = NULL;
    DecSeq *seqs = calloc((size_t)ns, sizeof *seqs);
    DecSeq **sp = malloc((size_t)ns * sizeof *sp);
    int *counts = malloc((size_t)ns * sizeof *counts);
    size_t rows = 0;
    int rc = -1;
    if (!seqs || !sp || !counts) {
        dm_err(err, "out of memory");
        goto done;
    }
    for (int i = 0; i < ns; i++) {
        if (a0[i] < 0 || a0[i] > n[i] - 2) {
            dm_err(err, "sequence %d: answer start %d outside its %d tokens", i, a0[i], n[i]);
            goto done;
        }
        /* The last token's own row is never cached and nothing earlier
         * attends to it: the pass stops before it. */
        counts[i] = n[i] - 1;
        rows += (size_t)(n[i] - 1 - a0[i]);
        sp[i] = &seqs[i];
        if (dec_seq_init(&seqs[i], m, counts[i], err))
            goto done;
    }
    *logits = malloc(rows * m->cfg.dec.vocab * sizeof(float));
    if (!*logits) {
        dm_err(err, "out of memory for %zu rows of logits", rows);
        goto done;
    }
    rc = dec_forward_rows(page, sp, ids, counts, a0, ns, *logits, NULL, err);
done:
    for (int i = 0; seqs && i < ns; i++)
        dec_seq_free(&seqs[i]);
    free(seqs);
    free(sp);
    free(counts);
    if (rc) {
        free(*logits);
        *logits = NULL;
    }
    return rc;
}

/* ---------------------------------------------------------------- records */

int cache_fill_block(const CacheOpts *o, int vocab, int ns, const int32_t *const *ids,
                     const int *n, const int *a0, const float *logits,
                     Docmint__LogitRecord *const *recs, DmErr *err)
{
    size_t *off = malloc((size_t)ns * sizeof *off);
    if (!off)
        return dm_err(err, "out of memory");
    for (int i = 0, rows = 0; i < ns; i++) {
        off[i] = (size_t)rows * vocab;
        rows += n[i] - 1 - a0[i];
    }
    int failed = 0;
#pragma omp parallel for schedule(dynamic)
    for (int i = 0; i < ns; i++) {
        DmErr fe;
        if (cache_fill_record(o, vocab, ids[i], n[i], a0[i], logits + off[i], recs[i], &fe)) {
#pragma omp critical(dm_cache_fill)
            if (!failed++)
                *err = fe;
        }
    }
    free(off);
    return failed ? -1 : 0;
}

static void s_put16(uint8_t *b, uint16_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
}

int cache_fill_record(const CacheOpts *o, int vocab, const int32_t *ids, int n, int answer_start,
                      const float *logits, Docmint__LogitRecord *r, DmErr *err)
{
    int P = n - 1 - answer_start, full = o->top_k <= 0 || o->top_k >= vocab;
    int k = full ? vocab : o->top_k, idb = vocab <= 65536 ? 2 : 4;
    r->token_ids = malloc((size_t)n * sizeof *r->token_ids);
    r->targets = malloc((size_t)P * sizeof *r->targets);
    r->temperatures = malloc((size_t)o->n_temps * sizeof *r->temperatures);
    r->lse = malloc((size_t)P * o->n_temps * sizeof *r->lse);
    r->shift = malloc((size_t)P * sizeof *r->shift);
    r->lse_rest = full ? NULL : malloc((size_t)P * o->n_temps * sizeof *r->lse_rest);
    unsigned char *kept = full ? NULL : calloc((size_t)vocab, 1);
    r->top_logits.data = malloc((size_t)P * k * 2);
    r->top_ids.data = full ? NULL : malloc((size_t)P * k * idb);
    uint32_t *idx = full ? NULL : malloc((size_t)k * sizeof *idx);
    if (!r->token_ids || !r->targets || !r->temperatures || !r->lse || !r->top_logits.data ||
        !r->shift || (!full && (!r->top_ids.data || !idx || !r->lse_rest || !kept))) {
        free(idx);
        free(kept);
        return dm_err(err, "out of memory");
    }
    memcpy(r->token_ids, ids, (size_t)n * sizeof *ids);
    r->n_token_ids = (size_t)n;
    r->answer_start = (uint32_t)answer_start;
    r->n_targets = (size_t)P;
    r->k = (uint32_t)k;
    r->vocab = (uint32_t)vocab;
    r->full = full;
    r->id_bytes = full ? 0 : (uint32_t)idb;
    r->n_temperatures = (size_t)o->n_temps;
    for (int i = 0; i < o->n_temps; i++)
        r->temperatures[i] = (float)o->temps[i];
    r->n_lse = (size_t)P * o->n_temps;
    r->n_shift = (size_t)P;
    r->n_lse_rest = full ? 0 : (size_t)P * o->n_temps;
    r->top_logits.len = (size_t)P * k * 2;
    r->top_ids.len = full ? 0 : (size_t)P * k * idb;
    for (int p = 0; p < P; p++) {
        const float *row = logits + (size_t)p * vocab;
        r->targets[p] = ids[answer_start + p + 1];
        uint8_t *vals = r->top_logits.data + (size_t)p * k * 2;
        float m = row[0];
        for (int v = 1; v < vocab; v++)
            m = row[v] > m ? row[v] : m;
        r->shift[p] = m;
        if (!full) {
            kd_topk(row, vocab, k, idx);
            for (int i = 0; i < k; i++)
                kept[idx[i]] = 1;
        }
        /* log-sum-exp of every token and of the tokens left out, at each T,
         * from one pass of exponentials (max first, so no overflow; -inf
         * when nothing is left out).  The rest is summed on its own, never
         * as all minus kept, which would cancel. */
        for (int ti = 0; ti < o->n_temps; ti++) {
            double T = o->temps[ti], all, rest;
            kern_sum_exp(row, vocab, m, (float)(1.0 / T), kept, &all, &rest);
            size_t at = (size_t)p * o->n_temps + ti;
            r->lse[at] = (float)(m / T + log(all));
            if (!full)
                r->lse_rest[at] = rest > 0 ? (float)(m / T + log(rest)) : -INFINITY;
        }
        if (full) {
            for (int v = 0; v < vocab; v++)
                s_put16(vals + 2 * v, dm_f32_to_f16(row[v] - m));
            continue;
        }
        for (int i = 0; i < k; i++)
            kept[idx[i]] = 0;
        uint8_t *ib = r->top_ids.data + (size_t)p * k * idb;
        for (int i = 0; i < k; i++) {
            s_put16(vals + 2 * i, dm_f32_to_f16(row[idx[i]] - m));
            if (idb == 2) {
                s_put16(ib + 2 * i, (uint16_t)idx[i]);
            } else {
                s_put16(ib + 4 * i, (uint16_t)idx[i]);
                s_put16(ib + 4 * i + 2, (uint16_t)(idx[i] >> 16));
            }
        }
    }
    free(idx);
    free(kept);
    return 0;
}


void cache_record_clear(Docmint__LogitRecord *r)
{
    stage_free_str(r->answer);
    stage_free_str(r->page_id);
    free(r->token_ids);
    free(r->targets);
    free(r->temperatures);
    free(r->lse);
    free(r->shift);
    free(r->lse_rest);
    free(r->top_logits.data);
    free(r->top_ids.data);
    docmint__logit_record__init(r);
}

void cache_result_clear(Docmint__Result *res)
{
    for (size_t i = 0; i < res->n_logits; i++) {
        if (!res->logits[i])
            continue;
        cache_record_clear(res->logits[i]);
        free(res->logits[i]);
    }
    stage_free_errors(res);
    for (size_t i = 0; i < res->n_features; i++)
        feature_record_free(&res->features[i]);
    free(res->logits);
    free(res->features);
    docmint__result__init(res);
}


/* ------------------------------------------------------------------- a page */

typedef struct Seq {
    const Docmint__Question *q;
    int answer;
    int32_t *ids;
    int n, a0;
} Seq;

/* The page's encoder output as a FeatureRecord of the result. */
static int s_add_features(const CacheStage *st, const Docmint__Page *pg, const float *enc,
                          int n_enc, Docmint__Result *res, DmErr *err)
{
    Docmint__FeatureRecord *f = feature_record_make(pg->page_id, enc, n_enc,
                                                    st->qa.model->cfg.enc.hidden_size, err);
    if (!f)
        return -1;
    f->page_no = pg->page_no;
    Docmint__FeatureRecord **v = realloc(res->features, (res->n_features + 1) * sizeof *v);
    if (!v || (pg->image_path && !(f->image_path = strdup(pg->image_path)))) {
        if (v)
            res->features = v;
        feature_record_free(&f);
        return dm_err(err, "out of memory building the features of page %s", pg->page_id);
    }
    res->features = v;
    res->features[res->n_features++] = f;
    return 0;
}

static int s_page(void *stage, const Docmint__Page *pg, Docmint__Result *res, DmErr *err)
{
    CacheStage *st = stage;
    size_t cap = 0;
    for (size_t i = 0; i < pg->n_questions; i++)
        cap += st->o.first_answer_only && pg->questions[i]->n_answers ? 1 : pg->questions[i]->n_answers;
    Seq *seqs = calloc(cap + 1, sizeof *seqs);
    float *enc = NULL, *logits = NULL;
    DecPage page = {0};
    int ns = 0, rc = -1, n_enc = 0;
    char reason[1400];
    if (!seqs)
        goto oom;
    /* Sequences first: an answer that cannot work is an error on its own. */
    for (size_t i = 0; i < pg->n_questions; i++) {
        const Docmint__Question *q = pg->questions[i];
        if (q->n_answers == 0) {
            if (stage_add_error(res, "cache-logits", q->question_id, -1, "no gold answer to cache"))
                goto oom;
            continue;
        }
        size_t na = st->o.first_answer_only ? 1 : q->n_answers;
        for (size_t a = 0; a < na; a++) {
            Seq *s = &seqs[ns];
            DmErr se = {{0}};
            if (cache_sequence(&st->qa, q->text ? q->text : "", q->answers[a], &s->ids, &s->n,
                               &s->a0, &se)) {
                if (strstr(se.msg, "out of memory")) {
                    dm_err(err, "%s", se.msg);
                    goto done;
                }
                snprintf(reason, sizeof reason, "question %" PRId64 " answer %zu: %s",
                         q->question_id, a, se.msg);
                if (stage_add_error(res, "cache-logits", q->question_id, (int)a, reason))
                    goto oom;
                continue;
            }
            s->q = q;
            s->answer = (int)a;
            ns++;
        }
    }
    if (ns == 0 && !pg->features) {
        rc = 0;
        goto done;
    }
    DmErr pe = {{0}};
    if (page_encode(st->qa.model, &st->pc, pg->image_path, pg->page_no, st->o.pdf_dpi, &enc,
                    &n_enc, &pe) ||
        dec_page_init(&page, st->qa.model, enc, n_enc, &pe)) {
        if (strstr(pe.msg, "out of memory")) {
            dm_err(err, "%s", pe.msg);
            goto done;
        }
        /* One error per question of the page (not per answer). */
        for (int i = 0; i < ns; i++)
            if ((i == 0 || seqs[i].q != seqs[i - 1].q) &&
                stage_add_error(res, "cache-logits", seqs[i].q->question_id, -1, pe.msg))
                goto oom;
        rc = 0;
        goto done;
    }
    if (pg->features && s_add_features(st, pg, enc, n_enc, res, err))
        goto done;
    int vocab = st->qa.model->cfg.dec.vocab;
    /* Blocks of whole sequences of at most CACHE_BLOCK_ROWS rows (one
     * sequence longer than that is a block of its own). */
    for (int i0 = 0, i1; i0 < ns; i0 = i1) {
        int rows = seqs[i0].n - 1;
        for (i1 = i0 + 1; i1 < ns && rows + seqs[i1].n - 1 <= CACHE_BLOCK_ROWS; i1++)
            rows += seqs[i1].n - 1;
        const int32_t *ids[CACHE_BLOCK_ROWS];
        int n[CACHE_BLOCK_ROWS], a0[CACHE_BLOCK_ROWS];
        for (int i = i0; i < i1; i++) {
            ids[i - i0] = seqs[i].ids;
            n[i - i0] = seqs[i].n;
            a0[i - i0] = seqs[i].a0;
        }
        if (cache_forward_page(st->qa.model, &page, i1 - i0, ids, n, a0, &logits, err))
            goto done;
        size_t first = res->n_logits;
        for (int i = i0; i < i1; i++) {
            Seq *s = &seqs[i];
            Docmint__LogitRecord **v = realloc(res->logits, (res->n_logits + 1) * sizeof *v);
            if (!v)
                goto oom;
            res->logits = v;
            Docmint__LogitRecord *r = malloc(sizeof *r);
            if (!r)
                goto oom;
            docmint__logit_record__init(r);
            res->logits[res->n_logits++] = r;
            r->question_id = s->q->question_id;
            r->answer_index = (uint32_t)s->answer;
            r->answer = strdup(s->q->answers[s->answer]);
            r->page_id = strdup(pg->page_id ? pg->page_id : "");
            if (!r->answer || !r->page_id)
                goto oom;
        }
        if (cache_fill_block(&st->o, vocab, i1 - i0, ids, n, a0, logits, res->logits + first,
                             err))
            goto done;
        free(logits);
        logits = NULL;
    }
    rc = 0;
    goto done;
oom:
    dm_err(err, "out of memory building the result of page %s", pg->page_id);
done:
    for (int i = 0; seqs && i < ns; i++)
        free(seqs[i].ids);
    free(seqs);
    free(logits);
    dec_page_free(&page);
    free(enc);
    return rc;
}

int cache_shard(CacheStage *st, const Docmint__Shard *shard, Docmint__Result *res,
                const atomic_int *cancel, DmErr *err)
{
    return stage_shard(st, s_page, shard, res, cancel, err);
}
