/* plan_measured.c - the structured baselines of `docmint plan`, which
 * measure on a selection corpus (worker/analyze/an_select.h) rather than
 * read the store: finercut (Zhang et al. 2024) and michel (Michel et al.
 * 2019); and the measurement of any plan, which mint's check uses.
 * docs/pruning.md, "Method finercut" and "Method michel", states the
 * rules. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/plan_evidence_int.h"

/* The removals that take the base structure to p. */
static void s_removal(const Pe *e, const DmPlan *p, AnRemoval *r)
{
    const DmPlan *b = e->in->base;
    memset(r, 0, sizeof *r);
    for (int l = 0; l < e->L; l++)
        for (int k = 0; k < 3; k++) {
            int i = 3 * l + k;
            if (!b->keep[l][k])
                continue;
            if (!p->keep[l][k]) {
                r->sub[i] = 1;
                continue;
            }
            for (int h = 0; k < 2 && h < e->H; h++)
                r->head[i][h] = pe_has_head(b, l, k, h) && !pe_has_head(p, l, k, h);
        }
}

int pe_measure(Pe *e, const DmPlan *p, double *nll, double *kl, DmErr *err)
{
    AnRemoval r;
    s_removal(e, p, &r);
    if (an_sel_eval(e->in->sel, &r, nll, kl, err))
        return dm_err_prefix(err, "%s", e->in->corpus);
    return 0;
}

static void s_sub_name(int l, int k, char *out, size_t n)
{
    snprintf(out, n, "%c%d", pe_kind[k], l);
}

static void s_corpus_line(const Pe *e, FILE *f);

/* A measured method's plan p (`size` units, its measured NLL and KL):
 * plan.json with its description, and plan.md's head (header, corpus,
 * result); f open on plan.md on success. */
static int s_open(Pe *e, const char *dir, const DmPlan *p, const char *method, long long size,
                  double nll, double kl, FILE **f, DmErr *err)
{
    const AnSel *sel = e->in->sel;
    char path[4200], desc[1024];
    snprintf(desc, sizeof desc, "docmint plan --method %s from %s, budget %g: %lld %s of %lld; "
             "measured NLL %.6f, KL %.6f on %s (clean %.6f, %d sequences)", method,
             e->in->store, e->o->budget, size, pe_unit(e), e->full, nll, kl, e->in->corpus,
             sel->clean_nll, sel->nitems);
    snprintf(path, sizeof path, "%s/plan.json", dir);
    if (pe_write_plan(e, p, desc, path, err))
        return -1;
    snprintf(path, sizeof path, "%s/plan.md", dir);
    if (!(*f = fopen(path, "w")))
        return dm_err_errno(err, "%s: cannot write", path);
    pe_header(e, *f, method);
    s_corpus_line(e, *f);
    pe_result(e, *f, p);
    return 0;
}

static int s_close(FILE *f, const char *dir, DmErr *err)
{
    if (fclose(f))
        return dm_err_errno(err, "%s/plan.md: cannot write", dir);
    return 0;
}

static void s_corpus_line(const Pe *e, FILE *f)
{
    const AnSel *s = e->in->sel;
    fprintf(f, "- selection corpus: `%s`, %d (question, answer) sequences on %d pages, the "
               "teacher's NLL %.6f\n", e->in->corpus, s->nitems, s->npages, s->clean_nll);
}

/* ------------------------------------------------------------ finercut */


int pe_finercut(Pe *e, const char *dir, DmErr *err)
{
    const DmPlan *b = e->in->base;
    AnSel *sel = e->in->sel;
    int L = e->L;
    if (pe_refuse_budget(e, 0, err))
        return -1;
    if (!sel->has_teacher && an_sel_teacher(sel, err))
        return dm_err_prefix(err, "%s", e->in->corpus);
    char *log = NULL;
    size_t loglen = 0;
    FILE *lf = open_memstream(&log, &loglen);
    if (!lf)
        return dm_err(err, "out of memory");
    DmPlan cur = *b;
    long long size = pe_size(e, &cur);
    double nll = sel->clean_nll, kl = 0;
    int step = 0, rc = 0;
    long p0 = sel->passes;
    while (size > e->limit) {
        /* every removable unit with the current removals applied */
        int bl = -1, bk = -1, bh = -1, rl = -1, rk = -1, rh = -1;
        double bkl = INFINITY, bnll = NAN, rkl = INFINITY;
        long long bfreed = 0;
        int units = 0, skipped = 0;
        for (int l = 0; l < L && !rc; l++)
            for (int k = 0; k < 3 && !rc; k++) {
                if (!cur.keep[l][k])
                    continue;
                int nh = k < 2 ? cur.nheads[l][k] : 0;
                /* h = -1: the whole sub-layer; then each head of a
                 * sub-layer that keeps another */
                for (int x = -1; x < (nh > 1 ? nh : 0); x++) {
                    DmPlan c = cur;
                    int h = x < 0 ? -1 : cur.head_ids[l][k][x];
                    if (h < 0) {
                        if (pe_nsubs(&cur) < 2)
                            continue;
                        pe_drop_sub(&c, l, k);
                    } else {
                        pe_drop_head(&c, l, k, h);
                    }
                    /* a removal after which no plan within the budget
                     * can be reached is not a candidate */
                    if (pe_floor(e, &c) > e->limit) {
                        skipped++;
                        continue;
                    }
                    double ckl, cnll;
                    if (pe_measure(e, &c, &cnll, &ckl, err)) {
                        rc = -1;
                        break;
                    }
                    units++;
                    long long fr = size - pe_size(e, &c);
                    if (ckl < bkl || (ckl == bkl && fr > bfreed)) {
                        rkl = bkl, rl = bl, rk = bk, rh = bh;
                        bkl = ckl, bnll = cnll, bl = l, bk = k, bh = h, bfreed = fr;
                    } else if (ckl < rkl) {
                        rkl = ckl, rl = l, rk = k, rh = h;
                    }
                }
            }
        if (rc || bl < 0)
            break;
        char name[32], other[48];
        if (bh < 0) {
            pe_drop_sub(&cur, bl, bk);
            s_sub_name(bl, bk, name, sizeof name);
        } else {
            pe_drop_head(&cur, bl, bk, bh);
            pe_head_name(bl, bk, bh, name, sizeof name);
        }
        if (rl < 0)
            snprintf(other, sizeof other, "none");
        else if (rh < 0)
            s_sub_name(rl, rk, other, sizeof other);
        else
            pe_head_name(rl, rk, rh, other, sizeof other);
        size -= bfreed;
        nll = bnll;
        kl = bkl;
        fprintf(lf, "%d. remove %s %s: KL %.6g (NLL %.6f); ", ++step, bh < 0 ? "sub-layer" : "head",
                name, bkl, bnll);
        if (rl < 0)
            fprintf(lf, "no runner-up");
        else
            fprintf(lf, "runner-up %s, KL %.6g", other, rkl);
        fprintf(lf, "; %d units scored", units);
        if (skipped)
            fprintf(lf, " (%d not: no plan within the budget would remain reachable)", skipped);
        fprintf(lf, "; frees %lld %s, %lld left\n", bfreed, pe_unit(e), size);
    }
    fclose(lf);
    long passes = sel->passes - p0;
    if (!rc && size > e->limit)
        rc = dm_err(err, "--method finercut: no unit left to remove at %lld %s (budget %lld)",
                    size, pe_unit(e), e->limit);
    FILE *f = NULL;
    if (!rc && !(rc = s_open(e, dir, &cur, "finercut", size, nll, kl, &f, err))) {
        fprintf(f, "\nFinerCut (Zhang et al. 2024) as docs/pruning.md states it: while the plan "
                   "is over the budget, every kept sub-layer (not the last one) and every head "
                   "of an attention sub-layer that keeps another is removed in turn, with the "
                   "removals so far applied, and the one whose removal changes the next-token "
                   "distributions least goes: the least mean KL(teacher || candidate) over the "
                   "corpus's sequences, each sequence's KL the mean over its scored positions.  "
                   "Ties go to the unit that frees more; a unit after whose removal no plan within the budget "
                   "can be reached (its smallest, one kept sub-layer with one head, is over) is "
                   "not a candidate.  %ld teacher-forced passes after the "
                   "teacher's %d; the encoder ran once per page.\n\n## Steps\n\n%s",
                passes, sel->nitems, log ? log : "");
        fprintf(f, "\n## Check\n\nThe plan's removals together on the selection corpus: NLL "
                   "%.6f against the clean %.6f (%+.6f), mean KL %.6f.\n",
                nll, sel->clean_nll, nll - sel->clean_nll, kl);
        rc = s_close(f, dir, err);
    }
    free(log);
    return rc;
}

/* -------------------------------------------------------------- michel */

typedef struct HeadRank {
    int l, k, h;
    double imp, norm;
} HeadRank;

static int s_rank_cmp(const void *a, const void *b)
{
    const HeadRank *x = a, *y = b;
    if (x->norm != y->norm)
        return x->norm < y->norm ? -1 : 1;
    if (x->imp != y->imp)
        return x->imp < y->imp ? -1 : 1;
    int i = (x->l * 2 + x->k) * DM_MAX_HEADS + x->h, j = (y->l * 2 + y->k) * DM_MAX_HEADS + y->h;
    return (i > j) - (i < j);
}

/* Does the plan keep a feed-forward sub-layer? */
static int s_has_ffn(const Pe *e, const DmPlan *p)
{
    for (int l = 0; l < e->L; l++)
        if (p->keep[l][DM_SUB_M])
            return 1;
    return 0;
}

/* The smallest plan removing heads can reach from p: its feed-forward
 * sub-layers alone, or (none kept) the cheapest single head. */
static long long s_head_floor(const Pe *e, const DmPlan *p)
{
    if (s_has_ffn(e, p)) {
        DmPlan c = *p;
        for (int l = 0; l < e->L; l++)
            for (int k = 0; k < 2; k++)
                pe_drop_sub(&c, l, k);
        return pe_size(e, &c);
    }
    long long best = -1;
    for (int l = 0; l < e->L; l++)
        for (int k = 0; k < 2; k++) {
            if (!p->keep[l][k])
                continue;
            DmPlan c = *p;
            for (int m = 0; m < e->L; m++)
                for (int j = 0; j < 2; j++)
                    if (m != l || j != k)
                        pe_drop_sub(&c, m, j);
            c.nheads[l][k] = 1;
            long long s = pe_size(e, &c);
            best = best < 0 || s < best ? s : best;
        }
    return best;
}

int pe_michel(Pe *e, const char *dir, DmErr *err)
{
    const DmPlan *b = e->in->base;
    AnSel *sel = e->in->sel;
    int L = e->L, H = e->H, nsub = 3 * L;
    if (pe_refuse_budget(e, 0, err))
        return -1;
    double *imp = calloc((size_t)nsub * H, sizeof *imp), sub_imp[PE_SUBS];
    HeadRank *rank = calloc((size_t)nsub * H, sizeof *rank);
    char *log = NULL;
    size_t loglen = 0;
    FILE *lf = NULL;
    int rc = -1, nr = 0, step = 0;
    long p0 = sel->passes, b0 = sel->backward;
    if (!imp || !rank || !(lf = open_memstream(&log, &loglen))) {
        dm_err(err, "out of memory");
        goto done;
    }
    if (an_sel_gate_grads(sel, imp, sub_imp, NULL, err)) {
        dm_err_prefix(err, "%s", e->in->corpus);
        goto done;
    }
    /* importance normalised by its attention sub-layer's l2 norm */
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 2; k++) {
            if (!b->keep[l][k])
                continue;
            int i = 3 * l + k;
            double ss = 0;
            for (int h = 0; h < H; h++)
                ss += pe_has_head(b, l, k, h) ? imp[i * H + h] * imp[i * H + h] : 0;
            for (int h = 0; h < H; h++)
                if (pe_has_head(b, l, k, h))
                    rank[nr++] = (HeadRank){l, k, h, imp[i * H + h],
                                            ss > 0 ? imp[i * H + h] / sqrt(ss) : 0};
        }
    qsort(rank, nr, sizeof *rank, s_rank_cmp);
    DmPlan cur = *b;
    long long size = pe_size(e, &cur);
    char name[32];
    /* feed-forward sub-layers, least gate importance first, only as many
     * as the budget forces: while heads alone cannot reach it */
    while (size > e->limit && s_head_floor(e, &cur) > e->limit && s_has_ffn(e, &cur) &&
           pe_nsubs(&cur) > 1) {
        int bl = -1;
        for (int l = 0; l < L; l++)
            if (cur.keep[l][DM_SUB_M] && (bl < 0 || sub_imp[3 * l + DM_SUB_M] <
                                                        sub_imp[3 * bl + DM_SUB_M]))
                bl = l;
        DmPlan c = cur;
        pe_drop_sub(&c, bl, DM_SUB_M);
        long long s = pe_size(e, &c);
        fprintf(lf, "%d. remove sub-layer M%d: the budget cannot be met by heads alone; gate "
                    "importance %.6g, the least of the kept feed-forward sub-layers; frees %lld "
                    "%s, %lld left\n", ++step, bl, sub_imp[3 * bl + DM_SUB_M], size - s,
                pe_unit(e), s);
        cur = c;
        size = s;
    }
    /* heads, least normalised importance first */
    for (int r = 0; r < nr && size > e->limit; r++) {
        const HeadRank *x = &rank[r];
        if (!cur.keep[x->l][x->k] || !pe_has_head(&cur, x->l, x->k, x->h))
            continue;
        DmPlan c = cur;
        pe_head_name(x->l, x->k, x->h, name, sizeof name);
        int whole = cur.nheads[x->l][x->k] == 1;
        if (whole && pe_nsubs(&cur) < 2) {
            fprintf(lf, "- head %s (normalised importance %.6f) stays: the last head of the last "
                        "sub-layer\n", name, x->norm);
            continue;
        }
        if (whole)
            pe_drop_sub(&c, x->l, x->k);
        else
            pe_drop_head(&c, x->l, x->k, x->h);
        long long s = pe_size(e, &c);
        fprintf(lf, "%d. drop head %s: normalised importance %.6f (importance %.6g)%s; frees "
                    "%lld %s, %lld left\n", ++step, name, x->norm, x->imp,
                whole ? ", its sub-layer's last head: the sub-layer goes" : "", size - s,
                pe_unit(e), s);
        cur = c;
        size = s;
    }
    fclose(lf);
    lf = NULL;
    if (size > e->limit) {
        dm_err(err, "--method michel: removing heads and feed-forward sub-layers leaves %lld %s, "
                    "over the budget of %lld", size, pe_unit(e), e->limit);
        goto done;
    }
    long gp = sel->passes - p0, gb = sel->backward - b0;
    double nll, kl;
    if (pe_measure(e, &cur, &nll, &kl, err))
        goto done;
    FILE *f = NULL;
    if (s_open(e, dir, &cur, "michel", size, nll, kl, &f, err))
        goto done;
    fprintf(f, "\nMichel et al. (2019) as docs/pruning.md states it: a gate multiplies each "
               "head's output; its importance is the mean over the corpus's sequences of "
               "|dL/dgate| at gate 1, L the sequence's teacher-forced NLL, normalised by the l2 "
               "norm of its sub-layer's heads.  Heads go least important first while the plan is "
               "over the budget; an attention sub-layer goes with its last head (never the last "
               "sub-layer).  Feed-forward sub-layers, which have no heads, go only when heads "
               "alone cannot meet the budget, least |dL/dgate| of their output first.  %ld "
               "forward and %ld backward passes for the importance, %d for the check; the "
               "encoder ran once per page.\n\n## Heads\n\n| head | importance | normalised | "
               "decision |\n|---|---|---|---|\n", gp, gb, sel->nitems);
    for (int r = 0; r < nr; r++) {
        const HeadRank *x = &rank[r];
        pe_head_name(x->l, x->k, x->h, name, sizeof name);
        fprintf(f, "| %s | %.6g | %.6f | %s |\n", name, x->imp, x->norm,
                !cur.keep[x->l][x->k]                   ? "removed with its sub-layer"
                : !pe_has_head(&cur, x->l, x->k, x->h) ? "dropped"
                                                        : "kept");
    }
    fprintf(f, "\n## Feed-forward sub-layers\n\n| sub-layer | gate importance | decision |\n"
               "|---|---|---|\n");
    for (int l = 0; l < L; l++)
        if (b->keep[l][DM_SUB_M])
            fprintf(f, "| M%d | %.6g | %s |\n", l, sub_imp[3 * l + DM_SUB_M],
                    cur.keep[l][DM_SUB_M] ? "kept" : "removed");
    fprintf(f, "\n## Steps\n\n%s", log ? log : "");
    fprintf(f, "\n## Check\n\nThe plan's removals together on the selection corpus: NLL %.6f "
               "against the clean %.6f (%+.6f), mean KL(teacher || plan) %.6f.\n",
            nll, sel->clean_nll, nll - sel->clean_nll, kl);
    rc = s_close(f, dir, err);
done:
    if (lf)
        fclose(lf);
    free(log);
    free(imp);
    free(rank);
    return rc;
}
