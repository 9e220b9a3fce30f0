/* dispatch_result.c - a worker's result at the coordinator: the lease it
 * names, the limits it must keep (result_check.h), a rejection that drops
 * its worker, one more try elsewhere for errors, and the records queued for
 * the store (dispatch_int.h). */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/dispatch_int.h"

static void s_hex(const unsigned char *b, size_t n, char *out, size_t cap)
{
    size_t k = 0;
    for (size_t i = 0; i < n && k + 3 <= cap; i++, k += 2)
        snprintf(out + k, cap - k, "%02x", b[i]);
    out[k < cap ? k : cap - 1] = '\0';
}

/* "NAME (routing id HEX, key Z85...)" */
static void s_identity(const WorkerSlot *w, char *out, size_t n)
{
    char hex[40];
    s_hex(w->id, w->idlen < 8 ? w->idlen : 8, hex, sizeof hex);
    snprintf(out, n, "%s (routing id %s..., key %.8s...)", w->name, hex,
             w->user[0] ? w->user : "none");
}

/* A result that breaks the rules: log it with the worker's identity and
 * drop the worker (its leases go back; nothing it sends counts again). */
static void s_reject(Dispatch *d, int i, int64_t nitems, const char *why)
{
    WorkerSlot *s = &d->w[i];
    char who[300];
    s_identity(s, who, sizeof who);
    fprintf(stderr, "%s: rejected a result from worker %s: %s; the worker is dropped\n",
            d->o.log_prefix, who, why);
    d->st.dropped += nitems;
    d->st.rejected++;
    dispatch_send_kind(d, i, DOCMINT__ENVELOPE__KIND__NO_MORE);
    dispatch_worker_lost(d, i, "dropped");
    s->banned = 1;
    /* A key of its own (an allow-listed one): refused from now on, and
     * every other connection with it ignored. */
    if (d->zap && s->user[0] && strcmp(s->user, d->join.client_public) != 0 &&
        zap_ban(d->zap, s->user) == 0) {
        fprintf(stderr, "%s: key %s is refused from now on\n", d->o.log_prefix, s->user);
        for (int j = 0; j < d->nw; j++)
            if (j != i && !d->w[j].banned && !strcmp(d->w[j].user, s->user)) {
                dispatch_send_kind(d, j, DOCMINT__ENVELOPE__KIND__NO_MORE);
                dispatch_worker_lost(d, j, "dropped (its key was)");
                d->w[j].banned = 1;
            }
    }
}

/* The shard's questions, sorted by qid (free the result). */
ShardQuestion *dispatch_shard_questions(const Dispatch *d, const LeaseShard *ls, int *n)
{
    ShardQuestion *q = calloc((size_t)ls->nq + 1, sizeof *q);
    *n = 0;
    if (!q)
        return NULL;
    for (int p = 0; p < ls->npages; p++) {
        const PlanPage *plp = &d->plan->pages[ls->first + p];
        const CorpusPage *cp = &d->corpus->pages[plp->page];
        for (int k = 0; k < plp->nq; k++) {
            const CorpusQuestion *cq = &cp->q[plp->qidx[k]];
            q[*n] = (ShardQuestion){cq->qid, cq, cp->page_id, cp->image_path, 0};
            (*n)++;
        }
    }
    qsort(q, (size_t)*n, sizeof *q, shard_question_cmp);
    return q;
}

int dispatch_result(Dispatch *d, int i, const Docmint__Result *r, size_t bytes, double now,
                    DmErr *err)
{
    int64_t nitems = (int64_t)(r->n_answers + r->n_logits + r->n_analyses + r->n_errors);
    LeaseIssue *issue = NULL;
    int st = lease_check(d->plan, r->shard_id, r->lease_token.data, r->lease_token.len, i, &issue);
    if (st == LEASE_UNKNOWN || st == LEASE_FOREIGN) {
        char why[200];
        snprintf(why, sizeof why, "a result for shard %" PRIu64 " under a lease %s", r->shard_id,
                 st == LEASE_FOREIGN ? "given to another worker" : "never given out");
        s_reject(d, i, nitems, why);
        return 1;
    }
    if (issue->open) {
        issue->open = 0;
        if (d->w[i].held > 0)
            d->w[i].held--;
    }
    if (st == LEASE_DUPLICATE) {
        d->st.dropped += nitems;
        return 0;
    }
    int k = (int)r->shard_id;
    LeaseShard *ls = &d->plan->shards[k];
    int n = 0;
    ShardQuestion *want = dispatch_shard_questions(d, ls, &n);
    if (!want)
        return dm_err(err, "out of memory");
    char why[1200];
    if (result_check(&d->lim, r, bytes, want, n, ls->npages, why, sizeof why)) {
        free(want);
        s_reject(d, i, nitems, why);
        return 1;
    }
    d->w[i].results++; /* a valid result, errors or not */
    /* Questions the worker failed (or left out): once on another worker
     * (when it is busy, the shard waits for it; s_may_take gives it back
     * to this one only when no other can take it). */
    int nerr = (int)r->n_errors;
    size_t na = r->n_answers, nl = r->n_logits, ny = r->n_analyses;
    for (size_t a = 0; a < na + nl + ny + r->n_errors; a++) {
        int64_t qid = a < na             ? r->answers[a]->question_id
                      : a < na + nl      ? r->logits[a - na]->question_id
                      : a < na + nl + ny ? r->analyses[a - na - nl]->question_id
                                         : r->errors[a - na - nl - ny]->question_id;
        ShardQuestion key = {.qid = qid};
        ShardQuestion *w = bsearch(&key, want, (size_t)n, sizeof *want, shard_question_cmp);
        w->taken = 1;
    }
    for (int q = 0; q < n; q++)
        nerr += !want[q].taken;
    if (nerr > 0 && !ls->error_retried) {
        const char *first = r->n_errors && r->errors[0]->reason ? r->errors[0]->reason
                                                                 : "a question left out";
        if (dispatch_other_alive(d, i)) {
            fprintf(stderr, "%s: shard %" PRIu64 ": worker %s reported %d error%s (%.200s): handed "
                            "to another worker once\n",
                    d->o.log_prefix, ls->id, d->w[i].name, nerr, nerr == 1 ? "" : "s", first);
            lease_retry(d->plan, k, i);
            d->st.retried++;
            d->st.dropped += nitems;
            free(want);
            return 0;
        }
        fprintf(stderr, "%s: shard %" PRIu64 ": worker %s reported %d error%s (%.200s); no other "
                        "worker to retry on: stored as errors\n",
                d->o.log_prefix, ls->id, d->w[i].name, nerr, nerr == 1 ? "" : "s", first);
    }
    lease_finish(d->plan, k);
    for (int q = 0; q < n; q++)
        want[q].taken = 0;
    int rc = -1;
    int per_answer = d->cache || d->analyze;
    for (size_t a = 0; a < na + nl + ny + r->n_errors; a++) {
        const Docmint__AnswerRecord *ar = a < na ? r->answers[a] : NULL;
        const Docmint__LogitRecord *lr = a >= na && a < na + nl ? r->logits[a - na] : NULL;
        const Docmint__AnalysisRecord *yr = a >= na + nl && a < na + nl + ny ? r->analyses[a - na - nl] : NULL;
        Docmint__ErrorRecord *er = a >= na + nl + ny ? r->errors[a - na - nl - ny] : NULL;
        ShardQuestion key = {.qid = ar ? ar->question_id : lr ? lr->question_id
                                  : yr ? yr->question_id : er->question_id};
        ShardQuestion *w = bsearch(&key, want, (size_t)n, sizeof *want, shard_question_cmp);
        w->taken = 1;
        if (ar) {
            /* The page and question are the coordinator's, not the worker's. */
            Docmint__AnswerRecord own = *ar;
            own.page_id = (char *)w->page_id;
            own.question = w->cq->text;
            if (results_add_answer(d->res, &own, now, err))
                goto done;
        } else if (yr) {
            /* The key-value values and classes are the coordinator's (kv_retrieval.h). */
            Docmint__AnalysisRecord own = *yr;
            if (d->kv)
                kv_record_fill(d->kv, &own);
            if (results_add_analysis(d->res, &own, now, err))
                goto done;
        } else if (lr   ? results_add_logit(d->res, lr, now, err)
                        /* a per-answer error keeps its item ("QID" or "QID/INDEX"),
                         * so one bad answer does not hide the question's others */
                   : per_answer ? results_add_error_item(d->res, er, now, err)
                                : results_add_error(d->res, key.qid, er, NULL, now, err)) {
            goto done;
        }
    }
    for (size_t f = 0; f < r->n_features; f++)
        if (results_add_feature(d->res, r->features[f], now, err))
            goto done;
    /* Every question of the shard gets a record, even if the worker
     * forgot one. */
    for (int q = 0; q < n; q++) {
        if (want[q].taken)
            continue;
        char reason[256];
        snprintf(reason, sizeof reason, "worker %s returned no result for this question",
                 d->w[i].name);
        if (results_add_error(d->res, want[q].qid, NULL, reason, now, err))
            goto done;
    }
    rc = 0;
done:
    free(want);
    return rc;
}
