/* plan.c - read, check and write pruning plans (see plan.h), and count
 * parameters per module from a config and a structure.  The checkpoint
 * loader reads a student's pruning.json through plan_load, so a plan file
 * and a student folder can never disagree on what a name means. */
#include "worker/model/plan.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/jsonschema.h"

#define S_SCHEMA "plan.schema.json"

static const char s_kinds[] = "SCM";

void plan_full(const MBartConfig *d, DmPlan *p)
{
    memset(p, 0, sizeof *p);
    p->layers = d->layers;
    p->heads = d->heads;
    for (int l = 0; l < d->layers; l++)
        for (int k = 0; k < 3; k++) {
            p->keep[l][k] = 1;
            if (k < 2) {
                p->nheads[l][k] = d->heads;
                for (int h = 0; h < d->heads; h++)
                    p->head_ids[l][k][h] = h;
            }
        }
}

int plan_is_full(const DmPlan *p)
{
    for (int l = 0; l < p->layers; l++)
        for (int k = 0; k < 3; k++)
            if (!p->keep[l][k] || (k < 2 && p->nheads[l][k] != p->heads))
                return 0;
    return 1;
}

void plan_of_model(const DonutModel *m, DmPlan *p)
{
    memset(p, 0, sizeof *p);
    p->layers = m->cfg.dec.layers;
    p->heads = m->cfg.dec.heads;
    for (int l = 0; l < p->layers; l++) {
        const DecLayer *L = &m->dec.layers[l];
        const DecAttn *a[2] = {&L->self, &L->cross};
        for (int k = 0; k < 2; k++) {
            p->keep[l][k] = a[k]->present;
            p->nheads[l][k] = a[k]->nheads;
            memcpy(p->head_ids[l][k], a[k]->head_ids, sizeof a[k]->head_ids);
        }
        p->keep[l][DM_SUB_M] = L->ffn.present;
    }
}

void plan_apply(const DmPlan *p, DonutModel *m)
{
    for (int l = 0; l < p->layers; l++) {
        DecLayer *L = &m->dec.layers[l];
        DecAttn *a[2] = {&L->self, &L->cross};
        for (int k = 0; k < 2; k++) {
            a[k]->present = p->keep[l][k];
            a[k]->nheads = p->nheads[l][k];
            memcpy(a[k]->head_ids, p->head_ids[l][k], sizeof a[k]->head_ids);
        }
        L->ffn.present = p->keep[l][DM_SUB_M];
    }
}

/* "S1" -> kind, layer.  Strict: one letter, decimal digits, nothing else. */
static int s_sublayer(const char *s, const DmPlan *p, int *kind, int *layer)
{
    const char *k = s[0] ? strchr(s_kinds, s[0]) : NULL;
    if (!k || !isdigit((unsigned char)s[1]))
        return -1;
    char *end;
    long l = strtol(s + 1, &end, 10);
    if (*end || l >= p->layers)
        return -1;
    *kind = (int)(k - s_kinds);
    *layer = (int)l;
    return 0;
}

static int s_bad_name(const char *what, const char *where, const char *name, const DmPlan *p,
                      DmErr *err)
{
    return dm_err(err,
                  "%s: %s: \"%s\" is not a sub-layer of this model (S<l>, C<l> or M<l> with "
                  "l in 0..%d)",
                  what, where, name, p->layers - 1);
}

/* Set one sub-layer's kept/removed state, refusing to bring back one the
 * base no longer has. */
static int s_keep(const char *what, const char *where, const char *name, int kind, int l,
                  int keep, const DmPlan *base, DmPlan *out, DmErr *err)
{
    if (keep && !base->keep[l][kind])
        return dm_err(err,
                      "%s: %s: %s was removed by an earlier pruning of this model; a plan can "
                      "only remove",
                      what, where, name);
    out->keep[l][kind] = keep;
    return 0;
}

/* Head h of sub-layer (kind, l) joins the kept list named by the plan. */
static int s_add_head(const char *what, const char *where, int kind, int l, long h,
                      const DmPlan *base, DmPlan *out, int listed[][2], DmErr *err)
{
    char sub[16];
    snprintf(sub, sizeof sub, "%c%d", s_kinds[kind], l);
    if (h < 0 || h >= base->heads)
        return dm_err(err, "%s: %s: head %ld of %s is out of range (the model has %d heads: 0..%d)",
                      what, where, h, sub, base->heads, base->heads - 1);
    if (!out->keep[l][kind])
        return dm_err(err, "%s: %s: heads listed for %s, which the plan removes", what, where, sub);
    int in_base = 0;
    for (int i = 0; i < base->nheads[l][kind]; i++)
        in_base |= base->head_ids[l][kind][i] == h;
    if (!in_base)
        return dm_err(err,
                      "%s: %s: %s.H%ld was removed by an earlier pruning of this model; a plan "
                      "can only remove",
                      what, where, sub, h);
    if (!listed[l][kind]) {
        listed[l][kind] = 1;
        out->nheads[l][kind] = 0;
    }
    int n = out->nheads[l][kind], *ids = out->head_ids[l][kind], i = n;
    for (int j = 0; j < n; j++)
        if (ids[j] == h)
            return dm_err(err, "%s: %s: %s.H%ld is listed twice", what, where, sub, h);
    while (i > 0 && ids[i - 1] > h) { /* keep the list ascending */
        ids[i] = ids[i - 1];
        i--;
    }
    ids[i] = (int)h;
    out->nheads[l][kind] = n + 1;
    return 0;
}

static int s_read_keep(json_t *keep, const char *what, const DmPlan *base, DmPlan *out,
                       DmErr *err)
{
    char where[64];
    int kind, l;
    if (json_is_array(keep)) {
        int seen[DM_MAX_LAYERS][3] = {{0}};
        for (int i = 0; i < out->layers; i++)
            out->keep[i][0] = out->keep[i][1] = out->keep[i][2] = 0;
        size_t i;
        json_t *v;
        json_array_foreach(keep, i, v)
        {
            const char *name = json_string_value(v);
            snprintf(where, sizeof where, "keep[%zu]", i);
            if (s_sublayer(name, base, &kind, &l))
                return s_bad_name(what, where, name, base, err);
            if (seen[l][kind]++)
                return dm_err(err, "%s: %s: %s is listed twice", what, where, name);
            if (s_keep(what, where, name, kind, l, 1, base, out, err))
                return -1;
        }
        return 0;
    }
    const char *name;
    json_t *v;
    json_object_foreach(keep, name, v)
    {
        snprintf(where, sizeof where, "keep.%s", name);
        if (s_sublayer(name, base, &kind, &l))
            return s_bad_name(what, where, name, base, err);
        if (s_keep(what, where, name, kind, l, json_is_true(v), base, out, err))
            return -1;
    }
    return 0;
}

static int s_read_heads(json_t *heads, const char *what, const DmPlan *base, DmPlan *out,
                        DmErr *err)
{
    int listed[DM_MAX_LAYERS][2] = {{0}};
    char where[96];
    int kind, l;
    if (json_is_array(heads)) {
        size_t i;
        json_t *v;
        json_array_foreach(heads, i, v)
        {
            const char *name = json_string_value(v);
            snprintf(where, sizeof where, "heads[%zu]", i);
            const char *dot = strchr(name, '.');
            char sub[32];
            snprintf(sub, sizeof sub, "%.*s", dot ? (int)(dot - name) : 0, name);
            char *end = NULL;
            long h = dot && dot[1] == 'H' && isdigit((unsigned char)dot[2])
                         ? strtol(dot + 2, &end, 10)
                         : -1;
            if (h < 0 || *end || s_sublayer(sub, base, &kind, &l) || kind == DM_SUB_M)
                return dm_err(err,
                              "%s: %s: \"%s\" is not a head name (S<l>.H<h> or C<l>.H<h> with l "
                              "in 0..%d)",
                              what, where, name, base->layers - 1);
            if (s_add_head(what, where, kind, l, h, base, out, listed, err))
                return -1;
        }
    } else if (heads) {
        const char *name;
        json_t *list;
        json_object_foreach(heads, name, list)
        {
            snprintf(where, sizeof where, "heads.%s", name);
            if (s_sublayer(name, base, &kind, &l) || kind == DM_SUB_M)
                return dm_err(err,
                              "%s: %s: \"%s\" is not an attention sub-layer of this model (S<l> "
                              "or C<l> with l in 0..%d)",
                              what, where, name, base->layers - 1);
            if (json_array_size(list) == 0)
                return dm_err(err,
                              "%s: %s: an empty list would leave %s no heads; remove the "
                              "sub-layer through \"keep\" instead",
                              what, where, name);
            size_t i;
            json_t *h;
            json_array_foreach(list, i, h)
            {
                snprintf(where, sizeof where, "heads.%s[%zu]", name, i);
                if (s_add_head(what, where, kind, l, (long)json_integer_value(h), base, out,
                               listed, err))
                    return -1;
            }
        }
    }
    return 0;
}

int plan_from_json(json_t *doc, const char *what, const DmPlan *base, DmPlan *out, DmErr *err)
{
    const json_t *schema = jsonschema_get(S_SCHEMA, err);
    if (!schema)
        return -1;
    if (jsonschema_validate(schema, doc, 0, err))
        return dm_err_prefix(err, "%s", what);
    *out = *base;
    if (s_read_keep(json_object_get(doc, "keep"), what, base, out, err) ||
        s_read_heads(json_object_get(doc, "heads"), what, base, out, err))
        return -1;
    int any = 0;
    for (int l = 0; l < out->layers; l++)
        for (int k = 0; k < 3; k++) {
            any |= out->keep[l][k];
            if (k < 2 && !out->keep[l][k])
                out->nheads[l][k] = 0;
        }
    if (!any)
        return dm_err(err, "%s: the plan removes every decoder sub-layer", what);
    const char *fp = json_string_value(json_object_get(doc, "teacher_fingerprint"));
    if (fp)
        snprintf(out->teacher_fingerprint, sizeof out->teacher_fingerprint, "%s", fp);
    return 0;
}

int plan_load(const char *path, const DmPlan *base, DmPlan *out, DmErr *err)
{
    json_error_t jerr;
    json_t *doc = json_load_file(path, 0, &jerr);
    if (!doc) {
        if (jerr.line < 1)
            return dm_err(err, "%s: cannot read (%s)", path, jerr.text);
        return dm_err(err, "%s: not valid JSON (line %d: %s)", path, jerr.line, jerr.text);
    }
    int rc = plan_from_json(doc, path, base, out, err);
    json_decref(doc);
    return rc;
}

json_t *plan_to_json(const DmPlan *p)
{
    json_t *doc = json_object(), *keep = json_object(), *heads = json_object();
    char name[16];
    for (int l = 0; l < p->layers; l++)
        for (int k = 0; k < 3; k++) {
            snprintf(name, sizeof name, "%c%d", s_kinds[k], l);
            json_object_set_new(keep, name, json_boolean(p->keep[l][k]));
            if (k < 2 && p->keep[l][k] && p->nheads[l][k] < p->heads) {
                json_t *list = json_array();
                for (int i = 0; i < p->nheads[l][k]; i++)
                    json_array_append_new(list, json_integer(p->head_ids[l][k][i]));
                json_object_set_new(heads, name, list);
            }
        }
    json_object_set_new(doc, "keep", keep);
    json_object_set_new(doc, "heads", heads);
    if (p->teacher_fingerprint[0])
        json_object_set_new(doc, "teacher_fingerprint", json_string(p->teacher_fingerprint));
    return doc;
}

/* ------------------------------------------------------- parameter counts */

static long long s_swin_params(const SwinConfig *c)
{
    long long E = c->embed_dim, n = 0;
    n += E * c->channels * c->patch * c->patch + E + 2 * E; /* patch embedding, its norm */
    long long nrel = (2LL * c->window - 1) * (2LL * c->window - 1);
    for (int s = 0; s < c->nstages; s++) {
        long long dim = E << s, hid = (long long)(dim * c->mlp_ratio);
        long long qkv_b = c->qkv_bias ? dim : 0;
        long long block = 2 * dim + 3 * (dim * dim + qkv_b) + nrel * c->heads[s] +
                          (dim * dim + dim) + 2 * dim + (hid * dim + hid) + (dim * hid + dim);
        n += block * c->depths[s];
        if (s + 1 < c->nstages)
            n += 2 * 4 * dim + 2 * dim * 4 * dim; /* downsample norm, reduction */
    }
    return n;
}

/* An attention sub-layer keeping nh heads: q, k, v cut to nh*hd rows,
 * out_proj to nh*hd columns (its bias stays whole), and its LayerNorm. */
static long long s_attn_params(long long d, long long hd, int nh)
{
    long long inner = nh * hd;
    return 3 * (inner * d + inner) + (d * inner + d) + 2 * d;
}

void params_count(const DonutConfig *c, const DmPlan *p, ParamTable *t)
{
    memset(t, 0, sizeof *t);
    const MBartConfig *d = &c->dec;
    long long D = d->d_model, hd = D / d->heads;
    static const char *const fixed[DM_PMOD_FIXED] = {"encoder", "tokens", "positions",
                                                     "unembedding", "norms"};
    for (int i = 0; i < DM_PMOD_FIXED; i++) {
        snprintf(t->rows[i].name, sizeof t->rows[i].name, "%s", fixed[i]);
        t->rows[i].present = 1;
    }
    t->tied = d->tie_word_embeddings;
    t->rows[DM_PMOD_ENCODER].teacher = s_swin_params(&c->enc);
    t->rows[DM_PMOD_TOKENS].teacher = (long long)d->vocab * D;
    t->rows[DM_PMOD_POSITIONS].teacher = (long long)(d->max_pos + 2) * D;
    t->rows[DM_PMOD_UNEMBED].teacher = t->tied ? 0 : (long long)d->vocab * D;
    t->rows[DM_PMOD_NORMS].teacher = 4 * D; /* layernorm_embedding, layer_norm */
    for (int i = 0; i < DM_PMOD_FIXED; i++)
        t->rows[i].count = t->rows[i].teacher;
    t->nrows = DM_PMOD_FIXED;
    for (int l = 0; l < d->layers; l++)
        for (int k = 0; k < 3; k++) {
            ParamRow *r = &t->rows[t->nrows++];
            snprintf(r->name, sizeof r->name, "%c%d", s_kinds[k], l);
            r->present = p->keep[l][k];
            if (k < 2) {
                r->teacher = s_attn_params(D, hd, d->heads);
                r->nheads = r->present ? p->nheads[l][k] : 0;
                r->count = r->present ? s_attn_params(D, hd, r->nheads) : 0;
            } else {
                r->teacher = 2 * D * d->ffn + d->ffn + D + 2 * D;
                r->count = r->present ? r->teacher : 0;
            }
        }
    for (int i = 0; i < t->nrows; i++) {
        if (i == DM_PMOD_ENCODER)
            continue;
        t->decoder += t->rows[i].count;
        t->teacher_decoder += t->rows[i].teacher;
        if (i >= DM_PMOD_FIXED) {
            t->layers += t->rows[i].count;
            t->teacher_layers += t->rows[i].teacher;
        }
    }
    t->encoder = t->rows[DM_PMOD_ENCODER].count;
    t->total = t->encoder + t->decoder;
}
