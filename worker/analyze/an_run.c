/* an_run.c - teacher-forced passes with interventions (analyze.h): one
 * traced run recording every site (an_run), and runs of which only the
 * NLL is wanted, many to a block forward (an_runs).
 *
 * The pass is the decoder's own with a hook: at each site the hook first
 * applies the interventions aimed there (each run's to its own rows), then
 * copies what the pass will go on with, so a trace shows the run as it
 * really went. */
#include "worker/analyze/analyze.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kern.h"

/* A pass over B runs stacked as rows of one block, run b's rows[b] rows
 * from row off[b], its interventions ops[b][0 .. nops[b]-1].  A traced
 * pass (tr set) is a single run and keeps every site; a block keeps only
 * the sites that a later intervention reads (rec_in, rec_out: [R, D] for
 * the block's R rows, or NULL). */
typedef struct RunCtx {
    const DonutModel *m;
    int B, R;
    const int *rows, *off;
    const AnOp *const *ops;
    const int *nops;
    int want_probs, failed;
    AnTrace *tr;
    float *rec_in[3 * DM_MAX_LAYERS], *rec_out[3 * DM_MAX_LAYERS];
    DmErr *err;
} RunCtx;

static const DecAttn *s_attn(const DonutModel *m, int sub)
{
    const DecLayer *L = &m->dec.layers[sub / 3];
    return sub % 3 == DM_SUB_S ? &L->self : sub % 3 == DM_SUB_C ? &L->cross : NULL;
}

static int s_present(const DonutModel *m, int sub)
{
    const DecLayer *L = &m->dec.layers[sub / 3];
    switch (sub % 3) {
    case DM_SUB_S: return L->self.present;
    case DM_SUB_C: return L->cross.present;
    default: return L->ffn.present;
    }
}

/* Column of original head h in a sub-layer's heads array, or -1. */
static int s_head_slot(const DecAttn *a, int h)
{
    for (int k = 0; k < a->nheads; k++)
        if (a->head_ids[k] == h)
            return k;
    return -1;
}

int an_site_parse(const DonutModel *m, const char *name, AnSite *out, DmErr *err)
{
    const MBartConfig *c = &m->cfg.dec;
    char kind;
    int layer, n = 0;
    memset(out, 0, sizeof *out);
    if (sscanf(name, "%c%d%n", &kind, &layer, &n) != 2 || !strchr("SCM", kind) || name[n] != '.')
        return dm_err(err, "site %s: expected S<l>, C<l> or M<l> then .in, .out, .query or .H<h>",
                      name);
    if (layer < 0 || layer >= c->layers)
        return dm_err(err, "site %s: layer %d outside the model's %d layers", name, layer,
                      c->layers);
    out->sub = 3 * layer + (kind == 'S' ? DM_SUB_S : kind == 'C' ? DM_SUB_C : DM_SUB_M);
    if (!s_present(m, out->sub))
        return dm_err(err, "site %s: the model has no %c%d (removed by pruning)", name, kind, layer);
    const char *p = name + n + 1;
    int h, k = 0;
    if (!strcmp(p, "in")) {
        out->point = AN_IN;
    } else if (!strcmp(p, "out")) {
        out->point = AN_OUT;
    } else if (!strcmp(p, "query") && kind != 'M') {
        out->point = AN_QUERY;
    } else if (sscanf(p, "H%d%n", &h, &k) == 1 && !p[k] && kind != 'M') {
        if (h < 0 || h >= c->heads || s_head_slot(s_attn(m, out->sub), h) < 0)
            return dm_err(err, "site %s: %c%d has no head %d", name, kind, layer, h);
        out->point = AN_HEAD;
        out->head = h;
    } else {
        return dm_err(err, "site %s: expected .in, .out%s after %c%d", name,
                      kind == 'M' ? "" : ", .query or .H<h>", kind, layer);
    }
    return 0;
}

int an_replace_parse(const DonutModel *m, const char *spec, AnReplace *out, DmErr *err)
{
    char dst[64], rest[64];
    const char *eq = strstr(spec, ":=");
    memset(out, 0, sizeof *out);
    if (!eq || eq - spec >= (int)sizeof dst || strlen(eq + 2) >= sizeof rest ||
        strlen(spec) >= sizeof out->name)
        return dm_err(err, "replacement %s: expected SITE:=SITE, SITE:=-SITE or SITE:=C*SITE", spec);
    memcpy(dst, spec, eq - spec);
    dst[eq - spec] = 0;
    strcpy(rest, eq + 2);
    const char *src = rest;
    out->coef = 1.0f;
    char *star = strchr(rest, '*');
    if (star) {
        char *end;
        *star = 0;
        out->coef = strtof(rest, &end);
        if (*end || end == rest)
            return dm_err(err, "replacement %s: %s is not a number", spec, rest);
        src = star + 1;
    } else if (rest[0] == '-') {
        out->coef = -1.0f;
        src = rest + 1;
    }
    if (an_site_parse(m, dst, &out->dst, err) || an_site_parse(m, src, &out->src, err)) {
        dm_err_prefix(err, "replacement %s", spec);
        return -1;
    }
    int ok = (out->dst.point == AN_IN || out->dst.point == AN_OUT) &&
             (out->src.point == AN_IN || out->src.point == AN_OUT) &&
             (out->src.sub < out->dst.sub ||
              (out->src.sub == out->dst.sub && out->src.point == AN_IN && out->dst.point == AN_OUT));
    if (!ok)
        return dm_err(err, "replacement %s: needs a sub-layer's .in or .out set from an earlier "
                           "site's .in or .out", spec);
    strcpy(out->name, spec);
    return 0;
}

int an_skip_set_parse(const DonutModel *m, const char *spec, AnSkipSet *out, DmErr *err)
{
    const char *eq = strchr(spec, '=');
    memset(out, 0, sizeof *out);
    if (!eq || eq == spec || eq - spec >= (int)sizeof out->name || !eq[1])
        return dm_err(err, "skip set %s: expected NAME=S0,C1,...", spec);
    memcpy(out->name, spec, eq - spec);
    for (const char *p = out->name; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '_' || *p == '-'))
            return dm_err(err, "skip set %s: a name of letters, digits, _ and - only", spec);
    const char *p = eq + 1;
    while (*p) {
        const char *e = strchr(p, ',');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        char site[40];
        AnSite s;
        if (n + 5 >= sizeof site || out->n == 3 * DM_MAX_LAYERS)
            return dm_err(err, "skip set %s: expected NAME=S0,C1,...", spec);
        memcpy(site, p, n);
        strcpy(site + n, ".out");
        if (an_site_parse(m, site, &s, err)) {
            dm_err_prefix(err, "skip set %s", out->name);
            return -1;
        }
        out->subs[out->n++] = s.sub;
        p = e ? e + 1 : p + n;
    }
    return 0;
}

void an_site_name(const AnSite *s, char *buf, int n)
{
    const char *k = "SCM";
    int l = s->sub / 3;
    switch (s->point) {
    case AN_IN: snprintf(buf, n, "%c%d.in", k[s->sub % 3], l); break;
    case AN_OUT: snprintf(buf, n, "%c%d.out", k[s->sub % 3], l); break;
    case AN_QUERY: snprintf(buf, n, "%c%d.query", k[s->sub % 3], l); break;
    case AN_HEAD: snprintf(buf, n, "%c%d.H%d", k[s->sub % 3], l, s->head); break;
    }
}

void an_trace_free(AnTrace *tr)
{
    for (int i = 0; i < tr->nsub; i++) {
        if (tr->out)
            free(tr->out[i]);
        if (tr->heads)
            free(tr->heads[i]);
        if (tr->query)
            free(tr->query[i]);
        if (tr->probs)
            free(tr->probs[i]);
    }
    free(tr->out);
    free(tr->heads);
    free(tr->query);
    free(tr->probs);
    free(tr->probs_S);
    free(tr->resid);
    free(tr->logits);
    memset(tr, 0, sizeof *tr);
}

/* The recorded value of an AN_IN / AN_OUT site of run b so far [T, D]. */
static const float *s_recorded(const RunCtx *rc, int b, const AnSite *s)
{
    const AnTrace *tr = rc->tr;
    size_t D = rc->m->cfg.dec.d_model;
    const float *blk = s->point == AN_IN ? rc->rec_in[s->sub] : rc->rec_out[s->sub];
    if (tr && s->point == AN_IN)
        return tr->resid + (size_t)s->sub * tr->T * D;
    if (tr && s->point == AN_OUT)
        return tr->out[s->sub];
    return !tr && blk && (s->point == AN_IN || s->point == AN_OUT) ? blk + rc->off[b] * D : NULL;
}

/* Apply run b's interventions at (sub, point) to its rows data [T, width]. */
static int s_apply(RunCtx *rc, int b, int sub, AnPoint point, float *data, int width)
{
    const DonutModel *m = rc->m;
    int T = rc->rows[b], hd = m->dec.head_dim;
    for (int o = 0; o < rc->nops[b]; o++) {
        const AnOp *op = &rc->ops[b][o];
        if (op->site.sub != sub || op->site.point != point)
            continue;
        int c0 = 0, nc = width;
        if (point == AN_HEAD) {
            int k = s_head_slot(s_attn(m, sub), op->site.head);
            if (k < 0)
                return dm_err(rc->err, "analyze: sub-layer %d has no head %d", sub, op->site.head);
            c0 = k * hd;
            nc = hd;
        }
        int r0 = op->row0 < 0 ? 0 : op->row0, r1 = op->row1 > T ? T : op->row1;
        const float *src = NULL;
        float *rep = NULL;
        if (op->op == AN_SET) {
            src = op->src;
        } else if (op->op == AN_SCALE_SITE) {
            /* an earlier sub-layer's site, or this one's input */
            int earlier = op->from.sub < sub ||
                          (op->from.sub == sub && op->from.point == AN_IN && point != AN_IN);
            src = s_recorded(rc, b, &op->from);
            if (!src || !earlier)
                return dm_err(rc->err, "analyze: an intervention reads a site not yet computed");
        } else if (op->op == AN_REPROJECT) {
            if (point != AN_IN)
                return dm_err(rc->err, "analyze: reprojection applies to a sub-layer's input");
            if (!(rep = malloc((size_t)T * width * sizeof(float))))
                return dm_err(rc->err, "analyze: out of memory");
            if (an_reproject(m, data, T, rep, rc->err)) {
                free(rep);
                return -1;
            }
            src = rep;
        }
        for (int t = r0; t < r1; t++) {
            float *d = data + (size_t)t * width + c0;
            const float *s = src ? src + (size_t)t * width + c0 : NULL;
            for (int j = 0; j < nc; j++)
                d[j] = op->op == AN_ZERO ? 0.0f : op->op == AN_SCALE_SITE ? op->coef * s[j] : s[j];
        }
        free(rep);
    }
    return 0;
}

/* A copy of data into *slot (allocated on first use). */
static int s_keep(RunCtx *rc, float **slot, const float *data, size_t n)
{
    if (!*slot && !(*slot = malloc(n * sizeof(float))))
        return dm_err(rc->err, "analyze: out of memory for a trace");
    memcpy(*slot, data, n * sizeof(float));
    return 0;
}

/* Every run's interventions at a site, then what the pass keeps of it. */
static int s_site(RunCtx *rc, int sub, AnPoint point, DecHookEvent *ev)
{
    int width = (int)ev->shape[1];
    size_t n = (size_t)ev->shape[0] * width;
    if (ev->nseq != rc->B || ev->shape[0] != rc->R)
        return dm_err(rc->err, "analyze: a block of %d rows where %d rows were sent",
                      (int)ev->shape[0], rc->R);
    for (int b = 0; b < rc->B; b++)
        if (s_apply(rc, b, sub, point, ev->data + (size_t)rc->off[b] * width, width))
            return -1;
    AnTrace *tr = rc->tr;
    if (!tr) {
        float *rec = point == AN_IN ? rc->rec_in[sub] : point == AN_OUT ? rc->rec_out[sub] : NULL;
        if (rec)
            memcpy(rec, ev->data, n * sizeof(float));
        return 0;
    }
    switch (point) {
    case AN_IN:
        memcpy(tr->resid + (size_t)sub * n, ev->data, n * sizeof(float));
        return 0;
    case AN_OUT: return s_keep(rc, &tr->out[sub], ev->data, n);
    case AN_HEAD: return s_keep(rc, &tr->heads[sub], ev->data, n);
    default: return s_keep(rc, &tr->query[sub], ev->data, n);
    }
}

static int s_hook(void *ctx, DecHookEvent *ev)
{
    RunCtx *rc = ctx;
    AnTrace *tr = rc->tr;
    int sub = 3 * ev->layer + ev->kind;
    int rcode = 0;
    switch (ev->point) {
    case DEC_HOOK_INPUT: rcode = s_site(rc, sub, AN_IN, ev); break;
    case DEC_HOOK_OUTPUT: rcode = s_site(rc, sub, AN_OUT, ev); break;
    case DEC_HOOK_HEADS: rcode = s_site(rc, sub, AN_HEAD, ev); break;
    case DEC_HOOK_QUERY: rcode = s_site(rc, sub, AN_QUERY, ev); break;
    case DEC_HOOK_ATTN:
        if (tr && rc->want_probs) {
            size_t n = (size_t)ev->shape[0] * ev->shape[1] * ev->shape[2];
            tr->probs_S[sub] = (int)ev->shape[2];
            rcode = s_keep(rc, &tr->probs[sub], ev->data, n);
        }
        break;
    }
    if (rcode)
        rc->failed = 1;
    return rcode;
}

/* The residuals no hook saw: before the first present sub-layer (the
 * embedding's output, which it receives unchanged), after the last, and
 * after any whose successor was removed.  Each is the stream before plus
 * the sub-layer's recorded output: the same float additions the decoder
 * made. */
static int s_fill_resid(const DonutModel *m, AnTrace *tr, DmErr *err)
{
    size_t TD = (size_t)tr->T * tr->D;
    int first = 0;
    while (first < tr->nsub && !s_present(m, first))
        first++;
    if (first == tr->nsub)
        return dm_err(err, "analyze: the decoder has no sub-layer left");
    for (int r = 0; r < first; r++)
        memcpy(tr->resid + (size_t)r * TD, tr->resid + (size_t)first * TD, TD * sizeof(float));
    for (int r = first + 1; r <= tr->nsub; r++) {
        if (r < tr->nsub && s_present(m, r))
            continue;
        float *dst = tr->resid + (size_t)r * TD;
        memcpy(dst, dst - TD, TD * sizeof(float));
        if (tr->out[r - 1])
            kern_add(dst, tr->out[r - 1], TD);
    }
    return 0;
}

/* A sequence of T tokens scored from answer start a has P = T - 1 - a
 * scored positions: at least one. */
static int s_scored_check(int T, int a, DmErr *err)
{
    if (T < 2 || a < 0 || T - 1 - a < 1)
        return dm_err(err, "analyze: answer start %d leaves no scored position in %d tokens", a, T);
    return 0;
}

int an_run(const DecPage *page, const int32_t *ids, int T, int answer_start, const AnOp *ops,
           int nops, int want_probs, AnTrace *tr, DmErr *err)
{
    const DonutModel *m = page->m;
    const MBartConfig *c = &m->cfg.dec;
    int a = answer_start, P = T - 1 - a, V = c->vocab, D = c->d_model;
    if (s_scored_check(T, a, err))
        return -1;
    memset(tr, 0, sizeof *tr);
    tr->T = T;
    tr->D = D;
    tr->P = P;
    tr->nsub = 3 * c->layers;
    size_t TD = (size_t)T * D;
    tr->resid = calloc((size_t)(tr->nsub + 1) * TD, sizeof(float));
    tr->out = calloc(tr->nsub, sizeof(float *));
    tr->heads = calloc(tr->nsub, sizeof(float *));
    tr->query = calloc(tr->nsub, sizeof(float *));
    tr->probs = calloc(tr->nsub, sizeof(float *));
    tr->probs_S = calloc(tr->nsub, sizeof(int));
    /* the LM head from the first scored row to the last token's (which
     * has no target: one row more than scored) */
    tr->logits = malloc((size_t)(P + 1) * V * sizeof(float));
    DecSeq seq = {0};
    int rc = -1;
    if (!tr->resid || !tr->out || !tr->heads || !tr->query || !tr->probs || !tr->probs_S ||
        !tr->logits) {
        dm_err(err, "analyze: out of memory for a run of %d tokens", T);
        goto done;
    }
    if (dec_seq_init(&seq, m, T, err))
        goto done;
    int off0 = 0;
    RunCtx ctx = {.m = m, .B = 1, .R = T, .rows = &T, .off = &off0, .ops = &ops, .nops = &nops,
                  .want_probs = want_probs, .tr = tr, .err = err};
    DecHooks hooks = {s_hook, &ctx};
    DecSeq *sp = &seq;
    if (dec_forward_rows(page, &sp, &ids, &T, &a, 1, tr->logits, &hooks, err) ||
        s_fill_resid(m, tr, err))
        goto done;
    tr->nll = an_nll(tr->logits, P, V, ids + a + 1);
    rc = 0;
done:
    dec_seq_free(&seq);
    if (rc)
        an_trace_free(tr);
    return rc;
}

/* The sub-layer a job's run starts at: 0 without a base, else the first
 * one an intervention touches or reads (3 * layers when none does: the
 * final LayerNorm and the head alone). */
static int s_job_start(const AnJob *j)
{
    if (!j->base)
        return 0;
    int start = j->base->nsub;
    for (int o = 0; o < j->nops; o++) {
        const AnOp *op = &j->ops[o];
        start = op->site.sub < start ? op->site.sub : start;
        if (op->op == AN_SCALE_SITE && op->from.sub < start)
            start = op->from.sub;
    }
    return start < 0 ? 0 : start;
}

/* One block of B runs on a page, from sub-layer start on: of each job's
 * sequence, the first T - 1 tokens (all that its scored positions see). */
static int s_block(const DecPage *page, AnJob *const *jobs, int B, int start, DmErr *err)
{
    const DonutModel *m = page->m;
    const MBartConfig *c = &m->cfg.dec;
    int V = c->vocab, D = c->d_model, nsub = 3 * c->layers, rc = -1, R = 0, NP = 0;
    RunCtx ctx = {.m = m, .B = B, .err = err};
    const AnOp **ops = calloc(B, sizeof *ops);
    int *nops = calloc(B, sizeof *nops), *counts = calloc(B, sizeof *counts);
    int *from = calloc(B, sizeof *from), *off = calloc(B, sizeof *off);
    const int32_t **idp = calloc(B, sizeof *idp);
    DecSeq *seq = calloc(B, sizeof *seq);
    DecSeq **sp = calloc(B, sizeof *sp);
    float *logits = NULL, *x0 = NULL;
    if (!ops || !nops || !counts || !from || !off || !idp || !seq || !sp)
        goto oom;
    for (int b = 0; b < B; b++) {
        ops[b] = jobs[b]->ops;
        nops[b] = jobs[b]->nops;
        counts[b] = jobs[b]->T - 1;
        from[b] = jobs[b]->answer_start;
        idp[b] = jobs[b]->ids;
        sp[b] = &seq[b];
        off[b] = R;
        R += counts[b];
        NP += counts[b] - from[b];
    }
    ctx.R = R;
    ctx.rows = counts;
    ctx.off = off;
    ctx.ops = ops;
    ctx.nops = nops;
    if (!(logits = malloc((size_t)NP * V * sizeof *logits)))
        goto oom;
    /* each run's stream entering `start`, as its base recorded it */
    if (start > 0 && !(x0 = malloc((size_t)R * D * sizeof *x0)))
        goto oom;
    for (int b = 0; start > 0 && b < B; b++) {
        const AnTrace *bt = jobs[b]->base;
        if (bt->T != jobs[b]->T || bt->D != D) {
            dm_err(err, "analyze: a run's base is of another sequence");
            goto done;
        }
        memcpy(x0 + (size_t)off[b] * D, bt->resid + ((size_t)start * bt->T) * D,
               (size_t)counts[b] * D * sizeof *x0);
    }
    /* the sites a later intervention of a run reads */
    for (int b = 0; b < B; b++)
        for (int o = 0; o < nops[b]; o++) {
            const AnSite *f = &ops[b][o].from;
            if (ops[b][o].op != AN_SCALE_SITE || f->sub < 0 || f->sub >= nsub)
                continue;
            float **rec = f->point == AN_IN ? &ctx.rec_in[f->sub] : &ctx.rec_out[f->sub];
            if (!*rec && !(*rec = malloc((size_t)R * D * sizeof(float))))
                goto oom;
        }
    for (int b = 0; b < B; b++)
        if (dec_seq_init(&seq[b], m, counts[b], err))
            goto done;
    DecHooks hooks = {s_hook, &ctx};
    if (dec_forward_from(page, sp, idp, counts, from, B, start, x0, logits, &hooks, err))
        goto done;
    for (int b = 0, p0 = 0; b < B; p0 += counts[b] - from[b], b++) {
        const float *lg = logits + (size_t)p0 * V;
        int P = counts[b] - from[b];
        jobs[b]->nll = an_nll(lg, P, V, jobs[b]->ids + from[b] + 1);
        if (jobs[b]->logits)
            memcpy(jobs[b]->logits, lg, (size_t)P * V * sizeof(float));
    }
    rc = 0;
    goto done;
oom:
    dm_err(err, "analyze: out of memory for a block of %d runs", B);
done:
    for (int b = 0; seq && b < B; b++)
        dec_seq_free(&seq[b]);
    for (int i = 0; i < nsub; i++) {
        free(ctx.rec_in[i]);
        free(ctx.rec_out[i]);
    }
    free(ops);
    free(nops);
    free(counts);
    free(from);
    free(off);
    free(idp);
    free(seq);
    free(sp);
    free(logits);
    free(x0);
    return rc;
}

/* Jobs in the order they run: by page (in the order pages first come),
 * then by the sub-layer they start at. */
typedef struct Slot {
    int page, start, idx;
} Slot;

static int s_slot_cmp(const void *pa, const void *pb)
{
    const Slot *a = pa, *b = pb;
    if (a->page != b->page)
        return a->page < b->page ? -1 : 1;
    if (a->start != b->start)
        return a->start < b->start ? -1 : 1;
    return a->idx < b->idx ? -1 : a->idx > b->idx;
}

int an_runs(AnJob *jobs, int n, AnStats *stats, DmErr *err)
{
    for (int i = 0; i < n; i++)
        if (s_scored_check(jobs[i].T, jobs[i].answer_start, err))
            return -1;
    if (n < 1)
        return 0;
    AnJob **blk = malloc((size_t)n * sizeof *blk);
    Slot *slot = malloc((size_t)n * sizeof *slot);
    int rc = -1;
    if (!blk || !slot) {
        dm_err(err, "analyze: out of memory for %d runs", n);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        int pg = i;
        for (int j = 0; j < i; j++)
            if (jobs[j].page == jobs[i].page) {
                pg = slot[j].page;
                break;
            }
        slot[i] = (Slot){pg, s_job_start(&jobs[i]), i};
    }
    qsort(slot, n, sizeof *slot, s_slot_cmp);
    /* a block takes the next runs of its page while its rows stay within
     * AN_BLOCK_ROWS (at least one run), and starts at its first run's
     * sub-layer, the earliest */
    for (int i = 0; i < n;) {
        int B = 0, rows = 0, start = slot[i].start;
        while (i + B < n && slot[i + B].page == slot[i].page &&
               (B == 0 || rows + jobs[slot[i + B].idx].T - 1 <= AN_BLOCK_ROWS)) {
            blk[B] = &jobs[slot[i + B].idx];
            rows += blk[B++]->T - 1;
        }
        if (s_block(blk[0]->page, blk, B, start, err))
            goto out;
        if (stats) {
            stats->passes += B;
            stats->blocks++;
        }
        i += B;
    }
    rc = 0;
out:
    free(blk);
    free(slot);
    return rc;
}
