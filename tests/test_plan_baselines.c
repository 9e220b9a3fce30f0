/* test_plan_baselines.c - the measured plan methods on tiny-a's three
 * reference cases (worker/analyze/an_select.h, coordinator/plan_measured.c):
 * michel's head importance against central finite differences of the NLL
 * in the head's gate and against the attribution gradients; finercut's
 * first step against the KL of every single removal computed
 * independently (each removal pruned into a student checkpoint, run
 * through the decoder, against the Hugging Face teacher logits of
 * expected.safetensors), every single removal as the selection corpus
 * scores it against the same; a no-op removal's KL; the refusals. */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/dm_fs.h"
#include "coordinator/plan_evidence.h"
#include "tutil.h"
#include "worker/stages/stage_cache.h"

#define EXPECTED TU_TINY "/expected.safetensors"
#define NCASE 3

typedef struct Fix {
    DonutModel *m;
    TensorFile *ex;
    AnSel *sel;
    float *enc[NCASE];
    int n_enc[NCASE];
    int32_t ids[NCASE][64];
    int T[NCASE], a[NCASE];
} Fix;

/* tiny-a, its three cases' pages encoded and sequences added (answer
 * start T / 2, as the interpretability reference has it) */
static int s_fix(Fix *f)
{
    DmErr err = {{0}};
    memset(f, 0, sizeof *f);
    if (donut_load(TU_TINY, &f->m, &err) || tensorfile_open(EXPECTED, &f->ex, &err) ||
        an_sel_new(f->m, &f->sel, &err))
        return -1;
    for (int k = 0; k < NCASE; k++) {
        char name[64];
        snprintf(name, sizeof name, "case%d.pixel_values", k);
        const DmTensor *t = tensorfile_find(f->ex, name);
        snprintf(name, sizeof name, "case%d.decoder_input_ids", k);
        const DmTensor *ti = tensorfile_find(f->ex, name);
        if (!t || !ti || ti->shape[1] > 64)
            return -1;
        int H = (int)t->shape[2], W = (int)t->shape[3], oh, ow, page;
        swin_output_grid(&f->m->cfg.enc, H, W, &oh, &ow);
        float *pix = malloc((size_t)dm_tensor_numel(t) * sizeof *pix);
        float *enc = malloc((size_t)oh * ow * f->m->cfg.enc.hidden_size * sizeof *enc);
        float *mine = malloc((size_t)oh * ow * f->m->cfg.enc.hidden_size * sizeof *mine);
        int64_t ids64[64];
        if (!pix || !enc || !mine || dm_tensor_to_f32(t, pix, &err) ||
            swin_encode(f->m, pix, H, W, enc, NULL, &err) || dm_tensor_to_i64(ti, ids64, &err)) {
            free(pix);
            free(enc);
            free(mine);
            return -1;
        }
        free(pix);
        memcpy(mine, enc, (size_t)oh * ow * f->m->cfg.enc.hidden_size * sizeof *mine);
        f->enc[k] = mine;
        f->n_enc[k] = oh * ow;
        f->T[k] = (int)ti->shape[1];
        f->a[k] = f->T[k] / 2;
        for (int i = 0; i < f->T[k]; i++)
            f->ids[k][i] = (int32_t)ids64[i];
        if (an_sel_add_page(f->sel, enc, oh * ow, &page, &err) ||
            an_sel_add_item(f->sel, page, f->ids[k], f->T[k], f->a[k], &err))
            return -1;
    }
    return 0;
}

static void s_fix_free(Fix *f)
{
    an_sel_free(&f->sel);
    for (int k = 0; k < NCASE; k++)
        free(f->enc[k]);
    tensorfile_close(&f->ex);
    donut_free(&f->m);
}

/* NLL of item k with head h of sub-layer `sub` scaled by g. */
static double s_gated_nll(const Fix *f, int k, int sub, int h, double g)
{
    const DecPage *pg = &f->sel->pages[k];
    AnTrace tr, run;
    DmErr err = {{0}};
    if (an_run(pg, f->ids[k], f->T[k], f->a[k], NULL, 0, 0, &tr, &err))
        return NAN;
    size_t n = (size_t)f->T[k] * f->m->cfg.dec.heads * f->m->dec.head_dim;
    float *src = malloc(n * sizeof *src);
    for (size_t i = 0; src && i < n; i++)
        src[i] = (float)(g * tr.heads[sub][i]);
    an_trace_free(&tr);
    /* the run is the clean one up to this sub-layer, so its head outputs
     * there are the clean ones: setting them to g times those is the gate */
    AnOp op = {.site = {sub, AN_HEAD, h}, .op = AN_SET, .src = src, .row0 = 0, .row1 = f->T[k]};
    double v = NAN;
    if (src && !an_run(pg, f->ids[k], f->T[k], f->a[k], &op, 1, 0, &run, &err)) {
        v = run.nll;
        an_trace_free(&run);
    }
    free(src);
    return v;
}

static void test_michel_gates(void)
{
    Fix f;
    CU_ASSERT_FATAL(s_fix(&f) == 0);
    DmErr err = {{0}};
    int L = f.m->cfg.dec.layers, H = f.m->cfg.dec.heads, nsub = 3 * L, hd = f.m->dec.head_dim;
    double *imp = calloc((size_t)nsub * H, sizeof *imp), sub_imp[3 * DM_MAX_LAYERS];
    double *item = calloc((size_t)NCASE * nsub * H, sizeof *item);
    CU_ASSERT_FATAL(imp && item);
    CU_ASSERT_FATAL(an_sel_gate_grads(f.sel, imp, sub_imp, item, &err) == 0);
    double worst_fd = 0, worst_atp = 0, worst_mean = 0;
    int checked = 0;
    for (int k = 0; k < NCASE; k++) {
        /* the attribution gradients (an_head_grads, checked against the
         * reference's atp.head in the analyze suite): sum <out, grad> */
        AnTrace tr;
        float **g = NULL;
        const DecPage *pg = &f.sel->pages[k];
        CU_ASSERT_FATAL(an_run(pg, f.ids[k], f.T[k], f.a[k], NULL, 0, 1, &tr, &err) == 0);
        CU_ASSERT_FATAL(an_head_grads(pg, f.ids[k], f.a[k], &tr, &g, &err) == 0);
        for (int i = 0; i < nsub; i++) {
            if (i % 3 == DM_SUB_M)
                continue;
            for (int h = 0; h < H; h++) {
                double atp = 0;
                for (int t = 0; t < f.T[k]; t++)
                    for (int j = 0; j < hd; j++) {
                        size_t o = (size_t)t * H * hd + (size_t)h * hd + j;
                        atp += (double)tr.heads[i][o] * g[i][o];
                    }
                double got = item[(size_t)k * nsub * H + i * H + h];
                double d = fabs(got - atp) / (1e-6 + fabs(atp));
                worst_atp = d > worst_atp ? d : worst_atp;
                /* central differences of the NLL in the gate */
                const double eps = 0.01;
                double up = s_gated_nll(&f, k, i, h, 1 + eps), dn = s_gated_nll(&f, k, i, h, 1 - eps);
                double fd = (up - dn) / (2 * eps);
                double e = fabs(fd - got) / (2e-3 + fabs(fd));
                if (e > 2e-2)
                    fprintf(stderr, "\n  case%d sub %d head %d: gradient %.6g, differences %.6g\n",
                            k, i, h, got, fd);
                worst_fd = e > worst_fd ? e : worst_fd;
                checked++;
            }
        }
        for (int i = 0; i < nsub; i++)
            free(g[i]);
        free(g);
        an_trace_free(&tr);
    }
    /* the importance is the mean of |dL/dgate| over the items */
    for (int i = 0; i < nsub * H; i++) {
        double m = 0;
        for (int k = 0; k < NCASE; k++)
            m += fabs(item[(size_t)k * nsub * H + i]) / NCASE;
        worst_mean = fabs(m - imp[i]) > worst_mean ? fabs(m - imp[i]) : worst_mean;
    }
    fprintf(stderr, "\n  %d gates: worst relative difference %.3g against central differences, "
                    "%.3g against the attribution gradients\n", checked, worst_fd, worst_atp);
    CU_ASSERT(checked == NCASE * 2 * L * H);
    CU_ASSERT(worst_fd <= 2e-2);
    CU_ASSERT(worst_atp <= 1e-5);
    CU_ASSERT(worst_mean <= 1e-12);
    free(imp);
    free(item);
    s_fix_free(&f);
}

/* KL(teacher || student) of item k: teacher rows from the reference's
 * logits, student rows [T, V], mean over the scored positions. */
static double s_kl(const float *tl, const float *sl, int T, int a, int V)
{
    double acc = 0;
    for (int t = a; t < T - 1; t++) {
        const float *x = tl + (size_t)t * V, *y = sl + (size_t)t * V;
        double mx = -INFINITY, my = -INFINITY, zx = 0, zy = 0;
        for (int v = 0; v < V; v++) {
            mx = x[v] > mx ? x[v] : mx;
            my = y[v] > my ? y[v] : my;
        }
        for (int v = 0; v < V; v++) {
            zx += exp(x[v] - mx);
            zy += exp(y[v] - my);
        }
        for (int v = 0; v < V; v++) {
            double lx = x[v] - mx - log(zx), ly = y[v] - my - log(zy);
            acc += exp(lx) * (lx - ly);
        }
    }
    return acc / (T - 1 - a);
}

static void test_finercut_first_step(void)
{
    Fix f;
    CU_ASSERT_FATAL(s_fix(&f) == 0);
    DmErr err = {{0}};
    int L = f.m->cfg.dec.layers, H = f.m->cfg.dec.heads, V = f.m->cfg.dec.vocab;
    /* nothing removed: KL 0, the teacher's NLL (the reference's, 1e-4) */
    AnRemoval none = {{0}};
    double nll, kl;
    CU_ASSERT_FATAL(an_sel_eval(f.sel, &none, &nll, &kl, &err) == 0);
    CU_ASSERT(fabs(kl) < 1e-12);
    CU_ASSERT(fabs(nll - (21.628326416015625 + 19.612350463867188 + 18.764678955078125) / 3) < 1e-4);

    float *tl[NCASE];
    for (int k = 0; k < NCASE; k++) {
        char name[64];
        snprintf(name, sizeof name, "case%d.decoder.logits", k);
        const DmTensor *t = tensorfile_find(f.ex, name);
        CU_ASSERT_FATAL(t && dm_tensor_numel(t) == (int64_t)f.T[k] * V);
        tl[k] = malloc((size_t)f.T[k] * V * sizeof(float));
        CU_ASSERT_FATAL(tl[k] && dm_tensor_to_f32(t, tl[k], &err) == 0);
    }
    char dir[] = "/tmp/dm_finercut_XXXXXX";
    CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
    /* every single removal, pruned for real, against the reference */
    const char *kinds = "SCM";
    double best = INFINITY, second = INFINITY, kls[3 * DM_MAX_LAYERS * (DM_MAX_HEADS + 1)];
    char bname[32] = "", names[3 * DM_MAX_LAYERS * (DM_MAX_HEADS + 1)][32];
    int nu = 0;
    for (int l = 0; l < L; l++)
        for (int k = 0; k < 3; k++)
            for (int h = -1; h < (k < 2 ? H : 0); h++) {
                char plan[4200], out[4200], text[256];
                snprintf(plan, sizeof plan, "%s/plan%d.json", dir, nu);
                snprintf(out, sizeof out, "%s/student%d", dir, nu);
                if (h < 0) {
                    snprintf(names[nu], sizeof names[nu], "%c%d", kinds[k], l);
                    snprintf(text, sizeof text, "{\"keep\": {\"%s\": false}}", names[nu]);
                } else {
                    snprintf(names[nu], sizeof names[nu], "%c%d.H%d", kinds[k], l, h);
                    int n = snprintf(text, sizeof text, "{\"keep\": {}, \"heads\": {\"%c%d\": [",
                                     kinds[k], l);
                    for (int g = 0, first = 1; g < H; g++)
                        if (g != h) {
                            n += snprintf(text + n, sizeof text - n, "%s%d", first ? "" : ", ", g);
                            first = 0;
                        }
                    snprintf(text + n, sizeof text - n, "]}}");
                }
                FILE *pf = fopen(plan, "w");
                CU_ASSERT_FATAL(pf != NULL);
                fputs(text, pf);
                fclose(pf);
                DonutModel *s = NULL;
                CU_ASSERT_FATAL(prune_checkpoint(TU_TINY, plan, out, NULL, &err) == 0);
                CU_ASSERT_FATAL(donut_load(out, &s, &err) == 0);
                double sum = 0;
                for (int c = 0; c < NCASE; c++) {
                    DecPage pg = {0};
                    float *lg = NULL;
                    CU_ASSERT_FATAL(dec_page_init(&pg, s, f.enc[c], f.n_enc[c], &err) == 0);
                    CU_ASSERT_FATAL(cache_forward(s, &pg, f.ids[c], f.T[c], &lg, &err) == 0);
                    sum += s_kl(tl[c], lg, f.T[c], f.a[c], V);
                    free(lg);
                    dec_page_free(&pg);
                }
                donut_free(&s);
                kls[nu] = sum / NCASE;
                if (kls[nu] < best) {
                    second = best;
                    best = kls[nu];
                    snprintf(bname, sizeof bname, "%s", names[nu]);
                } else if (kls[nu] < second) {
                    second = kls[nu];
                }
                nu++;
            }
    CU_ASSERT(nu == L * (3 + 2 * H));
    /* and every single removal as the selection corpus scores it */
    double worst = 0;
    for (int u = 0, l = 0; l < L; l++)
        for (int k = 0; k < 3; k++)
            for (int h = -1; h < (k < 2 ? H : 0); h++, u++) {
                AnRemoval r = {{0}};
                if (h < 0)
                    r.sub[3 * l + k] = 1;
                else
                    r.head[3 * l + k][h] = 1;
                double ukl;
                CU_ASSERT_FATAL(an_sel_eval(f.sel, &r, NULL, &ukl, &err) == 0);
                double d = fabs(ukl - kls[u]) / (1e-6 + kls[u]);
                worst = d > worst ? d : worst;
            }
    fprintf(stderr, "\n  %d single removals: worst relative KL difference %.3g\n", nu, worst);
    CU_ASSERT(worst <= 1e-3);

    /* finercut with a budget one parameter under the teacher: one step */
    json_t *agg = json_pack("{s:i, s:i, s:i, s:{s:{s:f}}}", "layers", L, "heads", H, "records",
                            NCASE, "fields", "nll_clean", "mean", nll);
    DmPlan base;
    plan_of_model(f.m, &base);
    ParamTable pt;
    params_count(&f.m->cfg, &base, &pt);
    PeInput in = {.cfg = &f.m->cfg, .base = &base, .aggregates = agg, .store = "(test)",
                  .model = TU_TINY, .fingerprint = f.m->fingerprint, .sel = f.sel,
                  .corpus = "(three reference cases)"};
    PeOptions o = {.method = PE_FINERCUT, .kind = PE_BUDGET_PARAMS,
                   .budget = (double)(pt.layers - 1), .prompt = 42, .new_tokens = 35};
    char pdir[4200];
    snprintf(pdir, sizeof pdir, "%s/plan", dir);
    CU_ASSERT_FATAL(pe_make_plan(&in, &o, pdir, &err) == 0);
    /* the unit removed, read back from plan.md's first step */
    char md[4200], line[1024], got[32] = "";
    double got_kl = NAN;
    snprintf(md, sizeof md, "%s/plan.md", pdir);
    FILE *mf = fopen(md, "r");
    CU_ASSERT_FATAL(mf != NULL);
    while (fgets(line, sizeof line, mf))
        if (!strncmp(line, "1. remove ", 10)) {
            char what[16];
            CU_ASSERT(sscanf(line, "1. remove %15s %31[^:]: KL %lf", what, got, &got_kl) == 3);
        }
    fclose(mf);
    fprintf(stderr, "\n  finercut step 1: %s (KL %.6g); single removals: best %s %.6g, next "
                    "%.6g\n", got, got_kl, bname, best, second);
    /* the argmin (the independent runs agree with docmint's to float
     * rounding, far below the gap between the two least) */
    CU_ASSERT(second - best > 1e-6);
    CU_ASSERT(!strcmp(got, bname));
    CU_ASSERT(fabs(got_kl - best) <= 1e-5 * best + 1e-7);

    /* without a corpus: the flag named */
    in.sel = NULL;
    CU_ASSERT(pe_make_plan(&in, &o, pdir, &err) != 0);
    CU_ASSERT(strstr(err.msg, "--corpus SEL.json") != NULL);
    o.method = PE_MICHEL;
    CU_ASSERT(pe_make_plan(&in, &o, pdir, &err) != 0);
    CU_ASSERT(strstr(err.msg, "--method michel needs --corpus") != NULL);
    json_decref(agg);
    for (int k = 0; k < NCASE; k++)
        free(tl[k]);
    dm_rm_tree(dir);
    s_fix_free(&f);
}

static void test_corpus_refusals(void)
{
    DonutModel *m = NULL;
    DmErr err = {{0}};
    CU_ASSERT_FATAL(donut_load(TU_TINY, &m, &err) == 0);
    QaModel qa = {.model = m};
    AnSel *sel = NULL;
    /* questionId 14 has no "answers", 15 an empty list (the first met is
     * named): refused before
     * any page is read */
    CU_ASSERT(an_sel_load(&qa, NULL, "data/corpus/docvqa_small.json", NULL, 200, &sel, &err) != 0);
    CU_ASSERT(sel == NULL);
    fprintf(stderr, "\n  %s\n", err.msg);
    CU_ASSERT(strstr(err.msg, "data/corpus/docvqa_small.json: questionId 1") !=
              NULL);
    CU_ASSERT(an_sel_load(&qa, NULL, "data/corpus/nonexistent.json", NULL, 200, &sel, &err) != 0);
    CU_ASSERT(strstr(err.msg, "data/corpus/nonexistent.json") != NULL);
    donut_free(&m);
}

void tests_plan_baselines(void)
{
    TU_SUITE("plan_baselines",
             {"michel: dL/dgate against central differences and the attribution gradients",
              test_michel_gates},
             {"finercut: the first step is the argmin of independently computed KLs",
              test_finercut_first_step},
             {"selection corpus refusals", test_corpus_refusals});
}
