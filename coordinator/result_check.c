/* result_check.c - limits on a worker's result (result_check.h). */
#include "coordinator/result_check.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/logit_store.h"
#include "common/records.h"

int shard_question_cmp(const void *a, const void *b)
{
    int64_t x = ((const ShardQuestion *)a)->qid, y = ((const ShardQuestion *)b)->qid;
    return x < y ? -1 : x > y;
}

static int s_why(char *why, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int s_why(char *why, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    return -1;
}

static size_t s_len(const char *s) { return s ? strlen(s) : 0; }

/* Bytes of the largest answer text: every generated id the longest piece. */
static size_t s_answer_max(const ResultLimits *lim)
{
    return (size_t)lim->m.max_length * (size_t)lim->m.max_piece_bytes + 16;
}

/* The largest error record (protobuf framing included, generously). */
static size_t s_error_max(void)
{
    return RESULT_REASON_MAX + RESULT_STAGE_MAX + RESULT_ITEM_MAX + 64;
}

/* The largest teacher-logit record of one gold answer. */
static size_t s_logit_max(const ResultLimits *lim, size_t answer_len, size_t page_len)
{
    size_t P = (size_t)lim->m.max_pos, V = (size_t)lim->m.vocab;
    int full = lim->top_k <= 0 || lim->top_k >= lim->m.vocab;
    size_t k = full ? V : (size_t)lim->top_k, idb = full ? 0 : V <= 65536 ? 2 : 4;
    size_t T = (size_t)(lim->n_temps > 0 ? lim->n_temps : 1);
    return 2 * 6 * P                /* token_ids and targets, varints */
           + P * k * (2 + idb)      /* top_logits, top_ids */
           + P * 4 * (1 + 2 * T)    /* shift, lse, lse_rest */
           + 4 * T + answer_len + page_len + 256;
}

/* Elements any repeated field of an analysis record may hold: the lens
 * and reprojection rows are per site and position, head rows per site and
 * head, transcription rows per encoder token. */
static size_t s_analysis_elems(const ResultLimits *lim)
{
    size_t L = (size_t)(lim->m.dec_layers > 0 ? lim->m.dec_layers : 1);
    size_t H = (size_t)(lim->m.dec_heads > 0 ? lim->m.dec_heads : 1);
    size_t per_pos = (3 * L + 2) * (H + 1) * (size_t)(lim->m.max_pos > 0 ? lim->m.max_pos : 1);
    size_t enc = (size_t)lim->m.enc_tokens_max;
    return per_pos > enc ? per_pos : enc;
}

static size_t s_analysis_max(const ResultLimits *lim)
{
    /* 13 repeated fields of at most 4-byte elements (varints up to 10), the
     * named values, and the strings */
    return 65536 + 13 * 10 * s_analysis_elems(lim);
}

size_t result_max_bytes(const ResultLimits *lim, const ShardQuestion *qs, int nq, int npages)
{
    size_t total = 4096;
    for (int i = 0; i < nq; i++) {
        size_t pl = s_len(qs[i].page_id), ql = s_len(qs[i].cq->text);
        if (lim->analyze) {
            int na = qs[i].cq->nanswers > 0 ? qs[i].cq->nanswers : 1;
            /* + the key-value retrieval's three answers */
            total += (size_t)na * (s_analysis_max(lim) + pl + ql + s_error_max() + 16) + s_error_max() +
                     3 * (s_answer_max(lim) + 8);
            continue;
        }
        if (!lim->cache) {
            size_t ans = s_answer_max(lim) + 6 * (size_t)lim->m.max_length + pl + ql + 64;
            total += (ans > s_error_max() ? ans : s_error_max()) + 16;
            continue;
        }
        int na = qs[i].cq->nanswers > 0 ? qs[i].cq->nanswers : 1;
        for (int a = 0; a < na; a++) {
            size_t al = qs[i].cq->nanswers > 0 ? s_len(qs[i].cq->answers[a]) : 0;
            size_t rec = s_logit_max(lim, al, pl);
            /* an answer may fail on its own, and the question as a whole */
            total += rec + s_error_max() + 16;
        }
        total += s_error_max();
    }
    if (lim->cache && lim->keep_features)
        total += (size_t)npages * ((size_t)lim->m.enc_tokens_max * (size_t)lim->m.enc_dim * 2 +
                                   2 * 4096 + 64);
    return total;
}

static ShardQuestion *s_find(ShardQuestion *qs, int nq, int64_t qid)
{
    ShardQuestion key = {.qid = qid};
    return bsearch(&key, qs, (size_t)nq, sizeof *qs, shard_question_cmp);
}

static int s_ids_ok(const int32_t *ids, size_t n, int vocab)
{
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            return 0;
    return 1;
}

static int s_all_finite(const float *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(v[i]))
            return 0;
    return 1;
}

static int s_answer(const ResultLimits *lim, const Docmint__AnswerRecord *a, char *why, size_t n)
{
    long long q = (long long)a->question_id;
    if (a->n_token_ids > (size_t)lim->m.max_length)
        return s_why(why, n, "answer to question %lld: %zu token ids, max_length is %d", q,
                     a->n_token_ids, lim->m.max_length);
    if (!s_ids_ok(a->token_ids, a->n_token_ids, lim->m.vocab))
        return s_why(why, n, "answer to question %lld: a token id outside the vocabulary of %d",
                     q, lim->m.vocab);
    if (s_len(a->answer) > s_answer_max(lim))
        return s_why(why, n, "answer to question %lld: %zu bytes of text, at most %zu can be "
                             "decoded from %d tokens",
                     q, s_len(a->answer), s_answer_max(lim), lim->m.max_length);
    if (!isfinite(a->mean_logprob) || a->mean_logprob > 1e-3f)
        return s_why(why, n, "answer to question %lld: mean log-probability %g", q,
                     (double)a->mean_logprob);
    if (!isfinite(a->seconds) || a->seconds < 0)
        return s_why(why, n, "answer to question %lld: %g seconds", q, (double)a->seconds);
    return 0;
}

/* An item of a cache-logits error: "" or "QID" or "QID/INDEX" with
 * INDEX one of the question's answers. */
static int s_item_ok(const char *item, const ShardQuestion *sq)
{
    if (!item || !item[0])
        return 1;
    char want[32];
    int n = snprintf(want, sizeof want, "%" PRId64, sq->qid);
    if (strncmp(item, want, (size_t)n) != 0)
        return 0;
    if (item[n] == '\0')
        return 1;
    if (item[n] != '/' || !item[n + 1])
        return 0;
    char *end;
    long idx = strtol(item + n + 1, &end, 10);
    return !*end && idx >= 0 && idx < (sq->cq->nanswers > 0 ? sq->cq->nanswers : 1);
}

static int s_error(const ResultLimits *lim, const Docmint__ErrorRecord *e, const ShardQuestion *sq,
                   char *why, size_t n)
{
    long long q = (long long)e->question_id;
    if (s_len(e->reason) > RESULT_REASON_MAX)
        return s_why(why, n, "error record of question %lld: a reason of %zu bytes (at most %d)",
                     q, s_len(e->reason), RESULT_REASON_MAX);
    if (s_len(e->stage) > RESULT_STAGE_MAX || s_len(e->item) > RESULT_ITEM_MAX)
        return s_why(why, n, "error record of question %lld: stage or item too long", q);
    if (lim->cache && !s_item_ok(e->item, sq))
        return s_why(why, n, "error record of question %lld: item \"%.40s\" is not this question's",
                     q, e->item);
    return 0;
}

static int s_logit(const ResultLimits *lim, const Docmint__LogitRecord *r, const ShardQuestion *sq,
                   char *why, size_t n)
{
    long long q = (long long)r->question_id;
    unsigned a = r->answer_index;
    DmErr e = {{0}};
    if (logit_record_validate(r, &e))
        return s_why(why, n, "%s", e.msg);
    if (a >= (unsigned)sq->cq->nanswers || !r->answer || strcmp(r->answer, sq->cq->answers[a]))
        return s_why(why, n, "record %lld/%u: not a gold answer of the question", q, a);
    int V = lim->m.vocab, full = lim->top_k <= 0 || lim->top_k >= V;
    uint32_t k = full ? (uint32_t)V : (uint32_t)lim->top_k;
    uint32_t idb = full ? 0 : V <= 65536 ? 2 : 4;
    if (r->vocab != (uint32_t)V || r->k != k || (int)r->full != full || r->id_bytes != idb)
        return s_why(why, n, "record %lld/%u: k %u of vocabulary %u (%u-byte ids), the job has k "
                             "%u of %d (%u-byte ids)",
                     q, a, r->k, r->vocab, r->id_bytes, k, V, idb);
    if (r->n_token_ids > (size_t)lim->m.max_pos)
        return s_why(why, n, "record %lld/%u: %zu tokens, the model has %d positions", q, a,
                     r->n_token_ids, lim->m.max_pos);
    if (!s_ids_ok(r->token_ids, r->n_token_ids, V) || !s_ids_ok(r->targets, r->n_targets, V))
        return s_why(why, n, "record %lld/%u: a token id outside the vocabulary of %d", q, a, V);
    if (r->n_temperatures != (size_t)lim->n_temps)
        return s_why(why, n, "record %lld/%u: %zu temperatures, the job has %d", q, a,
                     r->n_temperatures, lim->n_temps);
    for (int t = 0; t < lim->n_temps; t++)
        if (r->temperatures[t] != (float)lim->temps[t])
            return s_why(why, n, "record %lld/%u: temperature %g is not the job's %g", q, a,
                         (double)r->temperatures[t], lim->temps[t]);
    int P = logit_record_positions(r);
    if (r->n_shift != (size_t)P || !s_all_finite(r->shift, r->n_shift) ||
        !s_all_finite(r->lse, r->n_lse))
        return s_why(why, n, "record %lld/%u: shifts or log-sum-exps missing or not finite", q, a);
    if (r->n_lse_rest != (full ? 0 : (size_t)P * (size_t)lim->n_temps))
        return s_why(why, n, "record %lld/%u: %zu lse_rest values", q, a, r->n_lse_rest);
    for (size_t i = 0; i < r->n_lse_rest; i++)
        if (isnan(r->lse_rest[i]) || r->lse_rest[i] == INFINITY)
            return s_why(why, n, "record %lld/%u: lse_rest %g", q, a, (double)r->lse_rest[i]);
    /* float16 logits minus the shift: no NaN, nothing above 0 */
    for (size_t i = 0; i + 1 < r->top_logits.len; i += 2) {
        uint16_t h = (uint16_t)(r->top_logits.data[i] | (r->top_logits.data[i + 1] << 8));
        if ((h & 0x7c00) == 0x7c00 && (h & 0x03ff))
            return s_why(why, n, "record %lld/%u: a NaN logit", q, a);
        if (!(h & 0x8000) && (h & 0x7fff))
            return s_why(why, n, "record %lld/%u: a logit above its row's largest", q, a);
    }
    for (int p = 0; !full && p < P; p++)
        for (uint32_t i = 0; i < r->k; i++)
            if (logit_record_id(r, p, (int)i) >= (uint32_t)V)
                return s_why(why, n, "record %lld/%u: a kept id outside the vocabulary", q, a);
    return 0;
}

/* An analysis record: its answer among the question's, the decoder's shape,
 * ids within the vocabulary, arrays within their bound.  Values are not
 * checked: NaN is the stage's mark for an analysis the job did not ask for
 * (worker/analyze), and an NLL may be infinite. */
static int s_analysis(const ResultLimits *lim, const Docmint__AnalysisRecord *y, const ShardQuestion *sq,
                      char *why, size_t n)
{
    long long q = (long long)y->question_id;
    int nans = sq->cq->nanswers > 0 ? sq->cq->nanswers : 1;
    if (y->answer_index >= (uint32_t)nans)
        return s_why(why, n, "analysis %lld: answer %u of %d", q, y->answer_index, nans);
    if (y->layers > (uint32_t)lim->m.dec_layers || y->heads > (uint32_t)lim->m.dec_heads)
        return s_why(why, n, "analysis %lld: %u layers x %u heads, the decoder has %d x %d", q,
                     y->layers, y->heads, lim->m.dec_layers, lim->m.dec_heads);
    if (y->n_token_ids > (size_t)lim->m.max_pos || y->answer_start > y->n_token_ids)
        return s_why(why, n, "analysis %lld: %zu token ids (answer from %u), at most %d", q,
                     y->n_token_ids, y->answer_start, lim->m.max_pos);
    if (!s_ids_ok(y->token_ids, y->n_token_ids, lim->m.vocab) ||
        !s_ids_ok(y->lens_top1, y->n_lens_top1, lim->m.vocab) ||
        !s_ids_ok(y->transcribe_top1, y->n_transcribe_top1, lim->m.vocab) ||
        !s_ids_ok(y->lens_target_rank, y->n_lens_target_rank, lim->m.vocab))
        return s_why(why, n, "analysis %lld: a token id or rank outside the vocabulary", q);
    size_t cap = s_analysis_elems(lim);
    const size_t sizes[] = {y->n_nll_skip, y->n_nll_reproject, y->n_lens_target_logprob,
                            y->n_lens_top1, y->n_lens_target_rank, y->n_sa_entropy,
                            y->n_ca_variance, y->n_nll_head_ablation, y->n_transcribe_top1,
                            y->n_transcribe_entropy, y->n_nll_patch_head, y->n_atp_head,
                            y->n_named};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        if (sizes[i] > cap)
            return s_why(why, n, "analysis %lld: a field of %zu values, at most %zu", q, sizes[i], cap);
    for (size_t i = 0; i < y->n_named; i++)
        if (!y->named[i] || !y->named[i]->name || strlen(y->named[i]->name) > 256)
            return s_why(why, n, "analysis %lld: a named value without a name (or one too long)", q);
    if (s_len(y->answer) > s_answer_max(lim) || s_len(y->page_id) > 4096 || s_len(y->question) > 65536 ||
        s_len(y->kv_answer_clean) > s_answer_max(lim) || s_len(y->kv_answer_patched) > s_answer_max(lim) ||
        s_len(y->kv_answer_control) > s_answer_max(lim))
        return s_why(why, n, "analysis %lld: a string too long", q);
    return 0;
}

int result_check(const ResultLimits *lim, const Docmint__Result *r, size_t bytes,
                 ShardQuestion *qs, int nq, int npages, char *why, size_t whyn)
{
    size_t cap = result_max_bytes(lim, qs, nq, npages);
    if (bytes > cap)
        return s_why(why, whyn, "a message of %zu bytes, at most %zu for %d questions", bytes, cap,
                     nq);
    int rc = -1;
    size_t na = r->n_answers, nl = r->n_logits, ny = r->n_analyses;
    int per_answer = lim->cache || lim->analyze;
    for (size_t i = 0; i < na + nl + ny + r->n_errors; i++) {
        const Docmint__AnswerRecord *ar = i < na ? r->answers[i] : NULL;
        const Docmint__LogitRecord *lr = i >= na && i < na + nl ? r->logits[i - na] : NULL;
        const Docmint__AnalysisRecord *yr = i >= na + nl && i < na + nl + ny ? r->analyses[i - na - nl] : NULL;
        const Docmint__ErrorRecord *er = i >= na + nl + ny ? r->errors[i - na - nl - ny] : NULL;
        int64_t qid = ar ? ar->question_id : lr ? lr->question_id : yr ? yr->question_id : er->question_id;
        ShardQuestion *sq = s_find(qs, nq, qid);
        if (!sq) {
            s_why(why, whyn, "a record for question %" PRId64 ", which is not in the shard", qid);
            goto done;
        }
        if ((ar && per_answer) || (lr && !lim->cache) || (yr && !lim->analyze)) {
            s_why(why, whyn, "%s", ar ? "an answer record in a cache-logits or analyze shard"
                                   : lr ? "a logit record outside a cache-logits shard"
                                        : "an analysis record outside an analyze shard");
            goto done;
        }
        if (!per_answer && sq->taken) {
            s_why(why, whyn, "two records for question %" PRId64, qid);
            goto done;
        }
        sq->taken = 1;
        if (ar   ? s_answer(lim, ar, why, whyn)
            : lr ? s_logit(lim, lr, sq, why, whyn)
            : yr ? s_analysis(lim, yr, sq, why, whyn)
                 : s_error(lim, er, sq, why, whyn))
            goto done;
    }
    for (size_t f = 0; f < r->n_features; f++) {
        const Docmint__FeatureRecord *fr = r->features[f];
        int ours = 0;
        for (int k = 0; k < nq && !ours && lim->keep_features; k++)
            ours = fr->page_id && qs[k].page_id && !strcmp(fr->page_id, qs[k].page_id);
        if (!ours) {
            s_why(why, whyn, "features of page \"%.60s\", which is not asked for in the shard",
                  fr->page_id ? fr->page_id : "");
            goto done;
        }
        DmErr e = {{0}};
        if (feature_record_validate(fr, &e)) {
            s_why(why, whyn, "%s", e.msg);
            goto done;
        }
        if (fr->dim != (uint32_t)lim->m.enc_dim || fr->tokens > (uint32_t)lim->m.enc_tokens_max) {
            s_why(why, whyn, "features of page %.60s: %u tokens x %u, the encoder gives at most "
                             "%d x %d",
                  fr->page_id, fr->tokens, fr->dim, lim->m.enc_tokens_max, lim->m.enc_dim);
            goto done;
        }
    }
    rc = 0;
done:
    for (int k = 0; k < nq; k++)
        qs[k].taken = 0;
    return rc;
}
