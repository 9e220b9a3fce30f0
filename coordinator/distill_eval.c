/* distill_eval.c - answers scored during training (distill_eval.h). */
#include "coordinator/distill_eval.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/anls.h"
#include "coordinator/plot.h"
#include "worker/data/corpus.h"
#include "worker/model/page_encode.h"

#define MAX_TYPES 64

typedef struct EvalPage {
    int page;   /* index in the corpus */
    int nq;     /* its first nq questions are scored */
} EvalPage;

struct DistillEval {
    char *path;
    Corpus *corpus;
    int pdf_dpi;
    EvalPage *pages;
    int npages, nq;
    char *types[MAX_TYPES];
    int ntypes;
    FILE *log;
    char png[4200];
    long *x;
    double *y;
    int n, cap;
    char summary[512];
};

static int s_type_index(DistillEval *e, const char *t)
{
    for (int i = 0; i < e->ntypes; i++)
        if (!strcmp(e->types[i], t))
            return i;
    if (e->ntypes == MAX_TYPES)
        return -1;
    e->types[e->ntypes] = strdup(t);
    return e->types[e->ntypes] ? e->ntypes++ : -1;
}

int distill_eval_open(const char *corpus_path, int max_q, int pdf_dpi, DistillEval **out,
                      DmErr *err)
{
    *out = NULL;
    DistillEval *e = calloc(1, sizeof *e);
    if (!e || !(e->path = strdup(corpus_path))) {
        free(e);
        return dm_err(err, "out of memory");
    }
    e->pdf_dpi = pdf_dpi;
    CorpusSpec spec = {.format = CORPUS_DOCVQA, .path = corpus_path, .pdf_dpi = pdf_dpi};
    if (corpus_load(&spec, &e->corpus, err)) {
        distill_eval_free(&e);
        return dm_err_prefix(err, "distill.eval.corpus");
    }
    const Corpus *c = e->corpus;
    e->pages = calloc((size_t)c->npages + 1, sizeof *e->pages);
    if (!e->pages) {
        distill_eval_free(&e);
        return dm_err(err, "out of memory");
    }
    for (int p = 0; p < c->npages && (max_q == 0 || e->nq < max_q); p++) {
        int take = c->pages[p].nq;
        if (max_q > 0 && take > max_q - e->nq)
            take = max_q - e->nq;
        for (int q = 0; q < take; q++) {
            const CorpusQuestion *cq = &c->pages[p].q[q];
            if (cq->nanswers == 0) {
                int rc = dm_err(err, "distill.eval.corpus: %s: question %lld (page %s) has no "
                                     "answers: scoring needs them",
                                corpus_path, (long long)cq->qid, c->pages[p].page_id);
                distill_eval_free(&e);
                return rc;
            }
            for (int t = 0; t < cq->nqtypes; t++)
                s_type_index(e, cq->qtypes[t]);
        }
        if (take > 0)
            e->pages[e->npages++] = (EvalPage){p, take};
        e->nq += take;
    }
    if (e->nq == 0) {
        distill_eval_free(&e);
        return dm_err(err, "distill.eval.corpus: %s: no questions", corpus_path);
    }
    *out = e;
    return 0;
}

void distill_eval_free(DistillEval **pe)
{
    DistillEval *e = *pe;
    if (!e)
        return;
    corpus_free(&e->corpus);
    if (e->log)
        fclose(e->log);
    for (int i = 0; i < e->ntypes; i++)
        free(e->types[i]);
    free(e->pages);
    free(e->path);
    free(e->x);
    free(e->y);
    free(e);
    *pe = NULL;
}

int distill_eval_questions(const DistillEval *e) { return e->nq; }

const char *distill_eval_summary(const DistillEval *e) { return e->summary; }

static int s_point(DistillEval *e, long step, double anls)
{
    if (e->n == e->cap) {
        int cap = e->cap ? 2 * e->cap : 32;
        long *x = realloc(e->x, (size_t)cap * sizeof *x);
        if (x)
            e->x = x;
        double *y = realloc(e->y, (size_t)cap * sizeof *y);
        if (y)
            e->y = y;
        if (!x || !y)
            return -1;
        e->cap = cap;
    }
    /* a point for the same step again (a rerun scoring its last step)
     * replaces the earlier one */
    if (e->n > 0 && e->x[e->n - 1] == step)
        e->n--;
    e->x[e->n] = step;
    e->y[e->n++] = anls;
    return 0;
}

int distill_jsonl_keep(const char *path, long step, int (*each)(void *ctx, long s, json_t *o),
                       void *ctx, FILE **append, DmErr *err)
{
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *in = step > 0 ? fopen(path, "r") : NULL;
    FILE *out = fopen(tmp, "w");
    if (!out) {
        if (in)
            fclose(in);
        return dm_err_errno(err, "%s: cannot write", tmp);
    }
    char line[8192];
    int rc = 0;
    while (in && !rc && fgets(line, sizeof line, in)) {
        json_t *o = json_loads(line, 0, NULL);
        long s = o ? (long)json_integer_value(json_object_get(o, "step")) : -1;
        if (o && s >= 0 && s <= step) {
            int r = each(ctx, s, o);
            if (r < 0)
                rc = dm_err(err, "out of memory");
            else if (r == 0)
                fputs(line, out);
        }
        json_decref(o);
    }
    if (in)
        fclose(in);
    if (fclose(out) != 0 || rename(tmp, path) != 0)
        return rc ? rc : dm_err_errno(err, "%s: cannot write", path);
    if (rc)
        return rc;
    *append = fopen(path, "a");
    return *append ? 0 : dm_err_errno(err, "%s: cannot append", path);
}

static int s_val_line(void *ctx, long s, json_t *o)
{
    return s_point(ctx, s, json_number_value(json_object_get(o, "anls"))) ? -1 : 0;
}

int distill_eval_log_open(DistillEval *e, const char *output, long step, DmErr *err)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/val.jsonl", output);
    snprintf(e->png, sizeof e->png, "%s/val_anls.png", output);
    return distill_jsonl_keep(path, step, s_val_line, e, &e->log, err);
}

/* This rank's pages: their ANLS sums into v (see the layout below). */
static void s_answer(DistillEval *e, const QaModel *qa, const PreprocConfig *pc, int rank,
                     int size, double *v, char *first_err, size_t cap)
{
    const Corpus *c = e->corpus;
    for (int i = rank; i < e->npages; i += size) {
        const CorpusPage *pg = &c->pages[e->pages[i].page];
        int nq = e->pages[i].nq;
        float *enc = NULL;
        int n_enc = 0;
        DmErr err = {{0}};
        const char **texts = malloc((size_t)nq * sizeof *texts);
        QaAnswer *ans = calloc((size_t)nq, sizeof *ans);
        int rc = !texts || !ans ? dm_err(&err, "out of memory") : 0;
        for (int q = 0; !rc && q < nq; q++)
            texts[q] = pg->q[q].text;
        rc = rc ? rc
                : page_encode(qa->model, pc, pg->image_path, pg->page_no, e->pdf_dpi, &enc, &n_enc,
                              &err) ||
                      qa_answer_page(qa, enc, n_enc, texts, nq, ans, &err);
        if (rc) {
            v[2] += nq;
            if (!first_err[0])
                snprintf(first_err, cap, "%s: %s", pg->page_id, err.msg);
        }
        for (int q = 0; !rc && q < nq; q++) {
            const CorpusQuestion *cq = &pg->q[q];
            double s = anls_question(ans[q].text ? ans[q].text : "",
                                     (const char *const *)cq->answers, cq->nanswers);
            v[0] += s;
            v[1] += 1;
            for (int t = 0; t < cq->nqtypes; t++) {
                int k = s_type_index(e, cq->qtypes[t]);
                if (k >= 0) {
                    v[3 + 2 * k] += s;
                    v[4 + 2 * k] += 1;
                }
            }
        }
        for (int q = 0; ans && q < nq; q++)
            qa_answer_free(&ans[q]);
        free(ans);
        free(texts);
        free(enc);
    }
}

int distill_eval_score(DistillEval *e, const QaModel *qa, const PreprocConfig *pc, Coll *coll,
                       int rank, int size, long step, double *anls, DmErr *err)
{
    /* v: ANLS sum, questions scored, questions failed, then per type its
     * ANLS sum and count */
    int nv = 3 + 2 * e->ntypes;
    double v[3 + 2 * MAX_TYPES];
    memset(v, 0, sizeof v);
    char first_err[512] = "";
    s_answer(e, qa, pc, rank, size, v, first_err, sizeof first_err);
    if (first_err[0])
        fprintf(stderr, "docmint run: rank %d: distill.eval: %s (its questions are left out)\n",
                rank, first_err);
    if (coll_allreduce_sum_f64(coll, v, nv, err))
        return -1;
    *anls = v[1] > 0 ? v[0] / v[1] : 0;
    int len = snprintf(e->summary, sizeof e->summary, "val ANLS %.4f on %.0f questions", *anls,
                       v[1]);
    if (v[2] > 0 && len < (int)sizeof e->summary)
        len += snprintf(e->summary + len, sizeof e->summary - (size_t)len, " (%.0f failed)", v[2]);
    for (int k = 0; k < e->ntypes && len < (int)sizeof e->summary; k++)
        if (v[4 + 2 * k] > 0)
            len += snprintf(e->summary + len, sizeof e->summary - (size_t)len, "%s %s %.3f",
                            k == 0 ? ";" : ",", e->types[k], v[3 + 2 * k] / v[4 + 2 * k]);
    if (rank != 0)
        return 0;
    json_t *o = json_pack("{s:I, s:f, s:i, s:i, s:{}}", "step", (json_int_t)step, "anls", *anls,
                          "questions", (int)v[1], "failed", (int)v[2], "by_type");
    json_t *bt = o ? json_object_get(o, "by_type") : NULL;
    for (int k = 0; bt && k < e->ntypes; k++)
        if (v[4 + 2 * k] > 0)
            json_object_set_new(bt, e->types[k], json_real(v[3 + 2 * k] / v[4 + 2 * k]));
    char *line = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!line || s_point(e, step, *anls)) {
        free(line);
        return dm_err(err, "out of memory");
    }
    if (e->log) {
        fprintf(e->log, "%s\n", line);
        fflush(e->log);
    }
    free(line);
    if (!e->png[0])
        return 0;
    char title[600];
    const char *base = strrchr(e->path, '/');
    snprintf(title, sizeof title, "ANLS on %d questions of %s, against the training step", e->nq,
             base ? base + 1 : e->path);
    return plot_series_png(e->png, title, "step", "ANLS", e->x, e->y, e->n, 0, 1, "%.3f", err);
}
