/* an_select.c - a selection corpus scored under removals (an_select.h). */
#include "worker/analyze/an_select.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "worker/data/corpus.h"
#include "worker/model/page_encode.h"
#include "worker/stages/stage_cache.h" /* cache_sequence */

int an_sel_new(const DonutModel *m, AnSel **out, DmErr *err)
{
    *out = calloc(1, sizeof **out);
    if (!*out)
        return dm_err(err, "out of memory");
    (*out)->m = m;
    return 0;
}

void an_sel_free(AnSel **ps)
{
    AnSel *s = *ps;
    if (!s)
        return;
    for (int i = 0; i < s->npages; i++) {
        dec_page_free(&s->pages[i]);
        free(s->enc[i]);
    }
    for (int i = 0; i < s->nitems; i++) {
        free(s->items[i].ids);
        free(s->items[i].teacher_lp);
    }
    free(s->pages);
    free(s->enc);
    free(s->items);
    free(s);
    *ps = NULL;
}

int an_sel_add_page(AnSel *s, float *enc, int n_enc, int *page, DmErr *err)
{
    float **e = realloc(s->enc, (size_t)(s->npages + 1) * sizeof *e);
    if (e)
        s->enc = e;
    DecPage *p = e ? realloc(s->pages, (size_t)(s->npages + 1) * sizeof *p) : NULL;
    if (!p) {
        free(enc);
        return dm_err(err, "out of memory");
    }
    s->pages = p;
    memset(&p[s->npages], 0, sizeof *p);
    if (dec_page_init(&p[s->npages], s->m, enc, n_enc, err)) {
        free(enc);
        return -1;
    }
    s->enc[s->npages] = enc;
    *page = s->npages++;
    return 0;
}

int an_sel_add_item(AnSel *s, int page, const int32_t *ids, int T, int answer_start, DmErr *err)
{
    if (page < 0 || page >= s->npages || T < 2 || answer_start < 0 || answer_start > T - 2)
        return dm_err(err, "selection: item of %d tokens with answer start %d on page %d has no "
                           "scored position", T, answer_start, page);
    AnSelItem *v = realloc(s->items, (size_t)(s->nitems + 1) * sizeof *v);
    if (!v)
        return dm_err(err, "out of memory");
    s->items = v;
    AnSelItem *it = &v[s->nitems];
    memset(it, 0, sizeof *it);
    if (!(it->ids = malloc((size_t)T * sizeof *ids)))
        return dm_err(err, "out of memory");
    memcpy(it->ids, ids, (size_t)T * sizeof *ids);
    it->page = page;
    it->T = T;
    it->answer_start = answer_start;
    s->nitems++;
    s->has_teacher = 0;
    return 0;
}

int an_sel_load(const QaModel *qa, const PreprocConfig *pc, const char *path,
                const char *image_root, int pdf_dpi, AnSel **out, DmErr *err)
{
    CorpusSpec spec = {.format = CORPUS_DOCVQA, .path = path, .image_root = image_root,
                       .pdf_dpi = pdf_dpi};
    Corpus *c = NULL;
    *out = NULL;
    if (corpus_load(&spec, &c, err))
        return -1;
    int rc = -1;
    if (c->nquestions == 0) {
        dm_err(err, "%s: the selection corpus has no question", path);
        goto done;
    }
    /* every question needs its answers: checked before any page is encoded */
    for (int p = 0; p < c->npages; p++)
        for (int q = 0; q < c->pages[p].nq; q++)
            if (c->pages[p].q[q].nanswers == 0) {
                dm_err(err, "%s: questionId %" PRId64 " has no gold answer: a selection corpus "
                            "needs the answers (\"answers\")", path, c->pages[p].q[q].qid);
                goto done;
            }
    if (an_sel_new(qa->model, out, err))
        goto done;
    for (int p = 0; p < c->npages; p++) {
        const CorpusPage *pg = &c->pages[p];
        float *enc = NULL;
        int n_enc = 0, page;
        if (page_encode(qa->model, pc, pg->image_path, pg->page_no, pdf_dpi, &enc, &n_enc, err) ||
            an_sel_add_page(*out, enc, n_enc, &page, err)) {
            dm_err_prefix(err, "%s", path);
            goto done;
        }
        (*out)->encoded++;
        for (int q = 0; q < pg->nq; q++)
            for (int a = 0; a < pg->q[q].nanswers; a++) {
                int32_t *ids = NULL;
                int n, a0;
                if (cache_sequence(qa, pg->q[q].text ? pg->q[q].text : "", pg->q[q].answers[a],
                                   &ids, &n, &a0, err)) {
                    dm_err_prefix(err, "%s: questionId %" PRId64, path, pg->q[q].qid);
                    goto done;
                }
                int r = an_sel_add_item(*out, page, ids, n, a0, err);
                free(ids);
                if (r)
                    goto done;
            }
    }
    rc = 0;
done:
    if (rc)
        an_sel_free(out);
    corpus_free(&c);
    return rc;
}

/* log softmax of P rows of V logits into lp (float, computed in double). */
static void s_log_softmax(const float *x, int P, int V, float *lp)
{
    for (int t = 0; t < P; t++) {
        const float *r = x + (size_t)t * V;
        float *o = lp + (size_t)t * V;
        double mx = r[0], z = 0;
        for (int v = 1; v < V; v++)
            mx = r[v] > mx ? r[v] : mx;
        for (int v = 0; v < V; v++)
            z += exp((double)r[v] - mx);
        double lz = mx + log(z);
        for (int v = 0; v < V; v++)
            o[v] = (float)((double)r[v] - lz);
    }
}

/* The interventions of a removal: a zeroed output per removed sub-layer,
 * a zeroed head per dropped head of a kept sub-layer. */
static int s_ops(const AnSel *s, const AnRemoval *r, int T, AnOp **ops, int *n, DmErr *err)
{
    int nsub = 3 * s->m->cfg.dec.layers, H = s->m->cfg.dec.heads, k = 0;
    *ops = malloc((size_t)nsub * (H + 1) * sizeof **ops);
    if (!*ops)
        return dm_err(err, "out of memory");
    for (int i = 0; r && i < nsub; i++) {
        if (r->sub[i]) {
            (*ops)[k++] = (AnOp){.site = {i, AN_OUT, 0}, .op = AN_ZERO, .row0 = 0, .row1 = T};
            continue;
        }
        for (int h = 0; i % 3 != DM_SUB_M && h < H; h++)
            if (r->head[i][h])
                (*ops)[k++] = (AnOp){.site = {i, AN_HEAD, h}, .op = AN_ZERO, .row0 = 0, .row1 = T};
    }
    *n = k;
    return 0;
}

/* Room for an item's scored logits, [P, vocab]. */
static float *s_scored_alloc(const AnSel *s, const AnSelItem *it)
{
    return malloc((size_t)(it->T - 1 - it->answer_start) * s->m->cfg.dec.vocab * sizeof(float));
}

/* The items from i on whose sequences fill one block (at least one). */
static int s_chunk(const AnSel *s, int i)
{
    int n = 0, rows = 0;
    while (i + n < s->nitems && (n == 0 || rows + s->items[i + n].T - 1 <= AN_BLOCK_ROWS))
        rows += s->items[i + n++].T - 1;
    return n;
}

/* Items i .. i+n-1 under removal r (NULL: the teacher) in one an_runs
 * call, item k's NLL into jobs[k].nll and its scored logits into lg[k]
 * (when lg is not NULL). */
static int s_chunk_run(AnSel *s, const AnRemoval *r, int i, int n, AnJob *jobs, float *const *lg,
                       DmErr *err)
{
    AnOp **ops = calloc(n, sizeof *ops);
    int rc = -1;
    if (!ops)
        return dm_err(err, "out of memory");
    for (int k = 0; k < n; k++) {
        AnSelItem *it = &s->items[i + k];
        int nops = 0;
        if (r && s_ops(s, r, it->T, &ops[k], &nops, err))
            goto done;
        jobs[k] = (AnJob){.page = &s->pages[it->page], .ids = it->ids, .T = it->T,
                          .answer_start = it->answer_start, .ops = ops[k], .nops = nops,
                          .logits = lg ? lg[k] : NULL};
    }
    s->passes += n;
    rc = an_runs(jobs, n, NULL, err);
done:
    for (int k = 0; k < n; k++)
        free(ops[k]);
    free(ops);
    return rc;
}

int an_sel_teacher(AnSel *s, DmErr *err)
{
    size_t V = s->m->cfg.dec.vocab;
    double sum = 0;
    AnJob *jobs = malloc((s->nitems ? s->nitems : 1) * sizeof *jobs);
    float **lg = malloc((s->nitems ? s->nitems : 1) * sizeof *lg);
    int rc = -1;
    if (!jobs || !lg) {
        dm_err(err, "out of memory");
        goto done;
    }
    for (int i = 0; i < s->nitems;) {
        int n = s_chunk(s, i);
        for (int k = 0; k < n; k++) {
            AnSelItem *it = &s->items[i + k];
            free(it->teacher_lp);
            if (!(it->teacher_lp = lg[k] = s_scored_alloc(s, it))) {
                dm_err(err, "out of memory");
                goto done;
            }
        }
        if (s_chunk_run(s, NULL, i, n, jobs, lg, err))
            goto done;
        for (int k = 0; k < n; k++) {
            AnSelItem *it = &s->items[i + k];
            s_log_softmax(it->teacher_lp, it->T - 1 - it->answer_start, (int)V, it->teacher_lp);
            sum += jobs[k].nll;
        }
        i += n;
    }
    s->clean_nll = s->nitems ? sum / s->nitems : NAN;
    s->has_teacher = 1;
    rc = 0;
done:
    free(jobs);
    free(lg);
    return rc;
}

int an_sel_eval(AnSel *s, const AnRemoval *r, double *nll, double *kl, DmErr *err)
{
    size_t V = s->m->cfg.dec.vocab;
    if (!s->nitems)
        return dm_err(err, "selection: no item to score");
    if (!s->has_teacher && an_sel_teacher(s, err))
        return -1;
    double snll = 0, skl = 0;
    AnJob *jobs = malloc(s->nitems * sizeof *jobs);
    float **lg = calloc(s->nitems, sizeof *lg);
    int rc = -1;
    if (!jobs || !lg) {
        dm_err(err, "out of memory");
        goto done;
    }
    for (int i = 0; i < s->nitems;) {
        int n = s_chunk(s, i);
        for (int k = 0; kl && k < n; k++) {
            AnSelItem *it = &s->items[i + k];
            if (!(lg[k] = s_scored_alloc(s, it))) {
                dm_err(err, "out of memory");
                goto done;
            }
        }
        if (s_chunk_run(s, r, i, n, jobs, kl ? lg : NULL, err))
            goto done;
        for (int k = 0; k < n; k++) {
            AnSelItem *it = &s->items[i + k];
            int P = it->T - 1 - it->answer_start;
            snll += jobs[k].nll;
            if (!kl)
                continue;
            s_log_softmax(lg[k], P, (int)V, lg[k]);
            double acc = 0;
            for (size_t j = 0; j < (size_t)P * V; j++) {
                double lt = it->teacher_lp[j];
                acc += exp(lt) * (lt - (double)lg[k][j]);
            }
            skl += acc / P;
            free(lg[k]);
            lg[k] = NULL;
        }
        i += n;
    }
    if (nll)
        *nll = snll / s->nitems;
    if (kl)
        *kl = skl / s->nitems;
    rc = 0;
done:
    for (int k = 0; lg && k < s->nitems; k++)
        free(lg[k]);
    free(lg);
    free(jobs);
    return rc;
}

int an_sel_gate_grads(AnSel *s, double *head_imp, double *sub_imp, double *item_head, DmErr *err)
{
    const DonutModel *m = s->m;
    int L = m->cfg.dec.layers, H = m->cfg.dec.heads, nsub = 3 * L, D = m->cfg.dec.d_model;
    int hd = m->dec.head_dim;
    if (!s->nitems)
        return dm_err(err, "selection: no item to score");
    memset(head_imp, 0, (size_t)nsub * H * sizeof *head_imp);
    memset(sub_imp, 0, (size_t)nsub * sizeof *sub_imp);
    if (item_head)
        memset(item_head, 0, (size_t)s->nitems * nsub * H * sizeof *item_head);
    for (int k = 0; k < s->nitems; k++) {
        AnSelItem *it = &s->items[k];
        const DecPage *pg = &s->pages[it->page];
        AnTrace tr;
        float **hg = NULL, **og = NULL;
        s->passes++;
        if (an_run(pg, it->ids, it->T, it->answer_start, NULL, 0, 1, &tr, err))
            return -1;
        s->backward++;
        if (an_grads(pg, it->ids, it->answer_start, &tr, &hg, &og, err)) {
            an_trace_free(&tr);
            return -1;
        }
        int T = tr.T;
        for (int i = 0; i < nsub; i++) {
            const DecLayer *Ly = &m->dec.layers[i / 3];
            const DecAttn *a = i % 3 == DM_SUB_S ? &Ly->self : i % 3 == DM_SUB_C ? &Ly->cross : NULL;
            if (og[i] && tr.out[i]) {
                double g = 0;
                for (size_t j = 0; j < (size_t)T * D; j++)
                    g += (double)tr.out[i][j] * og[i][j];
                sub_imp[i] += fabs(g) / s->nitems;
            }
            if (!a || !a->present || !hg[i] || !tr.heads[i])
                continue;
            int inner = a->nheads * hd;
            for (int slot = 0; slot < a->nheads; slot++) {
                double g = 0;
                for (int t = 0; t < T; t++)
                    for (int j = 0; j < hd; j++) {
                        size_t o = (size_t)t * inner + (size_t)slot * hd + j;
                        g += (double)tr.heads[i][o] * hg[i][o];
                    }
                int h = a->head_ids[slot];
                head_imp[i * H + h] += fabs(g) / s->nitems;
                if (item_head)
                    item_head[(size_t)k * nsub * H + i * H + h] = g;
            }
        }
        for (int i = 0; i < nsub; i++) {
            free(hg[i]);
            free(og[i]);
        }
        free(hg);
        free(og);
        an_trace_free(&tr);
    }
    return 0;
}
