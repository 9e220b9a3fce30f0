/* an_run.c - one teacher-forced pass with interventions, recording every
 * site (analyze.h).
 *
 * The pass is the decoder's own (dec_forward with a hook): at each site the
 * hook first applies the interventions aimed there, then copies what the
 * pass will go on with, so a trace shows the run as it really went. */
#include "worker/analyze/analyze.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/cpu/kern.h"

typedef struct RunCtx {
    const DonutModel *m;
    const AnOp *ops;
    int nops, want_probs, failed;
    AnTrace *tr;
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

/* The recorded value of an AN_IN / AN_OUT site of this run so far. */
static const float *s_recorded(const AnTrace *tr, const AnSite *s)
{
    if (s->point == AN_IN)
        return tr->resid + (size_t)s->sub * tr->T * tr->D;
    if (s->point == AN_OUT)
        return tr->out[s->sub];
    return NULL;
}

/* Apply the interventions at (sub, point) to data [T, width]. */
static int s_apply(RunCtx *rc, int sub, AnPoint point, float *data, int width)
{
    const DonutModel *m = rc->m;
    AnTrace *tr = rc->tr;
    int T = tr->T, hd = m->dec.head_dim;
    for (int o = 0; o < rc->nops; o++) {
        const AnOp *op = &rc->ops[o];
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
            src = s_recorded(tr, &op->from);
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

static int s_hook(void *ctx, DecHookEvent *ev)
{
    RunCtx *rc = ctx;
    AnTrace *tr = rc->tr;
    int sub = 3 * ev->layer + ev->kind, T = tr->T;
    size_t n = (size_t)ev->shape[0] * ev->shape[1] * (ev->ndim == 3 ? ev->shape[2] : 1);
    int width = (int)ev->shape[1];
    int rcode = 0;
    switch (ev->point) {
    case DEC_HOOK_INPUT:
        rcode = s_apply(rc, sub, AN_IN, ev->data, width);
        if (!rcode)
            memcpy(tr->resid + (size_t)sub * T * tr->D, ev->data, n * sizeof(float));
        break;
    case DEC_HOOK_OUTPUT:
        rcode = s_apply(rc, sub, AN_OUT, ev->data, width);
        if (!rcode)
            rcode = s_keep(rc, &tr->out[sub], ev->data, n);
        break;
    case DEC_HOOK_HEADS:
        rcode = s_apply(rc, sub, AN_HEAD, ev->data, width);
        if (!rcode)
            rcode = s_keep(rc, &tr->heads[sub], ev->data, n);
        break;
    case DEC_HOOK_QUERY:
        rcode = s_apply(rc, sub, AN_QUERY, ev->data, width);
        if (!rcode)
            rcode = s_keep(rc, &tr->query[sub], ev->data, n);
        break;
    case DEC_HOOK_ATTN:
        if (rc->want_probs) {
            tr->probs_S[sub] = (int)ev->shape[2];
            rcode = s_keep(rc, &tr->probs[sub], ev->data, n);
        }
        break;
    }
    if (rcode)
        rc->failed = 1;
    return rcode;
}

/* The embedding's output and the final residual, from the probe. */
static void s_probe(void *ctx, const char *name, int ndim, const int64_t *shape, const float *data)
{
    AnTrace *tr = ctx;
    size_t TD = (size_t)tr->T * tr->D;
    if (!strcmp(name, "decoder.hidden_states.0"))
        memcpy(tr->resid, data, TD * sizeof(float));
    else if (!strcmp(name, "decoder.last_layer_output"))
        memcpy(tr->resid + (size_t)tr->nsub * TD, data, TD * sizeof(float));
}

int an_run(const DecPage *page, const int32_t *ids, int T, int answer_start, const AnOp *ops,
           int nops, int want_probs, AnTrace *tr, DmErr *err)
{
    const DonutModel *m = page->m;
    const MBartConfig *c = &m->cfg.dec;
    int a = answer_start, P = T - 1 - a, V = c->vocab, D = c->d_model;
    if (T < 2 || a < 0 || P < 1)
        return dm_err(err, "analyze: answer start %d leaves no scored position in %d tokens", a, T);
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
    tr->logits = malloc((size_t)P * V * sizeof(float));
    float *all = malloc((size_t)T * V * sizeof(float));
    DecSeq seq = {0};
    int rc = -1;
    if (!tr->resid || !tr->out || !tr->heads || !tr->query || !tr->probs || !tr->probs_S ||
        !tr->logits || !all) {
        dm_err(err, "analyze: out of memory for a run of %d tokens", T);
        goto done;
    }
    if (dec_seq_init(&seq, m, T, err))
        goto done;
    RunCtx ctx = {m, ops, nops, want_probs, 0, tr, err};
    DecHooks hooks = {s_hook, &ctx};
    DmProbe probe = {s_probe, tr};
    DecSeq *sp = &seq;
    if (dec_forward(page, &sp, &ids, &T, 1, all, 1, &hooks, &probe, err))
        goto done;
    /* residuals after sub-layers that have no hook of their own (the last,
     * and any whose successor was removed): the same float additions the
     * decoder made */
    for (int r = 1; r < tr->nsub; r++) {
        if (s_present(m, r))
            continue;
        float *dst = tr->resid + (size_t)r * TD;
        memcpy(dst, dst - TD, TD * sizeof(float));
        if (tr->out[r - 1])
            kern_add(dst, tr->out[r - 1], TD);
    }
    memcpy(tr->logits, all + (size_t)a * V, (size_t)P * V * sizeof(float));
    tr->nll = an_nll(tr->logits, P, V, ids + a + 1);
    rc = 0;
done:
    free(all);
    dec_seq_free(&seq);
    if (rc)
        an_trace_free(tr);
    return rc;
}
