/* plan_evidence.c - pruning plans from an analysis store's aggregates
 * (plan_evidence.h; the rules are in docs/pruning.md, "Plans from
 * evidence"): the evidence read, sizes, plan surgery, the files written,
 * method enumerate and the entry; mint is plan_mint.c, the measured
 * methods plan_measured.c. */
#include "coordinator/plan_evidence_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/dm_fs.h"
#include "worker/model/flops.h"


const char pe_kind[3] = {'S', 'C', 'M'};

/* ------------------------------------------------------------- reading */

static const json_t *s_field(const json_t *agg, const char *name)
{
    return json_object_get(json_object_get(agg, "fields"), name);
}

static double s_num(const json_t *v) { return json_is_number(v) ? json_number_value(v) : NAN; }

/* A field's means (or stderrs) into v[0..n-1]; 1 when present with n elements. */
static int s_vec(const json_t *agg, const char *name, const char *what, double *v, int n)
{
    const json_t *a = json_object_get(s_field(agg, name), what);
    if (!json_is_array(a) || (int)json_array_size(a) != n)
        return 0;
    for (int i = 0; i < n; i++)
        v[i] = s_num(json_array_get(a, i));
    return 1;
}

static const char *const s_needs[][3] = {
    /* field, analysis (job key), method: "m" mint, "me" both */
    {"nll_skip", "skip", "me"},
    {"nll_reproject", "reproject", "m"},
    {"sa_entropy", "heads", "m"},
    {"ca_variance", "heads", "m"},
    {"nll_head_ablation", "ablation", "m"},
};

const char *pe_method_name(PeMethod m)
{
    static const char *const names[] = {"mint", "enumerate", "finercut", "michel"};
    return m >= PE_MINT && m <= PE_MICHEL ? names[m] : "?";
}

void pe_missing_analyses(const json_t *agg, PeMethod m, char *out, size_t n)
{
    out[0] = 0;
    if (m == PE_FINERCUT || m == PE_MICHEL)
        return; /* measured on the selection corpus */
    for (size_t i = 0; i < sizeof s_needs / sizeof *s_needs; i++) {
        if (m == PE_ENUMERATE && !strchr(s_needs[i][2], 'e'))
            continue;
        if (s_field(agg, s_needs[i][0]) || strstr(out, s_needs[i][1]))
            continue;
        size_t len = strlen(out);
        snprintf(out + len, n - len, "%s%s", len ? "," : "", s_needs[i][1]);
    }
}

static int s_read(Pe *e, DmErr *err)
{
    const json_t *agg = e->in->aggregates;
    const MBartConfig *d = &e->in->cfg->dec;
    e->L = d->layers;
    e->H = d->heads;
    int L = e->L, H = e->H;
    json_t *jl = json_object_get(agg, "layers"), *jh = json_object_get(agg, "heads");
    if (json_integer_value(jl) != L || json_integer_value(jh) != H)
        return dm_err(err, "%s: the aggregates are of %lld layers of %lld heads, the model has %d "
                           "of %d", e->in->store, (long long)json_integer_value(jl),
                      (long long)json_integer_value(jh), L, H);
    e->records = (long)json_integer_value(json_object_get(agg, "records"));
    e->clean = s_num(json_object_get(s_field(agg, "nll_clean"), "mean"));
    if (e->records < 1 || !isfinite(e->clean))
        return dm_err(err, "%s: the aggregates hold no record (run the analyze job to its end)",
                      e->in->store);
    for (int i = 0; i < 3 * L; i++)
        e->skip[i] = e->skip_se[i] = NAN;
    e->has_skip = s_vec(agg, "nll_skip", "mean", e->skip, 3 * L);
    s_vec(agg, "nll_skip", "stderr", e->skip_se, 3 * L);
    e->has_repro = s_vec(agg, "nll_reproject", "mean", e->repro, 3 * L + 1);
    e->has_heads = s_vec(agg, "sa_entropy", "mean", e->ent, L * H) &&
                   s_vec(agg, "ca_variance", "mean", e->var, L * H);
    e->has_abl = s_vec(agg, "nll_head_ablation", "mean", e->abl, 2 * L * H);
    e->has_atp = s_vec(agg, "atp_head", "mean", e->atp, 2 * L * H);
    const json_t *by = json_object_get(agg, "by_question_type");
    size_t nt = json_object_size(by);
    if (nt) {
        e->types = calloc(nt, sizeof *e->types);
        if (!e->types)
            return dm_err(err, "out of memory");
        const char *name;
        json_t *g;
        json_object_foreach((json_t *)by, name, g) {
            PeType *t = &e->types[e->ntypes];
            t->abl = malloc((size_t)2 * L * H * sizeof *t->abl);
            if (!t->abl)
                return dm_err(err, "out of memory");
            t->name = name;
            t->records = (long)json_integer_value(json_object_get(g, "records"));
            t->clean = s_num(json_object_get(s_field(g, "nll_clean"), "mean"));
            e->ntypes++;
            if (!s_vec(g, "nll_head_ablation", "mean", t->abl, 2 * L * H))
                for (int i = 0; i < 2 * L * H; i++)
                    t->abl[i] = NAN;
        }
    }
    return 0;
}

/* --------------------------------------------------------------- sizes */

long long pe_size(const Pe *e, const DmPlan *p)
{
    if (e->o->kind == PE_BUDGET_FLOPS) {
        static FlopsTable t; /* large; the planner is single-threaded */
        flops_count(e->in->cfg, p, e->o->prompt, e->o->new_tokens, DM_FLOPS_CACHED, &t);
        return t.layers;
    }
    ParamTable t;
    params_count(e->in->cfg, p, &t);
    return t.layers;
}

long long pe_params(const Pe *e, const DmPlan *p)
{
    ParamTable t;
    params_count(e->in->cfg, p, &t);
    return t.layers;
}

static long long s_flops(const Pe *e, const DmPlan *p)
{
    static FlopsTable t;
    flops_count(e->in->cfg, p, e->o->prompt, e->o->new_tokens, DM_FLOPS_CACHED, &t);
    return t.layers;
}

const char *pe_unit(const Pe *e)
{
    return e->o->kind == PE_BUDGET_FLOPS ? "multiply-adds" : "parameters";
}

/* ------------------------------------------------------ plan surgery */

int pe_nsubs(const DmPlan *p)
{
    int n = 0;
    for (int l = 0; l < p->layers; l++)
        for (int k = 0; k < 3; k++)
            n += p->keep[l][k];
    return n;
}

int pe_has_head(const DmPlan *p, int l, int k, int h)
{
    for (int i = 0; i < p->nheads[l][k]; i++)
        if (p->head_ids[l][k][i] == h)
            return 1;
    return 0;
}

void pe_drop_head(DmPlan *p, int l, int k, int h)
{
    int n = p->nheads[l][k], *ids = p->head_ids[l][k], j = 0;
    for (int i = 0; i < n; i++)
        if (ids[i] != h)
            ids[j++] = ids[i];
    p->nheads[l][k] = j;
}

void pe_add_head(DmPlan *p, int l, int k, int h)
{
    int n = p->nheads[l][k], *ids = p->head_ids[l][k], i = n;
    while (i > 0 && ids[i - 1] > h) {
        ids[i] = ids[i - 1];
        i--;
    }
    ids[i] = h;
    p->nheads[l][k] = n + 1;
}

void pe_drop_sub(DmPlan *p, int l, int k)
{
    p->keep[l][k] = 0;
    if (k < 2)
        p->nheads[l][k] = 0;
}

/* The smallest plan possible: one sub-layer of the base, an attention
 * sub-layer with one head (with whole sub-layers only when `whole`). */
static long long s_smallest(const Pe *e, int whole, char *name, size_t n)
{
    const DmPlan *b = e->in->base;
    long long best = -1;
    for (int l = 0; l < e->L; l++)
        for (int k = 0; k < 3; k++) {
            if (!b->keep[l][k])
                continue;
            DmPlan p = *b;
            for (int m = 0; m < e->L; m++)
                for (int j = 0; j < 3; j++)
                    if (m != l || j != k)
                        pe_drop_sub(&p, m, j);
            if (k < 2 && !whole)
                p.nheads[l][k] = 1;
            long long s = pe_size(e, &p);
            if (best < 0 || s < best) {
                best = s;
                if (k < 2 && !whole)
                    snprintf(name, n, "%c%d with one head", pe_kind[k], l);
                else
                    snprintf(name, n, "%c%d alone", pe_kind[k], l);
            }
        }
    return best;
}

/* The smallest plan removals can reach from p: one of its sub-layers
 * alone, an attention sub-layer with one head. */
long long pe_floor(const Pe *e, const DmPlan *p)
{
    long long best = -1;
    for (int l = 0; l < e->L; l++)
        for (int k = 0; k < 3; k++) {
            if (!p->keep[l][k])
                continue;
            DmPlan c = *p;
            for (int m = 0; m < e->L; m++)
                for (int j = 0; j < 3; j++)
                    if (m != l || j != k)
                        pe_drop_sub(&c, m, j);
            if (k < 2)
                c.nheads[l][k] = 1;
            long long s = pe_size(e, &c);
            best = best < 0 || s < best ? s : best;
        }
    return best;
}

int pe_refuse_budget(const Pe *e, int whole, DmErr *err)
{
    char name[48];
    long long s = s_smallest(e, whole, name, sizeof name);
    if (s <= e->limit)
        return 0;
    return dm_err(err, "budget of %lld %s (%.4f of the teacher's decoder layers) is below the "
                       "smallest plan possible%s: %s, %lld %s (%.4f)",
                  e->limit, pe_unit(e), (double)e->limit / e->full,
                  whole ? " with whole sub-layers" : "", name, s, pe_unit(e), (double)s / e->full);
}

/* ------------------------------------------------------------- writing */

int pe_write_plan(const Pe *e, const DmPlan *p, const char *desc, const char *path,
                        DmErr *err)
{
    json_t *j = plan_to_json(p);
    if (!j)
        return dm_err(err, "out of memory");
    json_object_set_new(j, "description", json_string(desc));
    char *text = json_dumps(j, JSON_INDENT(1) | JSON_PRESERVE_ORDER);
    json_decref(j);
    FILE *f = text ? fopen(path, "w") : NULL;
    int rc = 0;
    if (!text)
        rc = dm_err(err, "out of memory");
    else if (!f || fputs(text, f) < 0 || fputc('\n', f) < 0)
        rc = dm_err_errno(err, "%s: cannot write", path);
    if (f && fclose(f) && !rc)
        rc = dm_err_errno(err, "%s: cannot write", path);
    free(text);
    return rc;
}

void pe_header(const Pe *e, FILE *f, const char *method)
{
    const char *kinds[] = {"a share of the teacher's decoder layers' parameters",
                           "a parameter count of the decoder layers",
                           "a share of the decoder layers' multiply-adds (docmint's cached "
                           "convention)"};
    fprintf(f, "# Pruning plan (%s)\n\n", method);
    fprintf(f, "- analysis store: `%s`, %ld (question, answer) sequences, clean NLL %.6f\n",
            e->in->store, e->records, e->clean);
    fprintf(f, "- model: `%s`, fingerprint %s, %d layers of %d heads\n", e->in->model,
            e->in->fingerprint, e->L, e->H);
    fprintf(f, "- budget: %g, %s: at most %lld of %lld %s",
            e->o->budget, kinds[e->o->kind], e->limit, e->full, pe_unit(e));
    if (e->o->kind == PE_BUDGET_FLOPS)
        fprintf(f, " (%d prompt tokens, %d new tokens)", e->o->prompt, e->o->new_tokens);
    fprintf(f, "\n");
}

void pe_result(const Pe *e, FILE *f, const DmPlan *p)
{
    DmPlan full;
    plan_full(&e->in->cfg->dec, &full);
    long long pk = pe_params(e, p), pf = pe_params(e, &full);
    long long fk = s_flops(e, p), ff = s_flops(e, &full);
    fprintf(f, "- kept: %lld of %lld parameters of the decoder layers (%.4f), %lld of %lld "
               "multiply-adds of the decoder layers (%.4f; %d prompt + %d new tokens, cached)\n",
            pk, pf, (double)pk / pf, fk, ff, (double)fk / ff, e->o->prompt, e->o->new_tokens);
}

void pe_head_name(int l, int k, int h, char *out, size_t n)
{
    snprintf(out, n, "%c%d.H%d", pe_kind[k], l, h);
}

/* ----------------------------------------------------------- enumerate */

typedef struct Cand {
    DmPlan p;
    double score;
    long long size;
    char how[96];
    unsigned long removed;
} Cand;

/* The store's skip sets: sub-layer masks and their mean NLL. */
typedef struct SkipSet {
    char name[64];
    unsigned long mask;
    double nll;
} SkipSet;

static int s_skip_sets(const Pe *e, SkipSet *sets, int max)
{
    const json_t *ss = json_object_get(e->in->analyze, "skip_sets");
    const char *name;
    json_t *list;
    int n = 0;
    json_object_foreach((json_t *)ss, name, list) {
        if (n == max)
            break;
        char field[128];
        snprintf(field, sizeof field, "named.skip_set.%s", name);
        double v = s_num(json_object_get(s_field(e->in->aggregates, field), "mean"));
        if (!isfinite(v))
            continue;
        unsigned long mask = 0;
        size_t i;
        json_t *it;
        int ok = 1;
        json_array_foreach(list, i, it) {
            const char *s = json_string_value(it);
            const char *kp = s ? strchr("SCM", s[0]) : NULL;
            char *end = NULL;
            long l = kp && s[0] ? strtol(s + 1, &end, 10) : -1;
            if (!kp || l < 0 || l >= e->L || *end)
                ok = 0;
            else
                mask |= 1UL << (l * 3 + (kp - "SCM"));
        }
        if (!ok)
            continue;
        snprintf(sets[n].name, sizeof sets[n].name, "%s", name);
        sets[n].mask = mask;
        sets[n].nll = v;
        n++;
    }
    return n;
}

static void s_subset_names(const Pe *e, unsigned long mask, int want, char *out, size_t n)
{
    out[0] = 0;
    for (int i = 0; i < 3 * e->L; i++)
        if (!!(mask >> i & 1) == want) {
            size_t len = strlen(out);
            snprintf(out + len, n - len, "%s%c%d", len ? " " : "", pe_kind[i % 3], i / 3);
        }
    if (!out[0])
        snprintf(out, n, "-");
}

static int s_enumerate(Pe *e, const char *dir, DmErr *err)
{
    const DmPlan *b = e->in->base;
    int n = 3 * e->L;
    if (n > 20)
        return dm_err(err, "--method enumerate: %d sub-layers give 2^%d subsets; it takes at most "
                           "20 sub-layers", n, n);
    if (pe_refuse_budget(e, 1, err))
        return -1;
    SkipSet sets[64];
    int nsets = s_skip_sets(e, sets, 64);
    int K = e->o->top;
    Cand *top = calloc((size_t)K, sizeof *top);
    if (!top)
        return dm_err(err, "out of memory");
    int ntop = 0;
    long within = 0, total = 0;
    unsigned long base_mask = 0; /* sub-layers the base has */
    for (int i = 0; i < n; i++)
        if (b->keep[i / 3][i % 3])
            base_mask |= 1UL << i;
    for (unsigned long rm = 0; rm < 1UL << n; rm++) {
        if (rm & ~base_mask || rm == base_mask)
            continue; /* only what the base has, and at least one sub-layer left */
        total++;
        DmPlan p = *b;
        for (int i = 0; i < n; i++)
            if (rm >> i & 1)
                pe_drop_sub(&p, i / 3, i % 3);
        long long s = pe_size(e, &p);
        if (s > e->limit)
            continue;
        within++;
        Cand c = {.p = p, .size = s, .removed = rm};
        int found = 0;
        for (int k = 0; k < nsets && !found; k++)
            if (sets[k].mask == rm) {
                c.score = sets[k].nll;
                snprintf(c.how, sizeof c.how, "skip_set %s (measured)", sets[k].name);
                found = 1;
            }
        if (!found) {
            c.score = e->clean;
            for (int i = 0; i < n; i++)
                if (rm >> i & 1)
                    c.score += e->skip[i] - e->clean;
            snprintf(c.how, sizeof c.how, rm ? "additive" : "clean (nothing removed)");
        }
        if (!isfinite(c.score))
            continue;
        /* insert, best (lowest) first; ties: more kept first */
        int at = ntop;
        while (at > 0 && (c.score < top[at - 1].score ||
                          (c.score == top[at - 1].score && c.size > top[at - 1].size)))
            at--;
        if (at >= K)
            continue;
        int last = ntop < K ? ntop : K - 1;
        memmove(&top[at + 1], &top[at], (size_t)(last - at) * sizeof *top);
        top[at] = c;
        if (ntop < K)
            ntop++;
    }
    int rc = 0;
    char path[4200], desc[512], keep[256], rmn[256];
    for (int r = 0; r < ntop && !rc; r++) {
        s_subset_names(e, top[r].removed, 0, keep, sizeof keep);
        snprintf(desc, sizeof desc,
                 "docmint plan --method enumerate from %s, budget %g: rank %d, predicted NLL "
                 "%.6f (%s)", e->in->store, e->o->budget, r + 1, top[r].score, top[r].how);
        if (r == 0)
            snprintf(path, sizeof path, "%s/plan.json", dir);
        else
            snprintf(path, sizeof path, "%s/plan-%d.json", dir, r + 1);
        rc = pe_write_plan(e, &top[r].p, desc, path, err);
    }
    snprintf(path, sizeof path, "%s/plan.md", dir);
    FILE *f = rc ? NULL : fopen(path, "w");
    if (!rc && !f)
        rc = dm_err_errno(err, "%s: cannot write", path);
    if (f) {
        pe_header(e, f, "enumerate");
        if (ntop)
            pe_result(e, f, &top[0].p);
        fprintf(f, "\nEvery subset of the analysed model's sub-layers (whole sub-layers, heads "
                   "as they are) was considered: %ld subsets keeping at least one sub-layer, "
                   "%ld within the budget.  Each is scored without training by its predicted "
                   "teacher-forced NLL: the store's measured skip set with exactly these "
                   "sub-layers removed when there is one (%d skip sets in the store), else the "
                   "clean NLL plus the sum of the single-skip NLL increases of the removed "
                   "sub-layers.  The sum is an additive approximation: it ignores how removed "
                   "sub-layers interact.\n\n",
                total, within, nsets);
        fprintf(f, "| rank | file | keeps | removes | predicted NLL | from | parameters | "
                   "share |\n|---|---|---|---|---|---|---|---|\n");
        for (int r = 0; r < ntop; r++) {
            s_subset_names(e, top[r].removed, 0, keep, sizeof keep);
            s_subset_names(e, top[r].removed, 1, rmn, sizeof rmn);
            long long pk = pe_params(e, &top[r].p);
            char file[32];
            if (r == 0)
                snprintf(file, sizeof file, "plan.json");
            else
                snprintf(file, sizeof file, "plan-%d.json", r + 1);
            DmPlan full;
            plan_full(&e->in->cfg->dec, &full);
            fprintf(f, "| %d | %s | %s | %s | %.6f | %s | %lld | %.4f |\n", r + 1, file, keep,
                    rmn, top[r].score, top[r].how, pk, (double)pk / pe_params(e, &full));
        }
        fprintf(f, "\n## Single-skip NLL increases\n\n| sub-layer | NLL increase | stderr |\n"
                   "|---|---|---|\n");
        for (int i = 0; i < n; i++)
            fprintf(f, "| %c%d | %+.6f | %.6f |\n", pe_kind[i % 3], i / 3, e->skip[i] - e->clean,
                    e->skip_se[i]);
        for (int k = 0; k < nsets; k++) {
            s_subset_names(e, sets[k].mask, 1, rmn, sizeof rmn);
            fprintf(f, "%s- skip set %s (removes %s): NLL %.6f\n", k ? "" : "\n## Skip sets\n\n",
                    sets[k].name, rmn, sets[k].nll);
        }
        if (fclose(f) && !rc)
            rc = dm_err_errno(err, "%s: cannot write", path);
    }
    free(top);
    return rc;
}

/* --------------------------------------------------------------- entry */

int pe_make_plan(const PeInput *in, const PeOptions *o, const char *out_dir, DmErr *err)
{
    char miss[128];
    pe_missing_analyses(in->aggregates, o->method, miss, sizeof miss);
    if (miss[0])
        return dm_err(err, "%s: the store lacks the analyses --method %s needs: run the analyze "
                           "stage with \"analyses\" including [%s]",
                      in->store, pe_method_name(o->method), miss);
    if ((o->method == PE_FINERCUT || o->method == PE_MICHEL) && !in->sel)
        return dm_err(err, "--method %s needs --corpus SEL.json: a DocVQA-format selection corpus "
                           "with gold answers", pe_method_name(o->method));
    Pe *e = calloc(1, sizeof *e);
    if (!e)
        return dm_err(err, "out of memory");
    e->in = in;
    e->o = o;
    int rc = s_read(e, err);
    if (!rc) {
        DmPlan full;
        plan_full(&in->cfg->dec, &full);
        e->full = pe_size(e, &full);
        e->limit = o->kind == PE_BUDGET_PARAMS ? (long long)o->budget
                                               : (long long)floor(o->budget * (double)e->full);
        rc = dm_mkdirs(out_dir, err);
    }
    if (!rc)
        switch (o->method) {
        case PE_MINT: rc = pe_mint(e, out_dir, err); break;
        case PE_ENUMERATE: rc = s_enumerate(e, out_dir, err); break;
        case PE_FINERCUT: rc = pe_finercut(e, out_dir, err); break;
        case PE_MICHEL: rc = pe_michel(e, out_dir, err); break;
        }
    for (int t = 0; t < e->ntypes; t++)
        free(e->types[t].abl);
    free(e->types);
    free(e);
    return rc;
}
