/* cmd_prune.c - `docmint prune`: write a pruned student of a checkpoint
 * folder under a plan file (see plan.h and schemas/plan.schema.json). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coordinator/cli/commands.h"
#include "worker/model/mask.h"
#include "worker/model/plan.h"

static void s_usage(FILE *f)
{
    fprintf(f,
            "usage: docmint prune MODEL_DIR --plan PLAN.json -o OUT_DIR\n"
            "       docmint prune MODEL_DIR --unstructured magnitude --sparsity S -o OUT_DIR\n"
            "  --plan FILE   which decoder sub-layers and heads remain (schemas/plan.schema.json):\n"
            "                {\"keep\": [\"C0\", \"M0\", \"S1\", \"C1\"], \"heads\": [\"C1.H0\", \"C1.H2\"]}\n"
            "                or {\"keep\": {\"S0\": false, ...}, \"heads\": {\"C1\": [0, 2]}};\n"
            "                heads are named by their index in the unpruned teacher\n"
            "  -o DIR        the student folder (must be absent or empty): model.safetensors cut\n"
            "                to the kept heads, pruning.json, config, tokenizer and processor files\n"
            "  --unstructured magnitude  a masked student instead: in each row of every decoder\n"
            "                linear weight, the weights of smallest |W| are set to zero and\n"
            "                listed in mask.safetensors, which training honours (docs/flops.md)\n"
            "  --sparsity S  the share of each row pruned, 0 <= S < 1 (no default)\n"
            "MODEL_DIR may itself be a student: the plan then removes more (pruning composes).\n");
}

int cmd_prune(int argc, char **argv)
{
    const char *dir = NULL, *plan = NULL, *out = NULL, *unstructured = NULL, *sparsity = NULL;
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
        } else if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--out")) && i + 1 < argc) {
            out = argv[++i];
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
    if (unstructured || sparsity) {
        if (!dir || !out || !unstructured || !sparsity || plan) {
            fprintf(stderr, "docmint prune: --unstructured needs MODEL_DIR, --sparsity and -o, "
                            "and no --plan (see --help)\n");
            return 2;
        }
        if (strcmp(unstructured, "magnitude")) {
            fprintf(stderr, "docmint prune: --unstructured %s: the method here is magnitude "
                            "(wanda needs calibration norms)\n", unstructured);
            return 2;
        }
        char *end = NULL;
        double sp = strtod(sparsity, &end);
        if (!*sparsity || *end || !(sp >= 0 && sp < 1)) {
            fprintf(stderr, "docmint prune: --sparsity %s: needs a number at least 0 and "
                            "less than 1\n", sparsity);
            return 2;
        }
        DmErr err = {{0}};
        if (mask_prune_checkpoint(dir, DM_MASK_MAGNITUDE, sp, NULL, out, &err)) {
            fprintf(stderr, "docmint prune: %s\n", err.msg);
            return 1;
        }
        printf("%s: masked student written: %s of each decoder weight row pruned by magnitude "
               "(docmint params %s counts the non-zero weights)\n", out, sparsity, out);
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
