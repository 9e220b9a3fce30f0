/* plan_mint.c - method mint of `docmint plan`: sub-layers and heads
 * removed by the analysis store's evidence per unit of budget freed, heads
 * filled back, heads one question type needs taken back, and the check
 * on a selection corpus (docs/pruning.md, "Method mint", "mint's
 * check"). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/plan_evidence_int.h"

static int s_hidx(const Pe *e, int l, int k, int h) { return (l * 2 + k) * e->H + h; }

/* The head weights w = e * (1.5 - p) of docs/pruning.md. */
static void s_head_weights(Pe *e)
{
    const DmPlan *b = e->in->base;
    for (int k = 0; k < 2; k++) {
        /* the pattern share p: rank of the head among the base's heads of
         * this kind, 1 the most diffuse (highest entropy, lowest variance) */
        int n = 0;
        for (int l = 0; l < e->L; l++)
            for (int h = 0; h < e->H; h++)
                n += b->keep[l][k] && pe_has_head(b, l, k, h);
        for (int l = 0; l < e->L; l++)
            for (int h = 0; h < e->H; h++) {
                int i = s_hidx(e, l, k, h);
                double v = k == 0 ? e->ent[l * e->H + h] : -e->var[l * e->H + h];
                int below = 0, tie = 0;
                for (int m = 0; m < e->L; m++)
                    for (int g = 0; g < e->H; g++) {
                        if (!b->keep[m][k] || !pe_has_head(b, m, k, g) || (m == l && g == h))
                            continue;
                        double u = k == 0 ? e->ent[m * e->H + g] : -e->var[m * e->H + g];
                        below += u < v;
                        tie += u == v;
                    }
                e->head_p[i] = n > 1 ? (below + 0.5 * tie) / (n - 1) : 0.5;
                double a = e->abl[i] - e->clean;
                double eff = isfinite(a) && a > 0 ? a : 0;
                if (e->has_atp && isfinite(e->atp[i]))
                    eff += fabs(e->atp[i]);
                e->head_eff[i] = eff;
                e->head_w[i] = eff * (1.5 - e->head_p[i]);
            }
    }
}

/* Does head i hurt one question type much more than the others?  The
 * type's name into `type` when so. */
static int s_type_flag(const Pe *e, int i, double *top1, double *top2, const char **type)
{
    double a = -INFINITY, b = -INFINITY;
    const char *name = NULL;
    int n = 0;
    for (int t = 0; t < e->ntypes; t++) {
        double v = e->types[t].abl[i] - e->types[t].clean;
        if (!isfinite(v))
            continue;
        n++;
        if (v > a) {
            b = a;
            a = v;
            name = e->types[t].name;
        } else if (v > b) {
            b = v;
        }
    }
    *top1 = a;
    *top2 = b;
    *type = name;
    return n >= 2 && a >= e->o->type_min && a >= e->o->type_ratio * (b > 0 ? b : 0);
}


int pe_mint(Pe *e, const char *dir, DmErr *err)
{
    const DmPlan *b = e->in->base;
    int L = e->L, H = e->H;
    if (pe_refuse_budget(e, 0, err))
        return -1;
    /* replaceable sub-layers: those before the last input, in an unbroken
     * run from S0, whose token reprojection costs at most the tolerance */
    int kmax = 0;
    for (int j = 0; j < 3 * L; j++) {
        double d = e->repro[j] - e->clean;
        if (!isfinite(d) || d > e->o->reproject_tol)
            break;
        kmax = j;
    }
    for (int i = 0; i < 3 * L; i++) {
        e->replaceable[i] = i < kmax;
        double d = e->skip[i] - e->clean;
        e->sub_eff[i] = e->replaceable[i] ? 0 : isfinite(d) && d > 0 ? d : 0;
    }
    s_head_weights(e);

    char *log = NULL;
    size_t loglen = 0;
    FILE *lf = open_memstream(&log, &loglen);
    if (!lf)
        return dm_err(err, "out of memory");
    DmPlan cur = *b;
    int removed_heads[PE_HEADS], nrem = 0, step = 0;
    long long size = pe_size(e, &cur);
    fprintf(lf, "Start: the analysed model, %lld %s.\n\n", size, pe_unit(e));
    /* 1. remove, cheapest evidence per unit freed first */
    while (size > e->limit) {
        int bl = -1, bk = -1, bh = -1;
        double best = INFINITY, beff = 0;
        long long bfreed = 0;
        for (int l = 0; l < L; l++)
            for (int k = 0; k < 3; k++) {
                if (!cur.keep[l][k])
                    continue;
                if (pe_nsubs(&cur) > 1) {
                    DmPlan c = cur;
                    pe_drop_sub(&c, l, k);
                    if (pe_floor(e, &c) > e->limit)
                        continue; /* no plan within the budget would remain reachable */
                    long long fr = size - pe_size(e, &c);
                    double r = fr > 0 ? e->sub_eff[l * 3 + k] / fr : INFINITY;
                    if (r < best || (r == best && fr > bfreed)) {
                        best = r, bl = l, bk = k, bh = -1, bfreed = fr;
                        beff = e->sub_eff[l * 3 + k];
                    }
                }
                for (int i = 0; k < 2 && cur.nheads[l][k] > 1 && i < cur.nheads[l][k]; i++) {
                    int h = cur.head_ids[l][k][i];
                    DmPlan c = cur;
                    pe_drop_head(&c, l, k, h);
                    long long fr = size - pe_size(e, &c);
                    double w = e->head_w[s_hidx(e, l, k, h)];
                    double r = fr > 0 ? w / fr : INFINITY;
                    if (r < best || (r == best && fr > bfreed)) {
                        best = r, bl = l, bk = k, bh = h, bfreed = fr, beff = w;
                    }
                }
            }
        if (bl < 0) {
            fclose(lf);
            free(log);
            return dm_err(err, "--method mint: no unit left to remove at %lld %s (budget %lld)",
                          size, pe_unit(e), e->limit);
        }
        char name[32];
        if (bh < 0) {
            pe_drop_sub(&cur, bl, bk);
            snprintf(name, sizeof name, "%c%d", pe_kind[bk], bl);
            size -= bfreed;
            fprintf(lf, "%d. remove sub-layer %s: skip NLL increase %+.6f%s, counted %.6f; frees "
                        "%lld %s (%.3g nats per million); %lld left\n",
                    ++step, name, e->skip[bl * 3 + bk] - e->clean,
                    e->replaceable[bl * 3 + bk] ? " (replaceable: counted 0)" : "", beff, bfreed,
                    pe_unit(e), 1e6 * best, size);
        } else {
            pe_drop_head(&cur, bl, bk, bh);
            removed_heads[nrem++] = s_hidx(e, bl, bk, bh);
            pe_head_name(bl, bk, bh, name, sizeof name);
            size -= bfreed;
            fprintf(lf, "%d. drop head %s: weight %.6f (effect %.6f, pattern share %.3f); frees "
                        "%lld %s (%.3g nats per million); %lld left\n",
                    ++step, name, beff, e->head_eff[s_hidx(e, bl, bk, bh)],
                    e->head_p[s_hidx(e, bl, bk, bh)], bfreed, pe_unit(e), 1e6 * best, size);
        }
    }
    /* 2. fill: heads back, last dropped first, while they fit */
    for (int r = nrem - 1; r >= 0; r--) {
        int i = removed_heads[r], h = i % H, k = (i / H) % 2, l = i / H / 2;
        if (!cur.keep[l][k] || pe_has_head(&cur, l, k, h))
            continue;
        DmPlan c = cur;
        pe_add_head(&c, l, k, h);
        long long s = pe_size(e, &c);
        if (s <= e->limit) {
            char name[32];
            pe_head_name(l, k, h, name, sizeof name);
            cur = c;
            size = s;
            fprintf(lf, "%d. fill: head %s back (weight %.6f), it fits: %lld %s\n", ++step, name,
                    e->head_w[i], size, pe_unit(e));
        }
    }
    /* 3. take back a head one question type needs */
    int flagged[PE_HEADS] = {0};
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 2; k++)
            for (int h = 0; h < H; h++) {
                int i = s_hidx(e, l, k, h);
                double t1, t2;
                const char *ty;
                if (!b->keep[l][k] || !pe_has_head(b, l, k, h) || !s_type_flag(e, i, &t1, &t2, &ty))
                    continue;
                flagged[i] = 1;
                snprintf(e->head_note[i], sizeof e->head_note[i], "%s %+.4f, next %+.4f", ty, t1,
                         t2);
            }
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 2; k++)
            for (int h = 0; h < H; h++) {
                int i = s_hidx(e, l, k, h);
                if (!flagged[i] || !cur.keep[l][k] || pe_has_head(&cur, l, k, h))
                    continue;
                char name[32], other[32];
                pe_head_name(l, k, h, name, sizeof name);
                DmPlan c = cur;
                pe_add_head(&c, l, k, h);
                long long s = pe_size(e, &c);
                if (s <= e->limit) {
                    cur = c;
                    size = s;
                    fprintf(lf, "%d. take back head %s: one question type needs it (%s); it "
                                "fits: %lld %s\n", ++step, name, e->head_note[i], size,
                            pe_unit(e));
                    continue;
                }
                /* swap with the kept head of least weight that makes room */
                int gi = -1;
                long long gs = 0;
                for (int m = 0; m < L; m++)
                    for (int j = 0; j < 2; j++)
                        for (int x = 0; x < c.nheads[m][j]; x++) {
                            int g = c.head_ids[m][j][x], q = s_hidx(e, m, j, g);
                            if (q == i || flagged[q] || c.nheads[m][j] < 2)
                                continue;
                            DmPlan d = c;
                            pe_drop_head(&d, m, j, g);
                            long long ds = pe_size(e, &d);
                            if (ds <= e->limit && (gi < 0 || e->head_w[q] < e->head_w[gi]))
                                gi = q, gs = ds;
                        }
                if (gi < 0) {
                    fprintf(lf, "%d. head %s would be taken back for one question type (%s), but "
                                "no kept head makes room for it\n", ++step, name,
                            e->head_note[i]);
                    continue;
                }
                int gh = gi % H, gk = (gi / H) % 2, gl = gi / H / 2;
                pe_drop_head(&c, gl, gk, gh);
                pe_head_name(gl, gk, gh, other, sizeof other);
                cur = c;
                size = gs;
                removed_heads[nrem++] = gi;
                fprintf(lf, "%d. take back head %s: one question type needs it (%s); head %s "
                            "(weight %.6f) dropped to make room: %lld %s\n",
                        ++step, name, e->head_note[i], other, e->head_w[gi], size, pe_unit(e));
            }
    fclose(lf);

    /* the predicted NLL: the store's clean NLL plus the single-removal
     * increases of what the plan removes (sub-layers' skip, dropped heads'
     * ablation), as if they did not interact; the check measures them
     * together on the selection corpus */
    double pred = e->clean, meas = NAN, mkl = NAN;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 3; k++) {
            if (!b->keep[l][k])
                continue;
            if (!cur.keep[l][k]) {
                double d = e->skip[l * 3 + k] - e->clean;
                pred += isfinite(d) ? d : 0;
                continue;
            }
            for (int h = 0; k < 2 && h < H; h++)
                if (pe_has_head(b, l, k, h) && !pe_has_head(&cur, l, k, h)) {
                    double d = e->abl[s_hidx(e, l, k, h)] - e->clean;
                    pred += isfinite(d) ? d : 0;
                }
        }
    if (e->in->sel && pe_measure(e, &cur, &meas, &mkl, err)) {
        free(log);
        return -1;
    }

    char path[4200];
    int rc = 0;
    char desc[1024];
    int dl = snprintf(desc, sizeof desc, "docmint plan --method mint from %s, budget %g: %lld %s "
                      "of %lld; predicted NLL %.6f (store, additive)", e->in->store,
                      e->o->budget, size, pe_unit(e), e->full, pred);
    if (e->in->sel)
        snprintf(desc + dl, sizeof desc - dl, "; measured NLL %.6f on %s (clean %.6f, %d "
                 "sequences, KL %.6f)", meas, e->in->corpus, e->in->sel->clean_nll,
                 e->in->sel->nitems, mkl);
    snprintf(path, sizeof path, "%s/plan.json", dir);
    rc = pe_write_plan(e, &cur, desc, path, err);
    snprintf(path, sizeof path, "%s/plan.md", dir);
    FILE *f = rc ? NULL : fopen(path, "w");
    if (!rc && !f)
        rc = dm_err_errno(err, "%s: cannot write", path);
    if (f) {
        pe_header(e, f, "mint");
        pe_result(e, f, &cur);
        fprintf(f, "\nThe rule is docs/pruning.md, \"Plans from evidence\": units (sub-layers and "
                   "heads) are removed in order of their evidence per %s freed until the plan "
                   "fits, heads are put back while they fit, and a head one question type needs "
                   "is taken back.  Reprojection tolerance %g nats; type rule: at least %g nats "
                   "and %g times the next type.\n",
                pe_unit(e), e->o->reproject_tol, e->o->type_min, e->o->type_ratio);
        fprintf(f, "\n## Sub-layers\n\n| sub-layer | skip NLL increase | stderr | input "
                   "reprojection NLL increase | replaceable | counted | parameters | decision "
                   "|\n|---|---|---|---|---|---|---|---|\n");
        ParamTable pt, pb;
        params_count(e->in->cfg, &cur, &pt);
        params_count(e->in->cfg, b, &pb);
        for (int l = 0; l < L; l++)
            for (int k = 0; k < 3; k++) {
                int i = l * 3 + k;
                const ParamRow *r = &pt.rows[DM_PMOD_FIXED + i];
                fprintf(f, "| %c%d | %+.6f | %.6f | %+.6f | %s | %.6f | %lld of %lld | %s |\n",
                        pe_kind[k], l, e->skip[i] - e->clean, e->skip_se[i],
                        e->repro[i] - e->clean, e->replaceable[i] ? "yes" : "no", e->sub_eff[i],
                        r->count, r->teacher,
                        !b->keep[l][k]      ? "absent from the analysed model"
                        : !cur.keep[l][k]   ? "removed"
                        : k < 2 && cur.nheads[l][k] < pb.rows[DM_PMOD_FIXED + i].nheads
                            ? "kept, some heads dropped"
                            : "kept");
            }
        fprintf(f, "\nThe final stream's reprojection: NLL increase %+.6f.\n",
                e->repro[3 * L] - e->clean);
        fprintf(f, "\n## Heads\n\nSelf-attention heads by entropy (high: diffuse), cross-attention "
                   "heads by variance (low: spread evenly); p is the head's rank share among its "
                   "kind (1 the most diffuse), the effect is the ablation NLL increase (at least "
                   "0)%s, and the weight w = effect * (1.5 - p).\n\n"
                   "| head | entropy / variance | p | ablation NLL increase | attribution | weight "
                   "w | by question type | decision |\n|---|---|---|---|---|---|---|---|\n",
                e->has_atp ? " plus |attribution|" : "");
        for (int l = 0; l < L; l++)
            for (int k = 0; k < 2; k++)
                for (int h = 0; h < H; h++) {
                    int i = s_hidx(e, l, k, h);
                    if (!b->keep[l][k] || !pe_has_head(b, l, k, h))
                        continue;
                    char name[32];
                    pe_head_name(l, k, h, name, sizeof name);
                    const char *dec = !cur.keep[l][k]            ? "removed with its sub-layer"
                                      : !pe_has_head(&cur, l, k, h) ? "dropped"
                                      : flagged[i]                 ? "kept (needed by a type)"
                                                                   : "kept";
                    fprintf(f, "| %s | %.6g | %.3f | %+.6f | %s%.6f | %.6f | %s | %s |\n", name,
                            k == 0 ? e->ent[l * H + h] : e->var[l * H + h], e->head_p[i],
                            e->abl[i] - e->clean, e->has_atp ? "" : "(none) ",
                            e->has_atp ? e->atp[i] : 0.0, e->head_w[i],
                            flagged[i] ? e->head_note[i] : "-", dec);
                }
        fprintf(f, "\n## Steps\n\n%s", log ? log : "");
        fprintf(f, "\n## Check\n\nPredicted NLL %.6f: the store's clean NLL %.6f plus the skip "
                   "increase of every removed sub-layer and the ablation increase of every "
                   "dropped head, as if they did not interact.\n", pred, e->clean);
        if (e->in->sel)
            fprintf(f, "\nMeasured on the selection corpus `%s` (%d sequences on %d pages), the "
                       "removals applied together: NLL %.6f against the clean %.6f (%+.6f), mean "
                       "KL(teacher || plan) %.6f.\n", e->in->corpus, e->in->sel->nitems,
                    e->in->sel->npages, meas, e->in->sel->clean_nll, meas - e->in->sel->clean_nll,
                    mkl);
        else
            fprintf(f, "\nNot measured: give `--corpus SEL.json` to run the plan's removals "
                       "together on a selection corpus.\n");
        if (e->ntypes)
            fprintf(f, "\n%d question types in the store's breakdown.\n", e->ntypes);
        if (fclose(f) && !rc)
            rc = dm_err_errno(err, "%s: cannot write", path);
    }
    free(log);
    return rc;
}

