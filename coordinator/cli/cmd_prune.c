/* cmd_prune.c - `docmint prune`: write a pruned student of a checkpoint
 * folder under a plan file (see plan.h and schemas/plan.schema.json). */
#include <stdio.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cli/commands.h"
#include "worker/model/mask.h"
#include "worker/model/plan.h"
#include "worker/stages/qa.h"
#include "worker/train/calibrate.h"

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint prune MODEL_DIR --plan PLAN.json -o OUT_DIR\n"
            "       docmint prune MODEL_DIR --unstructured magnitude --sparsity S -o OUT_DIR\n"
            "       docmint prune MODEL_DIR --unstructured wanda --sparsity S --calibration STORE\n"
            "                     --corpus ANNOTATIONS [--items N] -o OUT_DIR\n"
            "  --plan FILE   which decoder sub-layers and heads remain (schemas/plan.schema.json):\n"
            "                {\"keep\": [\"C0\", \"M0\", \"S1\", \"C1\"], \"heads\": [\"C1.H0\", \"C1.H2\"]}\n"
            "                or {\"keep\": {\"S0\": false, ...}, \"heads\": {\"C1\": [0, 2]}};\n"
            "                heads are named by their index in the unpruned teacher\n"
            "  -o DIR        the student folder (must be absent or empty): model.safetensors cut\n"
            "                to the kept heads, pruning.json, config, tokenizer and processor files\n"
            "  --unstructured magnitude|wanda  a masked student instead: in each row of every\n"
            "                decoder linear weight, the weights of smallest score are set to zero\n"
            "                and listed in mask.safetensors, which training honours; magnitude\n"
            "                scores |W_ij|, wanda |W_ij| * ||X_j|| (docs/flops.md)\n"
            "  --sparsity S  the share of each row pruned, 0 <= S < 1\n"
            "  --budget B    instead of --sparsity: keep this share of the teacher's decoder\n"
            "                layers' parameters (the paper's base; 0.07 for its 7%%), the\n"
            "                sparsity following from it\n"
            "  --calibration STORE  wanda: a teacher-logit store (cache-logits) whose questions,\n"
            "                answers and pages give the input norms ||X_j||\n"
            "  --corpus FILE the DocVQA-style annotations the store was made from\n"
            "  --corpus-format F  docvqa (default), jsonl or archive\n"
            "  --items N     wanda: calibration items used, from the first (default 128; 0 all)\n"
            "  --lowercase-questions  the student lowercases every question before it is\n"
            "                tokenized (OUT_DIR/prompt.json; ask and every stage honour it: the\n"
            "                paper's compensation for removing M0); default: off, or the\n"
            "                MODEL_DIR's own prompt.json, which is copied\n"
            "MODEL_DIR may itself be a student: the plan then removes more (pruning composes).\n");
}

/* The sparsity per row that leaves `budget` of the teacher's decoder
 * layers' parameters (the paper's base): the masked matrices keep what the
 * budget leaves after the parameters no mask covers (biases, LayerNorms). */
static int s_budget_sparsity(const char *dir, double budget, double *sp, DmErr *err)
{
    DonutModel *m = NULL;
    if (donut_load(dir, &m, err))
        return -1;
    DmPlan p;
    ParamTable t;
    plan_of_model(m, &p);
    params_count(&m->cfg, &p, &t);
    DmLinear *lin[DM_DEC_LINEARS_MAX];
    char(*names)[128] = malloc(DM_DEC_LINEARS_MAX * sizeof *names);
    int n = names ? mask_linears(m, lin, names) : 0;
    long long masked = 0;
    for (int i = 0; i < n; i++)
        masked += (long long)lin[i]->out * lin[i]->in;
    free(names);
    donut_free(&m);
    long long other = t.layers - masked, want = (long long)(budget * t.teacher_layers);
    if (want < other || masked == 0)
        return dm_err(err, "--budget %g: below the smallest possible, %.4f (%lld parameters of "
                      "the layers are outside the weight matrices: biases and LayerNorms)",
                      budget, (double)other / t.teacher_layers, other);
    if (want > t.layers)
        return dm_err(err, "--budget %g: %s already keeps only %.4f of the teacher's layers",
                      budget, dir, (double)t.layers / t.teacher_layers);
    *sp = 1.0 - (double)(want - other) / (double)masked;
    if (*sp >= 1)
        *sp = nextafter(1.0, 0.0);
    return 0;
}

int cmd_prune(int argc, char **argv)
{
    const char *dir = NULL, *plan = NULL, *out = NULL, *unstructured = NULL, *sparsity = NULL;
    const char *calib = NULL, *corpus = NULL, *items_s = "128", *cformat = "docvqa";
    const char *budget = NULL;
    int lowercase = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            s_usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--plan") && i + 1 < argc) {
            plan = argv[++i];
        } else if (!strcmp(argv[i], "--unstructured") && i + 1 < argc) {
            unstructured = argv[++i];
        } else if (!strcmp(argv[i], "--sparsity") && i + 1 < argc) {
            sparsity = argv[++i];
        } else if (!strcmp(argv[i], "--budget") && i + 1 < argc) {
            budget = argv[++i];
        } else if (!strcmp(argv[i], "--calibration") && i + 1 < argc) {
            calib = argv[++i];
        } else if (!strcmp(argv[i], "--corpus") && i + 1 < argc) {
            corpus = argv[++i];
        } else if (!strcmp(argv[i], "--corpus-format") && i + 1 < argc) {
            cformat = argv[++i];
        } else if (!strcmp(argv[i], "--items") && i + 1 < argc) {
            items_s = argv[++i];
        } else if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) && i + 1 < argc) {
            out = argv[++i];
        } else if (!strcmp(argv[i], "--lowercase-questions")) {
            lowercase = 1;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "docmint prune: unknown or incomplete option %s (see --help)\n", argv[i]);
            return 2;
        } else if (!dir) {
            dir = argv[i];
        } else {
            fprintf(stderr, "docmint prune: unexpected argument %s\n", argv[i]);
            return 2;
        }
    }
    if (unstructured || sparsity || budget) {
        if (!dir || !out || !unstructured || !sparsity == !budget || plan) {
            fprintf(stderr, "docmint prune: --unstructured needs MODEL_DIR, --sparsity or "
                            "--budget (one of them) and -o, and no --plan (see --help)\n");
            return 2;
        }
        int wanda = !strcmp(unstructured, "wanda");
        if (!wanda && strcmp(unstructured, "magnitude")) {
            fprintf(stderr, "docmint prune: --unstructured %s: the methods are magnitude and "
                            "wanda\n", unstructured);
            return 2;
        }
        if (wanda != (calib && corpus) || (!wanda && (calib || corpus))) {
            fprintf(stderr, "docmint prune: %s\n",
                    wanda ? "wanda needs --calibration STORE and --corpus ANNOTATIONS"
                          : "--calibration and --corpus go with --unstructured wanda");
            return 2;
        }
        char *iend = NULL;
        long items = strtol(items_s, &iend, 10);
        if (!*items_s || *iend || items < 0) {
            fprintf(stderr, "docmint prune: --items %s: needs a whole number, 0 for all\n",
                    items_s);
            return 2;
        }
        CorpusSpec cs = {.path = corpus, .pdf_dpi = 200};
        if (wanda && corpus_format_parse(cformat, &cs.format)) {
            fprintf(stderr, "docmint prune: --corpus-format %s: docvqa, jsonl or archive\n",
                    cformat);
            return 2;
        }
        char *end = NULL, spbuf[32];
        DmErr err = {{0}};
        double sp = 0;
        if (budget) {
            double b = strtod(budget, &end);
            if (!*budget || *end || !(b > 0 && b <= 1)) {
                fprintf(stderr, "docmint prune: --budget %s: needs a share above 0 and at "
                                "most 1\n", budget);
                return 2;
            }
            if (s_budget_sparsity(dir, b, &sp, &err)) {
                fprintf(stderr, "docmint prune: %s\n", err.msg);
                return 1;
            }
            snprintf(spbuf, sizeof spbuf, "%.6f", sp);
            sparsity = spbuf;
        } else {
            sp = strtod(sparsity, &end);
            if (!*sparsity || *end || !(sp >= 0 && sp < 1)) {
                fprintf(stderr, "docmint prune: --sparsity %s: needs a number at least 0 and "
                                "less than 1\n", sparsity);
                return 2;
            }
        }
        CalibNorms cn = {0};
        if (wanda && calib_input_norms(dir, calib, &cs, (int)items, &cn, &err)) {
            fprintf(stderr, "docmint prune: %s\n", err.msg);
            return 1;
        }
        int rc = mask_prune_checkpoint(dir, wanda ? DM_MASK_WANDA : DM_MASK_MAGNITUDE, sp,
                                       wanda ? (const float *const *)cn.xnorm : NULL, out, &err);
        int used = cn.items;
        calib_free(&cn);
        if (rc) {
            fprintf(stderr, "docmint prune: %s\n", err.msg);
            return 1;
        }
        if (lowercase && qa_prompt_config_write(out, 1, &err)) {
            fprintf(stderr, "docmint prune: %s\n", err.msg);
            return 1;
        }
        char how[64] = "magnitude";
        if (wanda)
            snprintf(how, sizeof how, "wanda over %d calibration items", used);
        printf("%s: masked student written: %s of each decoder weight row pruned by %s "
               "(docmint params %s counts the non-zero weights)\n", out, sparsity, how, out);
        return 0;
    }
    if (!dir || !plan || !out) {
        fprintf(stderr, "docmint prune: needs MODEL_DIR, --plan and -o (see --help)\n");
        return 2;
    }
    DmErr err = {{0}};
    DmPlan p;
    if (prune_checkpoint(dir, plan, out, &p, &err)) {
        fprintf(stderr, "docmint prune: %s\n", err.msg);
        return 1;
    }
    if (lowercase && qa_prompt_config_write(out, 1, &err)) {
        fprintf(stderr, "docmint prune: %s\n", err.msg);
        return 1;
    }
    int subs = 0, kept = 0, heads = 0, kept_heads = 0;
    for (int l = 0; l < p.layers; l++)
        for (int k = 0; k < 3; k++) {
            subs++;
            kept += p.keep[l][k];
            if (k < 2) {
                heads += p.heads;
                kept_heads += p.nheads[l][k];
            }
        }
    printf("%s: student written: %d of %d sub-layers, %d of %d attention heads "
           "(docmint params %s counts them)\n",
           out, kept, subs, kept_heads, heads, out);
    return 0;
}
