/* cmd_plan.c - `docmint plan`: a pruning plan from an analysis store's
 * evidence under a budget (coordinator/plan_evidence.h; docs/pruning.md,
 * "Plans from evidence"). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/store.h"
#include "worker/image/image.h"
#include "coordinator/cli/commands.h"
#include "coordinator/plan_evidence.h"

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint plan ANALYSIS_STORE (--budget B | --budget-params N | --budget-flops F)\n"
            "                    [--method mint|enumerate|finercut|michel] [--corpus SEL.json]\n"
            "                    [--top K] [--model DIR] -o PLAN_DIR\n"
            "  --budget B         keep at most this share of the teacher's decoder layers'\n"
            "                     parameters (the paper's base; 0.31 for its MINT31%%)\n"
            "  --budget-params N  keep at most N parameters of the decoder layers\n"
            "  --budget-flops F   keep at most this share of the decoder layers' multiply-adds\n"
            "                     (docmint's cached convention, docs/flops.md)\n"
            "  --prompt N         FLOPs: prompt tokens (default 42)\n"
            "  --new M            FLOPs: new tokens (default 35)\n"
            "  --method M         mint (default): sub-layers and heads by the store's evidence;\n"
            "                     enumerate: every sub-layer subset within the budget, scored by\n"
            "                     the store's skip sets or the sum of single-skip NLL increases;\n"
            "                     finercut: greedily the sub-layer or head whose removal changes\n"
            "                     the next-token distributions least (KL on --corpus), each step\n"
            "                     scoring every unit left: sequences x units passes per step;\n"
            "                     michel: heads by |dL/dgate| on --corpus (one forward and one\n"
            "                     backward pass per sequence), least important first\n"
            "  --corpus SEL.json  a DocVQA-format selection corpus with gold answers (images\n"
            "                     beside it), run on the analysed model: needed by finercut and\n"
            "                     michel; with mint, the chosen plan's removals are measured\n"
            "                     together on it (one pass per sequence; default: none)\n"
            "  --image-root DIR   where --corpus's image paths resolve (default: its folder)\n"
            "  --top K            enumerate: the best K plans written (default 3)\n"
            "  --model DIR        the analysed model (default: the store's job \"model\"); its\n"
            "                     fingerprint must be the store's\n"
            "  --reproject-tol X  mint: an input reprojection costing at most X nats counts as\n"
            "                     lossless (default 0.01)\n"
            "  --type-ratio R     mint: a head is taken back when its ablation hurts one\n"
            "  --type-min X       question type by at least X nats (default 0.02) and R times\n"
            "                     (default 3) the next type\n"
            "  -o DIR             writes DIR/plan.json (for docmint prune --plan; enumerate also\n"
            "                     DIR/plan-2.json ...) and DIR/plan.md, every choice explained\n");
}

static int s_number(const char *flag, const char *s, double lo, double hi, double *out)
{
    char *end = NULL;
    double v = strtod(s, &end);
    if (!*s || *end || !(v >= lo && v <= hi)) {
        fprintf(stderr, "docmint plan: %s %s: needs a number from %g to %g\n", flag, s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

int cmd_plan(int argc, char **argv)
{
    const char *store = NULL, *out = NULL, *model = NULL, *method = "mint";
    const char *budget = NULL, *bparams = NULL, *bflops = NULL, *corpus = NULL, *image_root = NULL;
    PeOptions o = {.top = 3, .prompt = 42, .new_tokens = 35, .reproject_tol = 0.01,
                   .type_ratio = 3, .type_min = 0.02};
    double v;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int more = i + 1 < argc;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(a, "--budget") && more) {
            budget = argv[++i];
        } else if (!strcmp(a, "--budget-params") && more) {
            bparams = argv[++i];
        } else if (!strcmp(a, "--budget-flops") && more) {
            bflops = argv[++i];
        } else if (!strcmp(a, "--method") && more) {
            method = argv[++i];
        } else if (!strcmp(a, "--corpus") && more) {
            corpus = argv[++i];
        } else if (!strcmp(a, "--image-root") && more) {
            image_root = argv[++i];
        } else if (!strcmp(a, "--model") && more) {
            model = argv[++i];
        } else if ((!strcmp(a, "-o") || !strcmp(a, "--out")) && more) {
            out = argv[++i];
        } else if (!strcmp(a, "--top") && more) {
            if (s_number(a, argv[++i], 1, 1000, &v))
                return 2;
            o.top = (int)v;
        } else if (!strcmp(a, "--prompt") && more) {
            if (s_number(a, argv[++i], 1, 1e6, &v))
                return 2;
            o.prompt = (int)v;
        } else if (!strcmp(a, "--new") && more) {
            if (s_number(a, argv[++i], 1, 1e6, &v))
                return 2;
            o.new_tokens = (int)v;
        } else if (!strcmp(a, "--reproject-tol") && more) {
            if (s_number(a, argv[++i], 0, 1e9, &o.reproject_tol))
                return 2;
        } else if (!strcmp(a, "--type-ratio") && more) {
            if (s_number(a, argv[++i], 1, 1e9, &o.type_ratio))
                return 2;
        } else if (!strcmp(a, "--type-min") && more) {
            if (s_number(a, argv[++i], 0, 1e9, &o.type_min))
                return 2;
        } else if (a[0] == '-') {
            fprintf(stderr, "docmint plan: unknown or incomplete option %s (see --help)\n", a);
            return 2;
        } else if (!store) {
            store = a;
        } else {
            fprintf(stderr, "docmint plan: unexpected argument %s\n", a);
            return 2;
        }
    }
    if (!store || !out || (!!budget + !!bparams + !!bflops) != 1) {
        fprintf(stderr, "docmint plan: needs ANALYSIS_STORE, -o PLAN_DIR and one of --budget, "
                        "--budget-params, --budget-flops (see --help)\n");
        return 2;
    }
    if (!strcmp(method, "mint"))
        o.method = PE_MINT;
    else if (!strcmp(method, "enumerate"))
        o.method = PE_ENUMERATE;
    else if (!strcmp(method, "finercut"))
        o.method = PE_FINERCUT;
    else if (!strcmp(method, "michel"))
        o.method = PE_MICHEL;
    else {
        fprintf(stderr, "docmint plan: --method %s: the methods are mint, enumerate, finercut and "
                        "michel\n", method);
        return 2;
    }
    if ((o.method == PE_FINERCUT || o.method == PE_MICHEL) && !corpus) {
        fprintf(stderr, "docmint plan: --method %s needs --corpus SEL.json: a DocVQA-format "
                        "selection corpus with gold answers\n", method);
        return 2;
    }
    if (o.method == PE_ENUMERATE && corpus) {
        fprintf(stderr, "docmint plan: --corpus: --method enumerate scores from the store alone "
                        "(mint, finercut and michel take a corpus)\n");
        return 2;
    }
    if (budget) {
        o.kind = PE_BUDGET_SHARE;
        if (s_number("--budget", budget, 0, 1, &o.budget))
            return 2;
    } else if (bparams) {
        o.kind = PE_BUDGET_PARAMS;
        if (s_number("--budget-params", bparams, 0, 1e15, &o.budget))
            return 2;
    } else {
        o.kind = PE_BUDGET_FLOPS;
        if (s_number("--budget-flops", bflops, 0, 1, &o.budget))
            return 2;
    }

    DmErr err = {{0}};
    Store *st = NULL;
    char *kind = NULL, *aggs = NULL, *job = NULL, *an = NULL, *fp = NULL;
    json_t *jaggs = NULL, *jjob = NULL, *jan = NULL;
    DonutModel *m = NULL;
    QaModel qa = {0};
    AnSel *sel = NULL;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int rc = 1;
    if (store_open(store, STORE_READ, &st, &err)) {
        fprintf(stderr, "docmint plan: %s\n", err.msg);
        return 1;
    }
    if (store_meta_read(st, "kind", &kind, &err) < 0 ||
        store_meta_read(st, "aggregates", &aggs, &err) < 0 ||
        store_meta_read(st, "job", &job, &err) < 0 || store_meta_read(st, "analyze", &an, &err) < 0 ||
        store_meta_read(st, "model_fingerprint", &fp, &err) < 0) {
        fprintf(stderr, "docmint plan: %s\n", err.msg);
        goto done;
    }
    if (!kind || strcmp(kind, "analysis")) {
        fprintf(stderr, "docmint plan: %s: not an analysis store (it holds \"%s\" records): make "
                        "one with a job of \"stage\": \"analyze\" (docs/analyze.md)\n",
                store, kind ? kind : "no");
        goto done;
    }
    if (!aggs) {
        fprintf(stderr, "docmint plan: %s: the store has no aggregates yet: run its analyze job "
                        "to the end (docmint run JOB.json)\n", store);
        goto done;
    }
    json_error_t je;
    if (!(jaggs = json_loads(aggs, 0, &je))) {
        fprintf(stderr, "docmint plan: %s: meta aggregates: %s\n", store, je.text);
        goto done;
    }
    jjob = job ? json_loads(job, 0, NULL) : NULL;
    jan = an ? json_loads(an, 0, NULL) : NULL;
    if (!model)
        model = json_string_value(json_object_get(jjob, "model"));
    if (!model) {
        fprintf(stderr, "docmint plan: %s: the store records no model: give the analysed model "
                        "with --model DIR\n", store);
        goto done;
    }
    /* with a corpus, the tokenizer too (the sequences are built from it) */
    if (corpus ? qa_open(model, &qa, &err) : donut_load(model, &m, &err)) {
        fprintf(stderr, "docmint plan: %s\n", err.msg);
        goto done;
    }
    if (corpus)
        m = qa.model;
    /* the measured methods teacher-force the corpus in blocks: packed
     * linears, as in the analyze stage */
    if (corpus && dec_pack(qa.model, &err)) {
        fprintf(stderr, "docmint plan: %s\n", err.msg);
        goto done;
    }
    if (fp && fp[0] && strcmp(fp, m->fingerprint)) {
        fprintf(stderr, "docmint plan: %s: the store analysed model %s, but %s is %s: give the "
                        "analysed model with --model DIR\n",
                store, fp, model, m->fingerprint);
        goto done;
    }
    if (corpus) {
        char path[4200];
        PreprocConfig pc;
        snprintf(path, sizeof path, "%s/preprocessor_config.json", model);
        if (preproc_config_load(path, &pc, &err) ||
            an_sel_load(&qa, &pc, corpus, image_root, IMAGE_PDF_DPI_DEFAULT, &sel, &err)) {
            fprintf(stderr, "docmint plan: %s\n", err.msg);
            goto done;
        }
    }
    DmPlan base;
    plan_of_model(m, &base);
    PeInput in = {.cfg = &m->cfg, .base = &base, .aggregates = jaggs, .analyze = jan,
                  .store = store, .model = model, .fingerprint = m->fingerprint, .sel = sel,
                  .corpus = corpus};
    if (pe_make_plan(&in, &o, out, &err)) {
        fprintf(stderr, "docmint plan: %s\n", err.msg);
        goto done;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("%s: plan.json and plan.md written (--method %s", out, method);
    if (sel)
        printf("; %s: %d sequences on %d pages, %ld encoder, %ld teacher-forced and %ld backward "
               "passes", corpus, sel->nitems, sel->npages, sel->encoded, sel->passes,
               sel->backward);
    printf("; %.2f s); docmint prune %s --plan %s/plan.json -o STUDENT\n",
           (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec), model, out);
    rc = 0;
done:
    an_sel_free(&sel);
    if (corpus)
        qa_close(&qa);
    else
        donut_free(&m);
    json_decref(jaggs);
    json_decref(jjob);
    json_decref(jan);
    free(kind);
    free(aggs);
    free(job);
    free(an);
    free(fp);
    store_close(&st);
    return rc;
}
